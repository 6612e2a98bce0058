"""``antidistill provenance``: test a suspect model for a client's provenance marks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import orjson
import redis.asyncio as aioredis
import typer
from pydantic import SecretStr

from gateway.cli_support import DataDirOpt, RedisOpt, with_redis
from gateway.keys import KeySpace
from gateway.provenance import provenance_key
from gateway.provenance.dawn import (
    DEFAULT_PROBABILITIES_POINTER,
    INPUTS_POINTER,
    Mark,
    distinct_dawn_marks,
    evidence,
    load_marks,
    pointer_get,
)
from gateway.provenance.stats import format_p
from gateway.provenance.synonyms import default_table
from gateway.provenance.text import analyse, client_text_key
from gateway.settings import resolve_key_secret

provenance_app = typer.Typer(
    help="Test a suspect model for a client's provenance marks.", no_args_is_help=True
)

AlphaOpt = Annotated[
    float,
    typer.Option("--alpha", min=0.0, max=1.0, help="Significance level of the verdict."),
]


class SuspectError(Exception):
    """The suspect model's answer could not be used."""


def _labels(found: Any, count: int) -> list[int]:
    """Predicted labels from a list of probability vectors or of labels."""
    if not isinstance(found, list) or len(found) != count:
        raise SuspectError(f"expected {count} answers, got {str(found)[:200]}")
    labels: list[int] = []
    for row in found:
        if isinstance(row, int) and not isinstance(row, bool):
            labels.append(row)
        elif isinstance(row, list) and row and all(isinstance(v, int | float) for v in row):
            labels.append(max(range(len(row)), key=row.__getitem__))
        else:
            raise SuspectError(f"not a probability vector or a label: {str(row)[:200]}")
    return labels


async def query_suspect(
    url: str,
    inputs: list[list[float]],
    *,
    api_key: str | None,
    model: str | None,
    pointer: str,
    batch: int,
) -> list[int]:
    """The suspect's predicted label for each input, asked in batches."""
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    labels: list[int] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for start in range(0, len(inputs), batch):
            chunk = inputs[start : start + batch]
            body: dict[str, Any] = {INPUTS_POINTER.strip("/"): chunk}
            if model:
                body["model"] = model
            async with session.post(url, data=orjson.dumps(body), headers=headers) as response:
                content = await response.read()
                if response.status != 200:
                    raise SuspectError(f"{url} answered {response.status}: {content[:300]!r}")
            try:
                parsed = orjson.loads(content)
            except orjson.JSONDecodeError as exc:
                raise SuspectError(f"{url} did not answer JSON: {exc}") from None
            labels += _labels(pointer_get(parsed, pointer), len(chunk))
    return labels


def _verdict(log_p: float, alpha: float, what: str) -> str:
    if alpha > 0 and log_p <= math.log(alpha):
        return f"verdict: evidence that {what} (p < {alpha:g})"
    return f"verdict: no evidence that {what} (p >= {alpha:g})"


