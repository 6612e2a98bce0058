# antidistill gateway image: slim base, non-root user, policy mounted as a volume.
#   docker build -t antidistill .
#   docker run -p 8080:8080 -v $PWD/policies:/policies:ro \
#     -e ANTIDISTILL_UPSTREAM=http://model:8000 -e ANTIDISTILL_REDIS=redis://redis:6379/0 \
#     -e ANTIDISTILL_KEY_SECRET=... antidistill
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY detectors ./detectors
COPY sim ./sim
COPY policies /policies
RUN pip install --no-compile . && useradd --system --uid 10001 --home /data antidistill \
    && mkdir -p /data && chown antidistill /data

USER antidistill
VOLUME ["/data", "/policies"]
ENV ANTIDISTILL_HOST=0.0.0.0 ANTIDISTILL_PORT=8080 ANTIDISTILL_DATA_DIR=/data \
    ANTIDISTILL_POLICY=/policies/default.yaml
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"
ENTRYPOINT ["antidistill", "serve"]
