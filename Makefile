# antidistill: one entry point for set-up, the demo, the tests and the benchmarks.
# Needs only Python 3.11 (with its venv module); everything else is installed into .venv.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo serve test browser lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "antidistill needs Python 3.11, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -e '.[dev,sim]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install antidistill with its test tools

demo: $(STAMP)  ## toy model server + gateway on an embedded Redis, a traffic mix, the decisions
	$(BIN)/antidistill demo

test: $(STAMP)  ## the test suite (a real Redis: 127.0.0.1:6379 if it answers, else an embedded one)
	$(BIN)/python -m pytest

CHROMIUM := /usr/bin/chromium

browser:  ## once: Debian's chromium for the browser test (apt-get; sudo if not root)
	@if [ -x $(CHROMIUM) ]; then echo "browser: $(CHROMIUM) is installed"; exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "make browser: $(CHROMIUM) is missing and there is no apt-get: install Chromium so that $(CHROMIUM) runs it" >&2; exit 1; fi; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "make browser: $(CHROMIUM) is missing; run 'apt-get install chromium' as root" >&2; exit 1; fi; \
	$$SUDO apt-get update && $$SUDO apt-get install -y chromium || exit 1; \
	[ -x $(CHROMIUM) ] || { echo "make browser: the chromium package did not provide $(CHROMIUM)" >&2; exit 1; }

lint: $(STAMP)  ## ruff and mypy --strict
	$(BIN)/ruff check gateway detectors sim bench tests
	$(BIN)/ruff format --check gateway detectors sim bench tests
	$(BIN)/mypy

bench: $(STAMP)  ## gateway overhead vs direct and nginx; writes BENCHMARKS.md
	$(BIN)/python -m bench.overhead --write-benchmarks

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
