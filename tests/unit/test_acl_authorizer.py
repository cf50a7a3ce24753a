"""The production stack admits itself: every Kafka request each docker-compose.yml service makes is
allowed by the planned ACLs under Kafka's StandardAuthorizer rules (tests/kafka_authorizer.py), and
every principal a service logs in as has a SCRAM credential made by ops/kafka/start.sh.

The requests are derived from the code and the topology, not from the plan: each stage's
subscription (its Stage object), its consumer group and transactional id (the runner's naming),
the topics of the topology its role writes, and the operator's `topics apply`, `reference load`
and lag exporter."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from civicbus import acl
from civicbus.context import BusContext
from civicbus.roles import Role, role
from civicbus.settings import Settings
from civicbus.topology import Topology
from processors.cases import CaseStage
from processors.fanout import FanoutStage
from processors.ingest import IngestStage
from processors.ingest_progress import IngestProgress
from processors.runner import Stage, StageRunner
from tests.kafka_authorizer import Acl, Request, StandardAuthorizer
from tests.prometheus_support import OPS, REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# `schemas push` talks to the Schema Registry only, never to Kafka
CIVICBUS_SERVICES = {n: s for n, s in SERVICES.items() if s["image"].startswith("civicbus:") and s["command"][:2] != ["schemas", "push"]}
SERVER_PROPERTIES = dict(line.split("=", 1) for line in (OPS / "kafka" / "server.properties").read_text().splitlines()
                         if line.strip() and not line.startswith("#"))
SUPER_USERS = set(SERVER_PROPERTIES["super.users"].split(";"))
CTX = BusContext(Settings(bootstrap="kafka1:9092"))
TOPOLOGY: Topology = CTX.topology
PLAN = acl.plan(TOPOLOGY)
AUTHORIZER = StandardAuthorizer([Acl(b.principal, b.operation, b.resource, b.name, b.pattern) for b in PLAN], SUPER_USERS)
TOPICS = [spec.name for spec in TOPOLOGY.specs()]


def compose_default(value: str) -> str:
    """`${VAR:-default}` as compose resolves it with VAR unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def covered(resources, names=TOPICS) -> list[str]:
    return [n for n in names if any(r.covers(n) for r in resources)]


def consume(principal: str, topics: list[str], group: str, client: str) -> list[Request]:
    requests = [Request(principal, "DESCRIBE", "group", group, f"{client}: FindCoordinator, OffsetFetch"),
                Request(principal, "READ", "group", group, f"{client}: JoinGroup, SyncGroup, Heartbeat, OffsetCommit")]
    for topic in topics:
        requests += [Request(principal, "DESCRIBE", "topic", topic, f"{client}: Metadata, ListOffsets, OffsetFetch of {topic}"),
                     Request(principal, "READ", "topic", topic, f"{client}: Fetch, OffsetCommit of {topic}")]
    return requests


def produce(principal: str, topics: list[str], client: str, transactional_id: str | None = None, group: str | None = None) -> list[Request]:
    requests = [Request(principal, "IDEMPOTENT_WRITE", "cluster", "kafka-cluster", f"{client}: InitProducerId (idempotent)")]
    for topic in topics:
        requests += [Request(principal, "DESCRIBE", "topic", topic, f"{client}: Metadata of {topic}"),
                     Request(principal, "WRITE", "topic", topic, f"{client}: Produce, AddPartitionsToTxn to {topic}")]
    if transactional_id:
        requests += [Request(principal, "DESCRIBE", "transactional_id", transactional_id, f"{client}: FindCoordinator(transaction)"),
                     Request(principal, "WRITE", "transactional_id", transactional_id, f"{client}: InitProducerId, AddPartitionsToTxn, EndTxn"),
                     Request(principal, "READ", "group", group, f"{client}: AddOffsetsToTxn, TxnOffsetCommit")]
    return requests


def runner_stage_requests(the_role: Role, stage: Stage) -> list[Request]:
    runner = StageRunner(stage, CTX)
    subscribed = [t for t in TOPICS if any(re.match(s, t) if s.startswith("^") else s == t for s in stage.subscription())]
    assert subscribed, f"{stage.name} subscribes to no topic of the topology"
    reads = sorted(set(subscribed) | set(covered(the_role.reads)))
    client = f"{stage.name} stage"
    return (consume(the_role.principal, reads, runner.group_id, client)
            + produce(the_role.principal, covered(the_role.writes), client, runner.transactional_id if stage.exactly_once else None,
                      runner.group_id))


