"""Done-when of the operations issue: a real Prometheus scrapes the lag exporter and sees a
paused department consumer's lag rise, exactly, and fall back to 0 once it catches up."""

import json

from confluent_kafka import Consumer, Producer, TopicPartition

from tests.prometheus_support import OPS, PrometheusServer, serve_lag_exporter
from tests.support import wait_for

BACKLOG = 20


def test_prometheus_sees_a_paused_consumers_lag_rise_and_fall_back_to_zero(bus, tmp_path):
    topic, group = bus.topology.feed("police"), bus.topology.group("dept.police")
    exporter, port, server = serve_lag_exporter(bus)
    producer = Producer({"bootstrap.servers": bus.bootstrap, "linger.ms": 0})
    delivered: list[int] = []

    def produce(count: int) -> int:
        """One record per flush, so the embedded broker's high watermark is exact; returns the true end."""
        for _ in range(count):
            producer.produce(topic, b"event", partition=0, on_delivery=lambda err, msg: delivered.append(msg.offset()))
            producer.flush(10)
        return delivered[-1] + 1

    consumer = Consumer({
        "bootstrap.servers": bus.bootstrap, "group.id": group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "session.timeout.ms": bus.settings.session_timeout_ms,
    })
    consumer.subscribe([topic])
    lag = f'kafka_consumergroup_group_lag{{group="{group}",topic="{topic}",partition="0"}}'
    status = f'civicbus_consumergroup_status{{group="{group}",status="%s"}}'
    try:
        with PrometheusServer(tmp_path, [f"127.0.0.1:{port}"]) as prometheus:
            def consumed_and_prometheus_shows(value: float) -> bool:
                message = consumer.poll(0.2)  # also keeps the member alive while paused
                if message is not None and not message.error():
                    consumer.commit(message, asynchronous=False)
                return prometheus.values(lag) == [value]

            produce(1)
            wait_for(lambda: consumed_and_prometheus_shows(0.0), 90, "the consumer to join, commit and Prometheus to see lag 0")

            consumer.pause(consumer.assignment())
            end = produce(BACKLOG)
            committed = consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
            assert end - committed == BACKLOG
            wait_for(lambda: consumed_and_prometheus_shows(float(BACKLOG)), 60, f"Prometheus to see lag {BACKLOG}")
            # a member is there, polling, but nothing is committed while records wait
            wait_for(lambda: consumed_and_prometheus_shows(float(BACKLOG)) and prometheus.values(status % "STALLED") == [1.0],
                     60, "the group status STALLED")
            assert prometheus.values(f"kafka_consumergroup_group_max_lag{{group=\"{group}\"}}") == [float(BACKLOG)]
            assert prometheus.values(f"kafka_consumergroup_group_lag_seconds{{group=\"{group}\"}}")[0] > 0

            consumer.resume(consumer.assignment())
            wait_for(lambda: consumed_and_prometheus_shows(0.0), 60, "the consumer to catch up and Prometheus to see lag 0")
            assert prometheus.values(f"max_over_time({lag}[5m])") == [float(BACKLOG)]
            wait_for(lambda: prometheus.values(status % "OK") == [1.0], 30, "the group status OK again")
            assert prometheus.values("civicbus_lag_exporter_up") == [1.0]

            rule_groups = {g["name"] for g in prometheus.api("rules")["groups"]}
            assert rule_groups == {"civicbus-consumers", "civicbus-pipeline", "civicbus-monitoring"}
            dashboard = json.loads((OPS / "grafana" / "dashboards" / "civicbus.json").read_text())
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    prometheus.api("query", query=target["expr"].replace("$group", ".*"))  # every panel query is valid PromQL
    finally:
        consumer.close()
        server.shutdown()
        exporter.stop()
