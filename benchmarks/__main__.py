"""`python -m benchmarks NAME [OPTIONS]` (or `all`): run benchmarks, write benchmarks/results/NAME.json."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def main() -> None:
    """Each command runs one benchmark; `all` runs them in turn."""


@app.command()
def throughput(events: int = 10_000, repeats: int = 3, seed: int = 6, profile: bool = typer.Option(False, help="py-spy every stage")) -> None:
    """(a) pipeline vs the replay of its own records and vs a raw passthrough."""
    from benchmarks.throughput import run

    run(events, repeats, seed, profile)


@app.command()
def latency(seed: int = 6, repeats: int = 3,
            rates: str = typer.Option("", help="events/s of the phases, comma-separated (default 100,1000,5000)")) -> None:
    """(b) publish -> feed latency p50/p95/p99 at 100, 1,000 and 5,000 events/s, medians over REPEATS fresh stacks."""
    from benchmarks.latency import run

    run(seed, repeats, [int(rate) for rate in rates.split(",") if rate.strip()])


@app.command()
def hops(seed: int = 6, rate: float = 100.0, seconds: float = 20.0) -> None:
    """(b) a bare hop's latency on the idle broker and beside the pipeline at RATE events/s, and the pipeline's."""
    from benchmarks.hops import run

    run(seed, rate, seconds)


@app.command()
def serde(seed: int = 6, repeats: int = 5) -> None:
    """(c) Avro encode and decode rates."""
    from benchmarks.serde_rates import run

    run(seed, repeats)


@app.command()
def workers(events: int = 10_000, repeats: int = 2, seed: int = 6) -> None:
    """(d) two workers per stage against one."""
    from benchmarks.workers import run

    run(events, repeats, seed)


@app.command()
def gateway(seed: int = 6, case_reads_only: bool = typer.Option(False, help="only GET /v1/cases/{id} at 100/s")) -> None:
    """(e) HTTP gateway under 50 concurrent clients (needs the gateway of DESIGN.md), then case reads at 100/s."""
    from benchmarks.gateway import run

    run(seed, case_reads_only)


@app.command()
def broker(repeats: int = 3) -> None:
    """(f) the embedded broker's CPU per record, per transaction and per idle fetch."""
    from benchmarks.broker import run

    run(repeats)


@app.command()
def partitions(repeats: int = 3) -> None:
    """(f) a reader's broker cost at the end of 20,000 batches in 1, 4 or 16 partitions; idle cost of 23 topics x 1 or 4."""
    from benchmarks.broker import run_partitions

    run_partitions(repeats)


@app.command()
def share(rate: float = 20.0, minute: int = 6, seed: int = 6) -> None:
    """What each part of a stack (each stage, the departments' readers, the traffic) costs the broker at minute MINUTE of RATE events/s."""
    from benchmarks.broker_share import run

    run(rate, minute, seed)


@app.command()
def soak(rate: float = 20.0, minutes: int = 60, seed: int = 6,
         bare_replay: bool = typer.Option(True, help="then the bare replay of the stages' own records at the same pace")) -> None:
    """The whole pipeline under the simulator's traffic at RATE events/s, per minute for MINUTES."""
    from benchmarks.soak import run

    run(rate, minutes, seed, bare_replay)


@app.command()
def up(rate: float = 20.0, minutes: int = 25) -> None:
    """The stack as `civicbus up --simulate RATE` runs it, its metrics endpoint scraped every minute for MINUTES, then SIGTERM."""
    from benchmarks.up import run

    run(rate, minutes)


@app.command()
def cli(repeats: int = 7) -> None:
    """(g) start-up of `civicbus --help`, token, publish and tail."""
    from benchmarks.cli import run

    run(repeats)


@app.command()
def memory(ids: int = 200_000, repeats: int = 3, seed: int = 6) -> None:
    """(h) bytes the fan-out holds per remembered id, against the structure it used before."""
    from benchmarks.memory import run

    run(ids, repeats, seed)


@app.command("all")
def run_all(seed: int = 6) -> None:
    """Every benchmark in turn, with its defaults."""
    serde(seed=seed)
    broker()
    partitions()
    share(seed=seed)
    throughput(seed=seed, profile=True)
    latency(seed=seed)
    hops(seed=seed)
    workers(seed=seed)
    gateway(seed=seed)
    cli()
    memory(seed=seed)


if __name__ == "__main__":
    app()
