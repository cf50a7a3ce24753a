"""`python -m benchmarks [NAME ...]`: run benchmarks, write benchmarks/results/NAME.json."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def main() -> None:
    """Each command runs one benchmark; `all` runs them in turn."""


@app.command()
def throughput(events: int = 10_000, repeats: int = 3, seed: int = 6, profile: bool = typer.Option(False, help="py-spy every stage")) -> None:
    """(a) pipeline vs raw passthrough, case stage vs bare faust."""
    from benchmarks.throughput import run

    run(events, repeats, seed, profile)


if __name__ == "__main__":
    app()