def requests_of(role_name: str) -> list[Request]:
    the_role = role(TOPOLOGY, role_name)
    p = the_role.principal
    if role_name == "ingest":
        return runner_stage_requests(the_role, IngestStage(CTX))
    if role_name == "fanout":
        return runner_stage_requests(the_role, FanoutStage(CTX))
    if role_name == "cases":
        progress = IngestProgress(CTX)  # how far ingest has read, for the stage's hold of status updates
        inbound = [t for t in TOPICS if t.startswith(progress.prefix)]
        return (runner_stage_requests(the_role, CaseStage(CTX))
                + [Request(p, "DESCRIBE", "group", progress.group, "case clock: OffsetFetch of ingest's group")]
                + [Request(p, "DESCRIBE", "topic", t, f"case clock: ListOffsets of {t}") for t in inbound])
    if role_name == "gateway":
        return (consume(p, [TOPOLOGY.feed(d) for d in TOPOLOGY.departments], TOPOLOGY.group("civicbus-gateway"), "gateway feeds")
                + produce(p, [TOPOLOGY.inbound(d) for d in TOPOLOGY.departments] + [TOPOLOGY.name("civic.audit")], "gateway"))
    if role_name == "simulator":
        return produce(p, [TOPOLOGY.inbound(d) for d in TOPOLOGY.departments], "simulator")
    if role_name == "operator":
        requests = []
        for spec in TOPOLOGY.specs():
            requests += [Request(p, "DESCRIBE", "topic", spec.name, f"topics apply: Metadata of {spec.name}"),
                         Request(p, "CREATE", "topic", spec.name, f"topics apply: CreateTopics {spec.name}"),
                         Request(p, "DESCRIBE_CONFIGS", "topic", spec.name, f"topics apply: DescribeConfigs {spec.name}")]
        requests += produce(p, [TOPOLOGY.reference(r) for r in ("population", "entities", "buildings")], "reference load")
        for stage in ("ingest", "cases", "fanout", "gateway"):
            requests.append(Request(p, "DESCRIBE", "group", TOPOLOGY.group(f"civicbus-{stage}"), "lag exporter: DescribeGroups, OffsetFetch"))
        requests += [Request(p, "DESCRIBE", "topic", t, f"lag exporter: ListOffsets of {t}") for t in TOPICS]
        return requests
    raise AssertionError(f"no requests derived for role {role_name}")


def roles_of_service(service: dict) -> dict[str, str]:
    """Role name -> the user name it logs in as, for every civicbus process the service runs."""
    command, env = service["command"], service["environment"]
    logged_in = {}
    if command[0] == "up":
        logged_in["operator"] = env["CIVICBUS_KAFKA_SASL_USERNAME"]
        passwords = yaml.safe_load(compose_default(env["CIVICBUS_KAFKA_ROLE_PASSWORDS"]))
        parts = ["ingest", "cases", "fanout", "gateway"] + (["simulator"] if "--simulate" in command else [])
        for part in parts:
            username = role(TOPOLOGY, part).username
            assert username in passwords, f"`up` has no credentials for its {part} part ({username})"
            logged_in[part] = username
    elif command[0] == "simulate":
        logged_in["simulator"] = env["CIVICBUS_KAFKA_SASL_USERNAME"]
    elif command[0] in ("process", "gateway"):
        logged_in[command[-1] if command[0] == "process" else "gateway"] = env["CIVICBUS_KAFKA_SASL_USERNAME"]
    return logged_in


@pytest.mark.parametrize("name", [n for n, s in CIVICBUS_SERVICES.items() if s["command"][0] != "acl"])
def test_every_request_of_every_compose_service_is_allowed(name):
    for role_name, username in roles_of_service(SERVICES[name]).items():
        assert f"User:{username}" == role(TOPOLOGY, role_name).principal, f"{name}: {role_name} logs in as {username}"
        for request in requests_of(role_name):
            assert AUTHORIZER.allows(request), (
                f"{name}: {request.principal} refused {request.operation} on {request.resource} {request.name} ({request.why})")


def test_acl_apply_runs_as_a_super_user():
    env = SERVICES["civicbus-acls"]["environment"]
    assert SERVICES["civicbus-acls"]["command"] == ["acl", "apply"] and f"User:{env['CIVICBUS_KAFKA_SASL_USERNAME']}" in SUPER_USERS


def test_the_plan_is_valid_kafka_and_grants_no_role_what_another_role_needs():
    for binding in PLAN:
        Acl(binding.principal, binding.operation, binding.resource, binding.name, binding.pattern)  # raises on what Kafka refuses
    simulator = role(TOPOLOGY, "simulator").principal
    assert not AUTHORIZER.allows(Request(simulator, "READ", "topic", TOPOLOGY.feed("police"), "a simulator reading a feed"))
    ingest = role(TOPOLOGY, "ingest").principal
    assert not AUTHORIZER.allows(Request(ingest, "WRITE", "topic", TOPOLOGY.feed("police"), "ingest writing a feed"))
    assert not AUTHORIZER.allows(Request(ingest, "WRITE", "transactional_id", "civicbus-fanout.0", "ingest fencing the fan-out"))


