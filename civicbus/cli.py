"""The `civicbus` command line (typer). Contract: DESIGN.md "Command line".

Commands of the role packages (publish, simulate, process, tail, ...) are registered through the
`civicbus.commands` entry-point group, so this module never imports them. Imports of Kafka,
pydantic and the rest happen inside the commands that need them: `civicbus --help`, `token`,
`publish` and `tail` start in well under a second (benchmarks/cli.py measures it).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import entry_points
from pathlib import Path

import typer
from confluent_kafka import KafkaException

from civicbus.cli_support import bus_context, configure_logging, expected_error_message, fail, stop_on_signals
from civicbus.errors import NoBrokerError
from civicbus.settings import DEFAULT_REGISTRY_PORT

app = typer.Typer(help="civicbus: the city's inter-agency event bus.", no_args_is_help=True, add_completion=False)
topics_app = typer.Typer(help="Kafka topics of the bus.", no_args_is_help=True)
schemas_app = typer.Typer(help="Avro schemas and the schema lock.", no_args_is_help=True)
policy_app = typer.Typer(help="The delivery policy (config/policy.yaml).", no_args_is_help=True)
acl_app = typer.Typer(help="Kafka ACLs for production.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log (civic.audit).", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
app.add_typer(policy_app, name="policy")
app.add_typer(acl_app, name="acl")
app.add_typer(audit_app, name="audit")


@app.callback()
def choose_city(
    config: Path = typer.Option(
        None, "--config", file_okay=False, help="The city config folder (default: CIVICBUS_CONFIG, else the sample city)."
    ),
) -> None:
    # Through the environment, so that the processes `civicbus up` starts use the same city.
    if config is not None:
        os.environ["CIVICBUS_CONFIG"] = str(config.resolve())


@app.command()
def init(directory: Path = typer.Argument(..., file_okay=False, help="A new or empty folder.")) -> None:
    """Write an editable copy of the sample city (departments, grants, dispatch, reference data) to DIRECTORY."""
    from civicbus.settings import REPO_ROOT

    if directory.exists() and any(directory.iterdir()):
        fail(f"{directory} is not empty: choose a new folder")
    shutil.copytree(REPO_ROOT / "config", directory, dirs_exist_ok=True)
    typer.echo(f"wrote the sample city to {directory}/ (edit it, then check it with `civicbus --config {directory} policy check`)")
    typer.echo(f"use it with `civicbus --config {directory} up`, or `export CIVICBUS_CONFIG={directory.resolve()}`")


@app.command()
def broker(port: int = typer.Option(9092, help="Port to listen on (loopback).")) -> None:
    """Run only the embedded broker (Tansu, memory storage) until Ctrl-C or SIGTERM."""
    from civicbus.broker import EmbeddedBroker

    stop = stop_on_signals()
    with EmbeddedBroker(port=port) as embedded:
        typer.echo(f"embedded broker listening on {embedded.bootstrap} (memory only; Ctrl-C stops it)")
        stop.wait()
    typer.echo("embedded broker stopped")


@topics_app.command("apply")
def topics_apply() -> None:
    """Create every topic of the topology that is missing; report those that differ."""
    from civicbus.kafka import apply_topics

    ctx = bus_context()
    report = apply_topics(ctx.bootstrap, ctx.topology.specs())
    for name in report.created:
        typer.echo(f"created   {name}")
    for line in report.differs:
        typer.secho(f"differs   {line}", fg=typer.colors.YELLOW)
    typer.echo(f"{len(report.created)} created, {len(report.unchanged)} unchanged, {len(report.differs)} differing")


@schemas_app.command("check")
def schemas_check() -> None:
    """Fail unless every string field says what it holds, every schema is in the lock and every
    change is backward compatible."""
    from civicbus.registry import check_schemas

    try:
        catalog = bus_context().catalog
    except ValueError as e:  # a schema the catalog refuses, e.g. a string field without civicbus.text
        fail(str(e))
    result = check_schemas(catalog)
    for reason in result.incompatible:
        typer.secho(f"incompatible: {reason}", fg=typer.colors.RED, err=True)
    for subject in result.new:
        typer.secho(f"not locked:   {subject} (run `civicbus schemas lock`)", fg=typer.colors.YELLOW, err=True)
    if not result.ok:
        raise typer.Exit(1)
    typer.echo(f"{len(result.locked)} schemas locked and compatible")


@schemas_app.command("lock")
def schemas_lock() -> None:
    """Add new backward-compatible schema versions to schemas/schemas.lock.json."""
    from civicbus.registry import lock_schemas

    try:
        added = lock_schemas(bus_context().catalog)
    except ValueError as e:
        fail(str(e))
    for line in added:
        typer.echo(f"locked {line}")
    typer.echo(f"{len(added)} schema versions added")


@schemas_app.command("push")
def schemas_push() -> None:
    """Load the lock into the Schema Registry at CIVICBUS_SCHEMA_REGISTRY_URL with the lock's ids (IMPORT mode)."""
    from civicbus.schema_push import PushError, push_lock

    settings = bus_context().settings
    if not settings.schema_registry_url:
        fail("set CIVICBUS_SCHEMA_REGISTRY_URL: `schemas push` loads the lock into a Confluent Schema Registry")
    try:
        report = push_lock(settings)
    except PushError as e:
        fail(str(e))
    for line in report.imported:
        typer.echo(f"imported  {line}")
    typer.echo(f"{len(report.imported)} imported, {report.present} already there with the lock's ids; registry mode {report.mode}")


