"""`civicbus up --simulate`: the whole embedded stack from one command, stopped with Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid

import httpx
from confluent_kafka import Consumer, TopicPartition

from civicbus.broker import free_port
from tests.support import wait_for


def test_up_runs_the_stack_with_simulator_and_stops_cleanly_on_ctrl_c(tmp_path):
    broker_port, metrics_port, http_port, registry_port = free_port(), free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("CIVICBUS_BOOTSTRAP", "CIVICBUS_NAMESPACE")}
    log = open(tmp_path / "up.log", "w+b")
    up = subprocess.Popen(
        [sys.executable, "-m", "civicbus.cli", "up", "--broker-port", str(broker_port),
         "--metrics-port", str(metrics_port), "--http-port", str(http_port), "--registry-port", str(registry_port), "--simulate", "20"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    output = lambda: (tmp_path / "up.log").read_text(errors="replace")
    try:
        wait_for(lambda: "Ctrl-C stops everything" in output(), 60, "the stack to start")
        assert f"127.0.0.1:{broker_port}" in output() and f"http://127.0.0.1:{http_port}" in output()
        wait_for(lambda: _gateway_answers(http_port), 60, "the gateway's /healthz")
        consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{broker_port}", "group.id": uuid.uuid4().hex})
        topics = [t for t in consumer.list_topics(timeout=10).topics if t.startswith("civic.feed.")]
        consumer.assign([TopicPartition(t, 0, 0) for t in topics])
        records = []

        def received_enough():
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                records.append(message)
            return len(records) >= 30

        wait_for(received_enough, 60, "30 feed records")
        consumer.close()
        from civicbus.context import BusContext
        from civicbus.settings import Settings

        ctx = BusContext(Settings())
        for record in records:
            event = ctx.serde.decode(record.value(), record.topic())
            department = record.topic().removeprefix("civic.feed.")
            receivers = [d.department for d in ctx.policy.get().deliveries(event)]  # dispatched or granted
            assert department in receivers, (department, event["targets"], receivers)
            assert dict(record.headers())["ce_type"] == event["type"].encode()
        # the served registry resolves the feed's schema ids; records name their schema there
        registry = f"http://127.0.0.1:{registry_port}"
        assert "registry   pid" in output() and registry in output()
        dataschema = dict(records[0].headers())["ce_dataschema"].decode()
        assert dataschema.startswith(f"{registry}/subjects/civicbus.events.")
        schema_id = int.from_bytes(records[0].value()[1:5], "big")
        assert httpx.get(dataschema).json()["id"] == schema_id and httpx.get(f"{registry}/schemas/ids/{schema_id}").status_code == 200
        # the live view: events/s per department, and lag per consumer group from the exporter
        wait_for(lambda: re.search(r"^citymgmt +[0-9.]+ +[0-9.]+$", output(), re.M), 30, "the live view's rates")
        wait_for(lambda: re.search(r"^civicbus-fanout +(OK|WARNING) ", output(), re.M), 30, "the live view's lag")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert re.search(r'kafka_consumergroup_group_lag\{[^}]*group="civicbus-fanout"', metrics), metrics[-2000:]
        assert "civicbus_lag_exporter_up 1.0" in metrics and "civicbus_published_total{" in metrics
    finally:
        up.send_signal(signal.SIGINT)
        returncode = up.wait(60)
    assert returncode == 0, output()[-3000:]
    assert "stopped    fanout" in output()


def _gateway_answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json() == {"status": "ok"}
    except httpx.HTTPError:
        return False