def test_principals_file_is_generated_from_the_plan():
    listed = [line for line in (OPS / "kafka" / "principals.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert listed == [p.removeprefix("User:") for p in acl.principals(TOPOLOGY)], "run: civicbus acl principals > ops/kafka/principals.txt"


def _scram_credentials(tmp_path: Path) -> dict[str, str]:
    """Run ops/kafka/start.sh with the environment compose gives kafka1, a stand-in Kafka recording its arguments."""
    bin_dir = tmp_path / "kafka" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "kafka-storage.sh").write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {tmp_path}/storage-args\n')
    (bin_dir / "kafka-server-start.sh").write_text("#!/bin/bash\nexit 0\n")
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    node_env = {k: compose_default(str(v)) for k, v in SERVICES["kafka1"]["environment"].items()}
    result = subprocess.run(["bash", str(OPS / "kafka" / "start.sh")], env={"PATH": os.environ["PATH"], "KAFKA_HOME": str(tmp_path / "kafka"), **node_env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    arguments = (tmp_path / "storage-args").read_text().splitlines()
    return dict(re.fullmatch(r"SCRAM-SHA-512=\[name=([^,]+),password=(.*)\]", a).groups() for a in arguments if a.startswith("SCRAM"))


def test_start_sh_creates_scram_credentials_for_exactly_the_planned_principals_with_the_passwords_services_use(tmp_path):
    credentials = _scram_credentials(tmp_path)
    planned = {p.removeprefix("User:") for p in acl.principals(TOPOLOGY)}
    assert set(credentials) == planned | {"admin", "schema-registry"}
    for name, service in CIVICBUS_SERVICES.items():
        env = {k: compose_default(str(v)) for k, v in service["environment"].items()}
        assert credentials[env["CIVICBUS_KAFKA_SASL_USERNAME"]] == env["CIVICBUS_KAFKA_SASL_PASSWORD"], name
        for username, password in (yaml.safe_load(env["CIVICBUS_KAFKA_ROLE_PASSWORDS"]) or {}).items() if "CIVICBUS_KAFKA_ROLE_PASSWORDS" in env else ():
            assert credentials[username] == password, f"{name}: {username}"


def test_the_authorizer_model_follows_kafkas_rules():
    u = "User:alice"
    ask = lambda op, resource, name, principal=u: Request(principal, op, resource, name, "probe")
    none = StandardAuthorizer([])
    assert not none.allows(ask("READ", "topic", "t"))  # deny by default
    assert StandardAuthorizer([], {u}).allows(ask("READ", "topic", "t"))  # super user
    prefixed = StandardAuthorizer([Acl(u, "READ", "topic", "civic.", "PREFIXED")])
    assert prefixed.allows(ask("READ", "topic", "civic.feed.x")) and not prefixed.allows(ask("READ", "topic", "other"))
    assert prefixed.allows(ask("DESCRIBE", "topic", "civic.x"))  # READ implies DESCRIBE
    assert not prefixed.allows(ask("WRITE", "topic", "civic.x")) and not prefixed.allows(ask("READ", "group", "civic.x"))
    literal = StandardAuthorizer([Acl(u, "WRITE", "topic", "a")])
    assert literal.allows(ask("WRITE", "topic", "a")) and not literal.allows(ask("WRITE", "topic", "ab"))
    assert literal.allows(ask("IDEMPOTENT_WRITE", "cluster", "kafka-cluster"))  # KIP-679
    anyone = StandardAuthorizer([Acl("User:*", "ALL", "topic", "*", host="*")])
    assert anyone.allows(ask("DELETE", "topic", "x", "User:bob"))
    other_host = StandardAuthorizer([Acl(u, "READ", "topic", "t", host="10.9.9.9")])
    assert not other_host.allows(ask("READ", "topic", "t"))
    denied = StandardAuthorizer([Acl(u, "ALL", "topic", "civic.", "PREFIXED"), Acl(u, "WRITE", "topic", "civic.audit", permission="DENY")])
    assert not denied.allows(ask("WRITE", "topic", "civic.audit")) and denied.allows(ask("WRITE", "topic", "civic.feed.x"))
    deny_read = StandardAuthorizer([Acl(u, "DESCRIBE", "topic", "t"), Acl(u, "READ", "topic", "t", permission="DENY")])
    assert deny_read.allows(ask("DESCRIBE", "topic", "t"))  # a DENY implies nothing
    assert StandardAuthorizer([Acl(u, "CREATE", "cluster", "kafka-cluster")]).allows(ask("CREATE", "topic", "new"))
    with pytest.raises(ValueError):
        Acl(u, "READ", "group", "", "PREFIXED")
