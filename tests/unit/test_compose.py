"""docker-compose.yml cannot run here (no Docker engine), so it is checked statically: it parses,
every image is pinned, every file it mounts exists, and its settings agree with each other,
with ops/ and with civicbus (topology, metrics port, client settings)."""

import re
import subprocess
from pathlib import Path

import yaml

from civicbus.config import load_city
from civicbus.settings import Settings
from civicbus.topology import Topology
from tests.prometheus_support import OPS, REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KAFKA_NODES = {name: s for name, s in SERVICES.items() if re.fullmatch(r"kafka\d", name)}
SERVER_PROPERTIES = dict(
    line.split("=", 1) for line in (OPS / "kafka" / "server.properties").read_text().splitlines()
    if line.strip() and not line.startswith("#")
)
START_SH = (OPS / "kafka" / "start.sh").read_text()


def test_every_image_is_pinned_to_a_version():
    for name, service in SERVICES.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+(\.\d+)+", tag), f"{name}: image {image} is not pinned to a version"


def test_every_mounted_file_and_build_input_exists():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"
        if "build" in service:
            assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
            assert service["image"] == "civicbus:0.1.0"
        for dependency in service.get("depends_on", []):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
    for line in (OPS / "civicbus.Dockerfile").read_text().splitlines():
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"the Dockerfile copies missing {source}"