@provenance_app.command("verify")
def verify(
    endpoint: Annotated[str, typer.Option("--endpoint", help="Base URL of the suspect model.")],
    client: Annotated[str, typer.Option("--client", help="Client id whose marks to test.")],
    route: Annotated[
        str, typer.Option("--route", help="Path of the suspect's probability endpoint.")
    ] = "/v1/classify",
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="Bearer key for the suspect endpoint.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model name to send, if it needs one.")
    ] = None,
    pointer: Annotated[
        str,
        typer.Option(
            "--probabilities-pointer",
            help="JSON pointer to the suspect's probability vectors (or labels).",
        ),
    ] = DEFAULT_PROBABILITIES_POINTER,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Inputs per request.")] = 256,
    alpha: AlphaOpt = 0.001,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    redis: RedisOpt = None,
    data_dir: DataDirOpt = Path("var"),
    policy: Annotated[
        Path | None,
        typer.Option("--policy", envvar="ANTIDISTILL_POLICY", help="Policy (for its key prefix)."),
    ] = None,
) -> None:
    """Ask a suspect model the client's DAWN-marked inputs: did it learn from them?"""

    url = endpoint.rstrip("/") + route

    async def job(client_redis: aioredis.Redis, keys: KeySpace) -> None:
        recorded = [
            m for m in await load_marks(client_redis, keys, client) if m.get("kind") == "dawn"
        ]
        marks: list[Mark] = distinct_dawn_marks(recorded)
        if not marks:
            typer.echo(f"no DAWN marks recorded for client {client}")
            typer.echo("verdict: cannot tell (no marks)")
            return
        try:
            answers = await query_suspect(
                url,
                [m["input"] for m in marks],
                api_key=api_key,
                model=model,
                pointer=pointer,
                batch=batch,
            )
        except (aiohttp.ClientError, TimeoutError, SuspectError) as exc:
            typer.echo(f"cannot query the suspect at {url}: {exc}", err=True)
            raise typer.Exit(2) from None
        result = evidence(marks, answers)
        what = "the suspect learned from this client's answers"
        if as_json:
            payload = {
                "client": client,
                "recorded": len(recorded),
                "marks": result.marks,
                "deviations": result.deviations,
                "matches": result.matches,
                "log10_p": result.log_p / math.log(10),
                "p_value": result.p_value,
            }
            typer.echo(orjson.dumps(payload).decode())
            return
        typer.echo(f"marks: {result.marks} distinct marked inputs ({len(recorded)} recorded)")
        typer.echo(
            f"matches: {result.matches} answers equal our keyed label; "
            f"{result.deviations} differ from our true label (only those can match)"
        )
        typer.echo(
            f"p-value: {format_p(result.log_p)} (binomial, chance 1/(K-1) per differing answer)"
        )
        typer.echo(_verdict(result.log_p, alpha, what))

    with_redis(redis, data_dir, policy, job)


def _documents(path: Path, jsonl: bool) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if not jsonl:
        return [text]
    docs: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise typer.BadParameter(f"{path}:{number}: not JSON") from None
        if isinstance(item, dict):
            item = item.get("text", item.get("content"))
        if not isinstance(item, str):
            raise typer.BadParameter(f'{path}:{number}: need a string or {{"text": ...}}')
        docs.append(item)
    return docs


@provenance_app.command("verify-text")
def verify_text(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="The suspect's outputs.")
    ],
    client: Annotated[str, typer.Option("--client", help="Client id whose watermark to test.")],
    jsonl: Annotated[
        bool,
        typer.Option(
            "--jsonl", help="One output per line: a JSON string or an object with 'text'."
        ),
    ] = False,
    alpha: AlphaOpt = 0.01,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    key_secret: Annotated[
        str | None,
        typer.Option(envvar="ANTIDISTILL_KEY_SECRET", help="The gateway's HMAC secret."),
    ] = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Test a file of a suspect model's outputs for a client's text watermark."""
    if not key_secret and not (data_dir / "key_secret").exists():
        typer.echo(
            f"no key secret: pass --key-secret or a --data-dir holding key_secret ({data_dir})",
            err=True,
        )
        raise typer.Exit(2)
    secret = resolve_key_secret(SecretStr(key_secret) if key_secret else None, data_dir)
    key = client_text_key(provenance_key(secret), client)
    result = analyse(_documents(file, jsonl), key)
    if as_json:
        payload = {
            "client": client,
            "occurrences": result.occurrences,
            "contexts": result.contexts,
            "matches": result.matches,
            "expected": result.expected,
            "z": result.z,
            "log10_p": result.log_p / math.log(10),
            "p_value": result.p_value,
        }
        typer.echo(orjson.dumps(payload).decode())
        return
    typer.echo(
        f"words: {result.occurrences} synonym occurrences in {result.contexts} distinct "
        f"contexts (synonym table v{default_table().version})"
    )
    typer.echo(
        f"matches: {result.matches} contexts use the keyed choice; "
        f"{result.expected:.1f} expected by chance"
    )
    typer.echo(f"z: {result.z:.2f}  p-value: {format_p(result.log_p)}")
    typer.echo(_verdict(result.log_p, alpha, "the text carries this client's watermark"))