@app.command()
def registry(
    port: int = typer.Option(DEFAULT_REGISTRY_PORT, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
) -> None:
    """Serve the schema lock as a read-only Confluent Schema Registry API until SIGTERM or Ctrl-C."""
    from civicbus.registry_api import serve_registry

    configure_logging()
    settings = bus_context().settings
    typer.echo(f"schema registry (read-only, {settings.schemas_dir / 'schemas.lock.json'}) on http://{host}:{port}")
    serve_registry(settings.schemas_dir, host, port)


@policy_app.command("check")
def policy_check() -> None:
    """Fail, naming file and line, on unknown departments or types and contradicting rules."""
    from civicbus.policy import PolicyError, load_policy

    ctx = bus_context()
    try:
        policy = load_policy(ctx.settings.config / "policy.yaml", ctx.city, ctx.catalog)
    except PolicyError as e:
        fail("\n".join(e.problems))
    typer.echo(f"policy ok: {len(policy.departments)} departments, {len(ctx.catalog.types)} event types")


@app.command()
def token(
    agency: str = typer.Argument(..., help="Department id."),
    revoke: bool = typer.Option(False, "--revoke", help="Invalidate the department's token (the next one differs)."),
) -> None:
    """Print a valid HTTP gateway token for AGENCY, creating it if needed (only its hash is stored)."""
    from civicbus.tokens import TokenStore

    ctx = bus_context()
    if agency not in ctx.city.department_ids():
        fail(f"unknown department {agency!r}; known: {', '.join(ctx.city.department_ids())}", 2)
    store = TokenStore(ctx.settings.state_dir)
    if revoke:
        typer.echo(f"revoked the token of {agency}" if store.revoke(agency) else f"{agency} had no token")
        return
    typer.echo(store.issue(agency))


@acl_app.command("plan")
def acl_plan() -> None:
    """Print the ACL bindings every principal needs, and nothing more."""
    from civicbus import acl

    for binding in acl.plan(bus_context().topology):
        typer.echo(str(binding))


@acl_app.command("principals")
def acl_principals() -> None:
    """Print the user name of every principal the plan names, one a line: each needs a SCRAM credential
    (ops/kafka/principals.txt is this list; ops/kafka/start.sh creates their credentials)."""
    from civicbus import acl

    for principal in acl.principals(bus_context().topology):
        typer.echo(principal.removeprefix("User:"))


@acl_app.command("apply")
def acl_apply() -> None:
    """Create the planned ACL bindings on a real Kafka (CIVICBUS_BOOTSTRAP)."""
    from civicbus import acl
    from civicbus.kafka import make_admin

    ctx = bus_context()
    no_acls = "the embedded broker (Tansu) has no ACLs: nothing applied. On it, the fan-out and the gateway enforce the policy; `civicbus acl plan` shows what a real Kafka would get."
    if not ctx.settings.bootstrap or acl.is_embedded(ctx.bootstrap):
        fail(no_acls)
    bindings = acl.plan(ctx.topology)
    failures = acl.apply(make_admin(ctx.bootstrap), bindings)
    if failures:
        fail("\n".join(failures))
    typer.echo(f"{len(bindings)} ACL bindings applied")


@audit_app.command("verify")
def audit_verify(
    since: str = typer.Option(None, help="Check only records written at or after this time (RFC 3339, e.g. 2026-12-01T08:00:00Z)."),
) -> None:
    """Exit 0 when civic.audit is intact; 1 naming the first forged, altered, removed or reordered record."""
    from civicbus.audit import verification_key
    from civicbus.audit_verify import check, read_log

    since_ms = None
    if since is not None:
        try:
            moment = datetime.fromisoformat(since)
        except ValueError:
            fail(f"--since {since!r} is not a time such as 2026-12-01T08:00:00Z", 2)
        since_ms = int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp() * 1000)
    ctx = bus_context()
    try:
        public_key, key_source = verification_key(ctx.settings)
        records, from_start = read_log(ctx.settings, ctx.bootstrap, since_ms)
    except (ValueError, NoBrokerError, TimeoutError, KafkaException) as e:  # could not check: not a verdict
        fail(f"cannot verify the audit log: {e}", 2)
    verdict = check(records, public_key, from_start)
    if verdict.problem:
        fail(verdict.summary())
    typer.echo(f"{verdict.summary()} (checkpoints checked with the public key {key_source})")