def test_three_kraft_nodes_form_the_quorum_with_sasl_scram_and_the_acl_authorizer():
    node_ids = {name: int(s["environment"]["KAFKA_NODE_ID"]) for name, s in KAFKA_NODES.items()}
    assert sorted(node_ids.values()) == [1, 2, 3]
    voters = {f"{n}@kafka{n}:9093" for n in node_ids.values()}
    assert set(SERVER_PROPERTIES["controller.quorum.voters"].split(",")) == voters
    assert all(f"kafka{node_ids[name]}" == name == s["hostname"] for name, s in KAFKA_NODES.items())
    external = [s["environment"]["KAFKA_EXTERNAL_PORT"] for s in KAFKA_NODES.values()]
    assert len(set(external)) == 3 and all([f"{p}:{p}"] == s["ports"] for p, s in zip(external, KAFKA_NODES.values()))
    assert SERVER_PROPERTIES["process.roles"] == "broker,controller"
    assert SERVER_PROPERTIES["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert SERVER_PROPERTIES["allow.everyone.if.no.acl.found"] == "false"
    assert SERVER_PROPERTIES["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert SERVER_PROPERTIES["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    protocols = dict(p.split(":") for p in SERVER_PROPERTIES["listener.security.protocol.map"].split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}, "no listener may be unauthenticated"


def test_replication_three_with_two_in_sync_and_topics_created_by_civicbus():
    assert SERVER_PROPERTIES["default.replication.factor"] == "3"
    assert SERVER_PROPERTIES["offsets.topic.replication.factor"] == "3"
    assert SERVER_PROPERTIES["transaction.state.log.replication.factor"] == "3"
    assert SERVER_PROPERTIES["min.insync.replicas"] == "2"
    assert SERVER_PROPERTIES["transaction.state.log.min.isr"] == "2"
    assert SERVER_PROPERTIES["auto.create.topics.enable"] == "false"
    # civicbus creates its topics with replication_factor=-1 (the broker default, 3 here) and
    # must not weaken durability per topic.
    topology = Topology(tuple(load_city(Settings().config).department_ids()))
    for spec in topology.specs():
        assert not {"min.insync.replicas", "unclean.leader.election.enable"} & set(spec.config), spec.name
    assert SERVICES["schema-registry"]["environment"]["SCHEMA_REGISTRY_KAFKASTORE_TOPIC_REPLICATION_FACTOR"] == "3"


def test_start_script_fills_every_placeholder_and_gets_every_value_it_needs():
    placeholders = set(re.findall(r"\$\{(\w+)\}", (OPS / "kafka" / "server.properties").read_text()))
    substituted = set(re.findall(r's\|\\\$\{(\w+)\}\|', START_SH))
    assert placeholders == substituted
    required = set(re.findall(r'"\$\{(\w+):\?\}"', START_SH))
    assert placeholders <= required
    for name, node in KAFKA_NODES.items():
        assert required <= set(node["environment"]), f"{name} lacks {required - set(node['environment'])}"
    result = subprocess.run(["bash", "-n", str(OPS / "kafka" / "start.sh"), str(OPS / "kafka" / "acl-bootstrap.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def scram_users() -> set[str]:
    """The infrastructure's users, named in start.sh, and every planned principal, from principals.txt."""
    planned = {line for line in (OPS / "kafka" / "principals.txt").read_text().splitlines() if line and not line.startswith("#")}
    return set(re.findall(r"SCRAM-SHA-512=\[name=([\w-]+),", START_SH)) | planned


def test_every_principal_the_services_log_in_as_has_a_scram_credential():
    """Passwords and every request are checked in tests/unit/test_acl_authorizer.py."""
    civicbus_services = {n: s for n, s in SERVICES.items() if s["image"].startswith("civicbus:")}
    # `schemas push` talks to the Schema Registry only, never to Kafka
    users = {s["environment"]["CIVICBUS_KAFKA_SASL_USERNAME"] for s in civicbus_services.values() if s["command"][:2] != ["schemas", "push"]}
    registry = SERVICES["schema-registry"]["environment"]["SCHEMA_REGISTRY_KAFKASTORE_SASL_JAAS_CONFIG"]
    users |= set(re.findall(r'username="([\w-]+)"', registry))
    assert users <= scram_users(), users - scram_users()
    # the clients speak what the brokers listen for, through civicbus's own settings
    for service in civicbus_services.values():
        settings = Settings(**{k.removeprefix("CIVICBUS_").lower(): v for k, v in service["environment"].items()
                               if k.startswith("CIVICBUS_") and "${" not in v})
        assert settings.kafka_security_protocol == "SASL_PLAINTEXT"
        assert settings.kafka_sasl_mechanism == SERVER_PROPERTIES["sasl.enabled.mechanisms"]
        assert sorted(settings.bootstrap.split(",")) == sorted(f"{n}:9092" for n in KAFKA_NODES)
        assert settings.schema_registry_url == "http://schema-registry:8081"


def test_acls_are_applied_before_the_bus_starts():
    """The hook for the ACL plan: infrastructure grants first, then `civicbus acl apply` as admin."""
    acl_script = (OPS / "kafka" / "acl-bootstrap.sh").read_text()
    assert set(re.findall(r"User:[\w-]+", acl_script)) == {"User:schema-registry"}  # the bus's own: `civicbus acl apply`
    assert SERVICES["civicbus-acls"]["command"] == ["acl", "apply"]
    assert SERVICES["civicbus-acls"]["environment"]["CIVICBUS_KAFKA_SASL_USERNAME"] == "admin"
    assert "User:admin" in SERVER_PROPERTIES["super.users"].split(";")
    assert SERVICES["civicbus"]["depends_on"]["civicbus-acls"] == {"condition": "service_completed_successfully"}


def test_prometheus_scrapes_civicbus_up_and_grafana_gets_the_dashboard():
    command = SERVICES["civicbus"]["command"]
    metrics_port = command[command.index("--metrics-port") + 1]
    assert f"{metrics_port}:{metrics_port}" in SERVICES["civicbus"]["ports"]
    assert SERVICES["civicbus"]["environment"]["CIVICBUS_METRICS_HOST"] == "0.0.0.0"
    prometheus = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "civicbus")
    assert job["static_configs"][0]["targets"] == [f"civicbus:{metrics_port}"]
    assert "./ops/prometheus:/etc/prometheus:ro" in SERVICES["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]
    for pattern in prometheus["rule_files"]:
        assert list((OPS / "prometheus").glob(pattern)), f"rule_files {pattern} matches nothing"
    provider = yaml.safe_load((OPS / "grafana" / "provisioning" / "dashboards" / "civicbus.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in SERVICES["grafana"]["volumes"])
    assert mounts["./ops/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert Path(SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).name in {
        p.name for p in (OPS / "grafana" / "dashboards").glob("*.json")}


REGISTRY = SERVICES["schema-registry"]
REGISTRY_START_SH = (OPS / "schema-registry" / "start.sh").read_text()
CIVICBUS_CLIENTS = {n: s for n, s in SERVICES.items() if s["image"].startswith("civicbus:") and s["command"][0] not in ("acl", "schemas")}


def registry_users() -> dict[str, tuple[str, list[str]]]:
    """user -> (password variable, roles), from the password file start.sh writes."""
    lines = re.findall(r"^([\w-]+): \$\{(\w+)\},([\w,]+)$", REGISTRY_START_SH, re.MULTILINE)
    return {user: (variable, roles.split(",")) for user, variable, roles in lines}


def test_the_schema_registry_requires_basic_authentication():
    env = REGISTRY["environment"]
    assert env["SCHEMA_REGISTRY_AUTHENTICATION_METHOD"] == "BASIC"
    mount, target = REGISTRY["volumes"][0].split(":")[:2]
    jaas_path = env["SCHEMA_REGISTRY_OPTS"].removeprefix("-Djava.security.auth.login.config=")
    jaas = (REPO / mount / jaas_path.removeprefix(target + "/")).read_text()
    assert re.search(rf"^{env['SCHEMA_REGISTRY_AUTHENTICATION_REALM']} {{", jaas, re.MULTILINE), "the realm names no JAAS section"
    assert "org.eclipse.jetty.jaas.spi.PropertyFileLoginModule required" in jaas
    password_file = re.search(r'file="([^"]+)"', jaas).group(1)
    assert f"cat > {password_file} <<PASSWORDS" in REGISTRY_START_SH and "exec /etc/confluent/docker/run" in REGISTRY_START_SH
    assert REGISTRY["entrypoint"] == ["/bin/bash", f"{target}/start.sh"]
    users = registry_users()
    roles = set(env["SCHEMA_REGISTRY_AUTHENTICATION_ROLES"].split(","))
    assert users and all(set(r) <= roles for _, r in users.values())
    assert {v for v, _ in users.values()} <= set(env), "start.sh needs a password the registry is not given"
    assert "-u \"civicbus:$${SCHEMA_REGISTRY_CIVICBUS_PASSWORD}\"" in REGISTRY["healthcheck"]["test"][1]
    result = subprocess.run(["bash", "-n", str(OPS / "schema-registry" / "start.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_civicbus_client_logs_in_to_the_registry_with_a_password_it_has():
    users = registry_users()
    for name, service in {**CIVICBUS_CLIENTS, "schemas-push": SERVICES["schemas-push"]}.items():
        env = service["environment"]
        assert env["CIVICBUS_SCHEMA_REGISTRY_URL"] == "http://schema-registry:8081", name
        user, password = env["CIVICBUS_SCHEMA_REGISTRY_BASIC_AUTH"].split(":", 1)
        variable = re.fullmatch(r"\$\{(\w+):-[^}]*\}", password).group(1)
        assert users[user][0] == variable, f"{name} logs in as {user} with {variable}"
        assert REGISTRY["environment"][variable] == password, f"{name}: {variable} defaults differ from the registry's"
    assert "admin" in users[SERVICES["schemas-push"]["environment"]["CIVICBUS_SCHEMA_REGISTRY_BASIC_AUTH"].split(":")[0]][1]


def test_the_lock_is_pushed_before_any_civicbus_client_starts():
    """Clients never register (auto-registration off) and check the lock's ids at start: push comes first."""
    push = SERVICES["schemas-push"]
    assert push["command"] == ["schemas", "push"] and push["restart"] == "no"
    assert push["depends_on"] == {"schema-registry": {"condition": "service_healthy"}}
    assert CIVICBUS_CLIENTS
    for name, service in CIVICBUS_CLIENTS.items():
        assert service["depends_on"]["schemas-push"] == {"condition": "service_completed_successfully"}, name
    assert REGISTRY["environment"]["SCHEMA_REGISTRY_MODE_MUTABILITY"] == "true", "push switches the mode (IMPORT, READONLY)"
