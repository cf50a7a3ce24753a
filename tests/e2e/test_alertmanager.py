"""The alert chain for real: a stalled consumer group -> the lag exporter -> Prometheus with
civicbus's rules -> Alertmanager with ops/alertmanager/alertmanager.yml -> a webhook (a small HTTP
server here). Test copies: the rules with `for: 1s`, the Alertmanager config with the webhook
URLs pointing at this test and short grouping waits; the routing tree is the production one."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml
from confluent_kafka import Consumer, Producer

from tests.prometheus_support import OPS, REPO, AlertmanagerServer, PrometheusServer, require_binary, serve_lag_exporter
from tests.support import wait_for

BACKLOG = 5


class Webhook:
    """Collects what Alertmanager POSTs, by path (one path per receiver)."""

    def __init__(self):
        self.received: list[tuple[str, dict]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, alertname: str, group: str) -> list[tuple[str, dict]]:
        return [(path, alert) for path, payload in self.received for alert in payload["alerts"]
                if alert["labels"].get("alertname") == alertname and alert["labels"].get("group") == group]


def test_routing_config_is_valid_and_compose_wires_prometheus_to_alertmanager():
    result = subprocess.run([require_binary("amtool"), "check-config", str(OPS / "alertmanager" / "alertmanager.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    prometheus = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    (target,) = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and f"{port}:{port}" in services[host]["ports"]
    assert "./ops/alertmanager:/etc/alertmanager:ro" in services[host]["volumes"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in services[host]["command"]


def test_a_stalled_consumers_alert_reaches_the_on_call_webhook(bus, tmp_path):
    webhook = Webhook()
    rules = yaml.safe_load((OPS / "prometheus" / "rules" / "civicbus.rules.yml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "1s"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    routing = yaml.safe_load((OPS / "alertmanager" / "alertmanager.yml").read_text())
    routing["route"].update(group_wait="1s", group_interval="1s")
    for receiver in routing["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{webhook.url}/{receiver['name']}"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(routing))

    topic, group = bus.topology.feed("police"), bus.topology.group("dept.police.alerting")
    exporter, port, metrics_server = serve_lag_exporter(bus)
    producer = Producer({"bootstrap.servers": bus.bootstrap, "linger.ms": 0})
    consumer = Consumer({"bootstrap.servers": bus.bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "session.timeout.ms": bus.settings.session_timeout_ms})
    consumer.subscribe([topic])
    try:
        with AlertmanagerServer(tmp_path, tmp_path / "alertmanager.yml") as alertmanager, \
                PrometheusServer(tmp_path, [f"127.0.0.1:{port}"], [str(tmp_path / "rules.yml")], [alertmanager.address]):
            producer.produce(topic, b"first", partition=0)
            producer.flush(10)

            def consumed_one() -> bool:
                message = consumer.poll(0.2)
                if message is not None and not message.error():
                    consumer.commit(message, asynchronous=False)
                    return True
                return False

            wait_for(consumed_one, 90, "the consumer to join and commit its first record")
            consumer.pause(consumer.assignment())  # connected, polling, committing nothing: stalled
            for _ in range(BACKLOG):
                producer.produce(topic, b"waiting", partition=0)
                producer.flush(10)

            def stalled_alert_arrived() -> bool:
                consumer.poll(0.2)  # keeps the member in the group
                return bool(webhook.alerts("CivicbusConsumerGroupStalled", group))

            wait_for(stalled_alert_arrived, 120, "the stalled group's alert at the webhook")
            path, alert = webhook.alerts("CivicbusConsumerGroupStalled", group)[0]
            assert path == "/on-call" and alert["status"] == "firing" and alert["labels"]["severity"] == "critical"
            assert group in alert["annotations"]["summary"]
    finally:
        consumer.close()
        metrics_server.shutdown()
        exporter.stop()
        webhook.server.shutdown()
