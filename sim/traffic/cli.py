"""``antidistill sim``: list scenarios, export a labelled dataset, drive a live gateway."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from sim.traffic.dataset import dataset
from sim.traffic.export import write_jsonl
from sim.traffic.live import CONNECTION_ERROR, LiveResult, check_loopback, keys_for, run
from sim.traffic.scenarios import SCENARIOS, generate

sim_app = typer.Typer(
    help="The traffic simulator: scenarios, datasets, live runs.", no_args_is_help=True
)


@sim_app.command("list")
def list_scenarios() -> None:
    """List the scenarios (benign personas and attack campaigns)."""
    width = max(len(n) for n in SCENARIOS)
    for spec in SCENARIOS.values():
        kind = "mixed" if spec.attack is None else "attack" if spec.attack else "benign"
        typer.echo(
            f"{spec.name:<{width}}  {kind:<6}  {spec.default_clients:>3}  {spec.description}"
        )


@sim_app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", help="JSON lines file to write.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    scale: Annotated[float, typer.Option(help="Client count multiplier for the mix.")] = 1.0,
    scenario: Annotated[
        str | None, typer.Option(help="One scenario instead of the standard mix.")
    ] = None,
    clients: Annotated[int | None, typer.Option(help="Clients of --scenario.")] = None,
) -> None:
    """Write a labelled dataset: one decision event per line, plus a ``label`` object."""
    if scenario is not None and scenario not in SCENARIOS:
        raise typer.BadParameter(f"unknown scenario {scenario!r}", param_hint="--scenario")
    sims = (
        generate(scenario, seed=seed, clients=clients)
        if scenario
        else dataset(seed=seed, scale=scale)
    )
    n = write_jsonl(sims, out)
    typer.echo(f"wrote {n} events of {len(sims)} clients to {out}")


def _summary(result: LiveResult) -> list[str]:
    per_family: Counter[str] = Counter(k.family for k in result.keys)
    attack = {k.family: k.attack for k in result.keys}
    head = (
        f"{'family':<22} {'label':<6} {'keys':>4} {'sent':>6} {'2xx':>6} {'429':>6} "
        f"{'403':>5} {'4xx':>5} {'5xx':>5} {'conn':>5}"
    )
    rows = [head, "-" * len(head)]
    for family, statuses in result.statuses.items():
        sent = sum(statuses.values())
        ok = sum(v for s, v in statuses.items() if 200 <= s < 300)
        other4 = sum(v for s, v in statuses.items() if 400 <= s < 500 and s not in (403, 429))
        err5 = sum(v for s, v in statuses.items() if s >= 500)
        label = "attack" if attack[family] else "benign"
        rows.append(
            f"{family:<22} {label:<6} {per_family[family]:>4} {sent:>6} {ok:>6} "
            f"{statuses[429]:>6} {statuses[403]:>5} {other4:>5} {err5:>5} "
            f"{statuses[CONNECTION_ERROR]:>5}"
        )
    return rows


@sim_app.command("run")
def run_live(
    target: Annotated[str, typer.Option(help="Gateway base URL (loopback only).")],
    scenario: Annotated[str, typer.Option(help="Scenario name (`antidistill sim list`).")],
    clients: Annotated[int | None, typer.Option(help="Clients (default: the scenario's).")] = None,
    speed: Annotated[float, typer.Option(help="Simulated seconds per real second.")] = 100.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    duration: Annotated[float, typer.Option(help="Stop after this many real seconds.")] = 600.0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at most.")] = 8,
) -> None:
    """Drive a live gateway with a scenario's clients, time-compressed, then summarise."""
    if scenario not in SCENARIOS:
        raise typer.BadParameter(f"unknown scenario {scenario!r}", param_hint="--scenario")
    try:
        check_loopback(target)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--target") from None
    if speed <= 0 or duration <= 0 or concurrency < 1:
        raise typer.BadParameter("--speed and --duration must be > 0, --concurrency >= 1")
    sims = generate(
        scenario,
        seed=seed,
        clients=clients,
        duration_s=min(86_400.0, speed * duration),
        keep_bodies=True,
    )
    typer.echo("key -> family -> label (share, campaign)")
    for k in keys_for(sims):
        label = "attack" if k.attack else "benign"
        typer.echo(
            f"  {k.key} -> {k.family} -> {label} ({k.attacker_share:g}, {k.campaign or '-'})"
        )
    result = asyncio.run(
        run(target, sims, speed=speed, duration_s=duration, concurrency=concurrency)
    )
    state = "done" if result.finished else "stopped at --duration"
    typer.echo(
        f"\nsent {result.sent} of {result.planned} requests in {result.elapsed_s:.1f} s ({state})"
    )
    for row in _summary(result):
        typer.echo(row)
    if speed > 1:
        typer.echo(
            f"\nnote: the gateway's per-minute limits see time {speed:g}x compressed; scale them "
            "by --speed in the policy for the simulated 429 rates."
        )