@audit_app.command("key")
def audit_key() -> None:
    """Print the public key checkpoints are verified with; pin it as config/audit-public-key.pem."""
    from civicbus.audit import checkpoint_key, public_key_pem

    typer.echo(public_key_pem(checkpoint_key(bus_context().settings).public_key()), nl=False)


@app.command()
def up(
    broker_port: int = typer.Option(9092, help="Embedded broker port (ignored with CIVICBUS_BOOTSTRAP)."),
    http_port: int = typer.Option(8080, help="HTTP gateway port."),
    metrics_port: int = typer.Option(9308, help="Prometheus exporter port."),
    registry_port: int = typer.Option(DEFAULT_REGISTRY_PORT, help="Schema Registry API port (ignored with CIVICBUS_SCHEMA_REGISTRY_URL)."),
    simulate: float = typer.Option(0.0, help="Run the city simulator at this many events/s (0: off)."),
) -> None:
    """Start everything: broker, topics, processors, gateway, exporter, simulator."""
    from civicbus.stack import Stack

    configure_logging()
    Stack(bus_context().settings, broker_port, http_port, metrics_port, simulate, registry_port=registry_port).run()


@app.command()
def lag(
    samples: int = typer.Option(3, min=1, help="Polls to take before printing; the status is judged over them."),
    interval: float = typer.Option(1.0, min=0.1, help="Seconds between polls."),
    watch: bool = typer.Option(False, help="Keep polling and reprint the table every --interval until Ctrl-C."),
    serve: int = typer.Option(0, help="Serve the lag metrics for Prometheus on this port instead of printing."),
) -> None:
    """Consumer-group lag per partition with each group's status (OK/WARNING/ERROR/STALLED/STOPPED)."""
    from civicbus.lag.exporter import build_exporter
    from civicbus.lag.table import format_table

    ctx = bus_context()
    exporter = build_exporter(ctx.settings, ctx.bootstrap, window=None if watch or serve else samples)
    if serve:
        from prometheus_client import REGISTRY, start_http_server

        configure_logging()
        REGISTRY.register(exporter.start())
        start_http_server(serve)
        typer.echo(f"lag exporter on http://0.0.0.0:{serve}/metrics, polling every {ctx.settings.lag_poll_interval_s}s")
        stop = stop_on_signals()
        stop.wait()
        exporter.stop()
        return
    for n in range(samples):
        report = exporter.poll()
        if n < samples - 1:
            time.sleep(interval)
    while watch:
        typer.echo(f"\x1b[2J\x1b[H{time.strftime('%H:%M:%S')}\n{format_table(report)}")
        time.sleep(interval)
        report = exporter.poll()
    if not report.up:
        fail(format_table(report))
    typer.echo(format_table(report))


def _register_plugins() -> None:
    for entry_point in entry_points(group="civicbus.commands"):
        entry_point.load()(app)


def main() -> None:
    _register_plugins()
    try:
        app()
    except Exception as error:
        message = expected_error_message(error)
        if message is None:
            raise
        typer.secho(f"civicbus: {message}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
