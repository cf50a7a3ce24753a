"""ops/: the Prometheus config and rules pass promtool (rule unit tests included), and the
dashboard and rules only name metrics that civicbus actually exports."""

import json
import re
import subprocess

from prometheus_client import REGISTRY

import civicbus.metrics  # noqa: F401  (declares the civicbus_* metrics on the default registry)
from civicbus.lag.exporter import LagReport, report_metrics
from civicbus.lag.monitor import LagMonitor
from civicbus.lag.offsets import GroupOffsets, Snapshot
from tests.prometheus_support import OPS, require_binary

METRIC = re.compile(r"\b((?:civicbus|kafka)_[a-z_]+)\b")
DASHBOARD = OPS / "grafana" / "dashboards" / "civicbus.json"
RULES = OPS / "prometheus" / "rules" / "civicbus.rules.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_prometheus_config_and_rules_are_valid():
    result = promtool("check", "config", str(OPS / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 rules found" in result.stdout + result.stderr


def test_alerting_rules_pass_their_promtool_unit_tests():
    result = promtool("test", "rules", str(OPS / "prometheus" / "tests" / "civicbus.rules.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def exported_metric_names() -> set[str]:
    snapshot = Snapshot(1.0, (GroupOffsets("g", "STABLE", True, {("t", 0): 1}),), {("t", 0): 2}, {("t", 0): 0})
    families = report_metrics(LagReport(1.0, True, 0.1, LagMonitor().update(snapshot)))
    return {f.name for f in families} | {n for n in REGISTRY._names_to_collectors if n.startswith("civicbus_")}


def test_dashboard_and_rules_name_only_metrics_civicbus_exports():
    known = exported_metric_names()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][0]["query"]["query"])
    used = {m for e in exprs for m in METRIC.findall(e)} | set(METRIC.findall(RULES.read_text()))
    assert used, "no metric names found"
    assert used <= known, f"unknown metrics: {sorted(used - known)}"
    for name in ("kafka_consumergroup_group_lag", "kafka_consumergroup_group_max_lag_seconds", "civicbus_overdue_cases",
                 "civicbus_consumergroup_status", "civicbus_published_total", "civicbus_end_to_end_latency_seconds_bucket"):
        assert any(name in e for e in exprs), f"the dashboard shows no {name}"


def test_dashboard_is_provisioned_against_the_provisioned_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = (OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {"prometheus"} and "uid: prometheus" in datasource
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
