"""Gateway tokens (hash-only storage, revocation) and the ACL plan."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType
from typer.testing import CliRunner

from civicbus import acl
from civicbus.cli import app as cli
from civicbus.tokens import TokenStore, token_hash
from civicbus.topology import Topology


def test_token_is_stable_stored_only_as_a_hash_and_revocable(tmp_path):
    store = TokenStore(tmp_path)
    token = store.issue("citymgmt")
    assert store.issue("citymgmt") == token  # "creating it if needed": printed again, unchanged
    stored = (tmp_path / "gateway-tokens.json").read_text()
    assert token not in stored and json.loads(stored)["departments"]["citymgmt"]["sha256"] == token_hash(token)
    assert (tmp_path / "token-secret").stat().st_mode & 0o077 == 0
    gateway_side = TokenStore(tmp_path)
    assert gateway_side.department_of(token) == "citymgmt"
    assert gateway_side.department_of(store.issue("police")) == "police"  # a change is seen without restart
    assert store.revoke("citymgmt")
    assert gateway_side.department_of(token) is None
    renewed = store.issue("citymgmt")
    assert renewed != token and gateway_side.department_of(renewed) == "citymgmt"


def test_token_command(tmp_path):
    runner = CliRunner()
    env = {"CIVICBUS_STATE_DIR": str(tmp_path)}
    first = runner.invoke(cli, ["token", "citymgmt"], env=env)
    again = runner.invoke(cli, ["token", "citymgmt"], env=env)
    assert first.exit_code == 0 and first.output == again.output and first.output.startswith("cbt_")
    unknown = runner.invoke(cli, ["token", "ministry"], env=env)
    assert unknown.exit_code == 2 and "unknown department 'ministry'" in unknown.output
    assert "revoked the token of citymgmt" in runner.invoke(cli, ["token", "citymgmt", "--revoke"], env=env).output
    assert TokenStore(tmp_path).department_of(first.output.strip()) is None


TOPOLOGY = Topology(departments=("citymgmt", "police", "street.dongcheng.andingmen"))


def test_a_department_writes_only_its_inbound_reads_only_its_feed_and_its_groups():
    bindings = acl.plan(TOPOLOGY)
    for department in TOPOLOGY.departments:
        mine = {(b.operation, b.resource, b.name, b.pattern) for b in bindings if b.principal == f"User:{department}"}
        assert mine == {
            ("WRITE", "topic", f"civic.in.{department}", "LITERAL"),
            ("DESCRIBE", "topic", f"civic.in.{department}", "LITERAL"),
            ("READ", "topic", f"civic.feed.{department}", "LITERAL"),
            ("DESCRIBE", "topic", f"civic.feed.{department}", "LITERAL"),
            ("READ", "group", f"dept.{department}.", "PREFIXED"),
        }
    principals = {b.principal for b in bindings}
    assert {"User:civicbus-ingest", "User:civicbus-cases", "User:civicbus-fanout", "User:civicbus-gateway", "User:civicbus-operator"} <= principals
    fanout_writes = {b.name for b in bindings if b.principal == "User:civicbus-fanout" and b.operation == "WRITE"}
    assert {"civic.feed.", "civic.audit"} <= fanout_writes
    assert not any(b.principal == "User:civicbus-ingest" and b.name.startswith("civic.feed") for b in bindings)


def test_apply_sends_every_binding_and_reports_failures():
    admin = MagicMock()
    failing = MagicMock()
    failing.result.side_effect = RuntimeError("SECURITY_DISABLED")
    admin.create_acls.side_effect = lambda bindings, request_timeout: {b: (failing if i == 0 else MagicMock()) for i, b in enumerate(bindings)}
    bindings = acl.plan(TOPOLOGY)
    failures = acl.apply(admin, bindings)
    sent = admin.create_acls.call_args.args[0]
    assert len(sent) == len(bindings) and len(failures) == 1 and "SECURITY_DISABLED" in failures[0]
    citymgmt_write = next(b for b in sent if b.principal == "User:citymgmt" and b.operation == AclOperation.WRITE)
    assert (citymgmt_write.restype, citymgmt_write.name, citymgmt_write.resource_pattern_type) == (ResourceType.TOPIC, "civic.in.citymgmt", ResourcePatternType.LITERAL)


def test_acl_plan_command_prints_bindings():
    result = CliRunner().invoke(cli, ["acl", "plan"])
    assert result.exit_code == 0 and "User:citymgmt" in result.output and "civic.in.citymgmt" in result.output


def test_acl_apply_without_external_kafka_says_the_embedded_broker_has_no_acls():
    result = CliRunner().invoke(cli, ["acl", "apply"], env={"CIVICBUS_BOOTSTRAP": ""})
    assert result.exit_code == 1 and "embedded broker (Tansu) has no ACLs: nothing applied" in result.output
