"""The lag exporter against a real broker: exact figures, deleted groups, an unreachable broker,
and `civicbus lag`. Records are produced one per flush: Tansu reports the high watermark
exactly only then (DESIGN.md); with batches it understates it, and lag must still not go negative."""

import math
import subprocess
import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry, generate_latest

from civicbus.broker import EmbeddedBroker, free_port
from civicbus.kafka import apply_topics
from civicbus.lag.exporter import build_exporter
from civicbus.lag.status import Status
from civicbus.topology import TopicSpec
from tests.support import stage_env

TOPIC = "lagtest.events"


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    apply_topics(bootstrap, [TopicSpec(name, partitions)])


def produce_one_per_flush(bootstrap: str, topic: str, partition: int, count: int) -> int:
    """Produce `count` records; return the true end offset (last delivered offset + 1)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    delivered = []
    for _ in range(count):
        producer.produce(topic, b"x", partition=partition, on_delivery=lambda err, msg: delivered.append(msg.offset()))
        producer.flush(10)
    assert len(delivered) == count
    return delivered[-1] + 1


def commit(bootstrap: str, group: str, offsets: dict[tuple[str, int], int]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    consumer.close()


def test_exporter_lag_equals_the_true_lag_and_never_goes_negative(bus):
    topic, group = bus.topology.name(TOPIC), bus.topology.group("dept.police")
    create_topic(bus.bootstrap, topic, 3)
    ends = {p: produce_one_per_flush(bus.bootstrap, topic, p, n) for p, n in ((0, 12), (1, 5))}
    commit(bus.bootstrap, group, {(topic, 0): 4, (topic, 1): 5})
    exporter = build_exporter(bus.settings, bus.bootstrap, window=2)
    report = exporter.poll()
    assert report.up, report.error
    (found,) = report.groups  # only this test's namespace
    assert found.group == group
    lags = {(p.topic, p.partition): p.lag for p in found.partitions}
    assert lags == {(topic, 0): ends[0] - 4, (topic, 1): ends[1] - 5}  # partition 2: never committed, not reported
    assert (found.max_lag, found.sum_lag) == (ends[0] - 4, ends[0] - 4 + ends[1] - 5)

    # Batched records: Tansu may understate the end; the lag is then smaller, never negative.
    producer = Producer({"bootstrap.servers": bus.bootstrap, "linger.ms": 50})
    for _ in range(50):
        producer.produce(topic, b"y", partition=1)
    producer.flush(10)
    commit(bus.bootstrap, group, {(topic, 1): ends[1] + 50})
    report = exporter.poll()
    partition_1 = next(p for p in report.groups[0].partitions if p.partition == 1)
    assert partition_1.lag == 0.0 and partition_1.lag_seconds == 0.0


def test_log_start_offsets_are_read_once_a_minute_and_for_a_new_partition_at_once(bus, monkeypatch):
    """Every ListOffsets makes the embedded broker list each partition's batches: the log starts,
    which move only with retention, are not asked for at every poll."""
    topic, group = bus.topology.name(TOPIC), bus.topology.group("dept.transport")
    create_topic(bus.bootstrap, topic, 2)
    produce_one_per_flush(bus.bootstrap, topic, 0, 3)
    commit(bus.bootstrap, group, {(topic, 0): 1})
    exporter = build_exporter(bus.settings, bus.bootstrap, window=2)
    asked: list[tuple[str, set]] = []
    list_offsets = exporter.reader._list_offsets
    monkeypatch.setattr(exporter.reader, "_list_offsets", lambda tps, spec: asked.append((type(spec).__name__, set(tps))) or list_offsets(tps, spec))
    earliest = lambda: [tps for spec, tps in asked if spec == "EarliestSpec" and tps]  # noqa: E731

    assert exporter.poll().up and earliest() == [{(topic, 0)}]
    assert exporter.poll().up and earliest() == [{(topic, 0)}]  # not again
    commit(bus.bootstrap, group, {(topic, 0): 1, (topic, 1): 0})  # a partition the exporter has not seen
    report = exporter.poll()
    assert earliest() == [{(topic, 0)}, {(topic, 1)}]
    assert {(p.topic, p.partition): p.lag for p in report.groups[0].partitions} == {(topic, 0): 2, (topic, 1): 0}
    exporter.reader._earliest_read_at -= exporter.reader.earliest_every_s  # a minute later
    exporter.poll()
    assert earliest()[-1] == {(topic, 0), (topic, 1)}


def test_time_lag_grows_while_nothing_is_consumed_and_a_deleted_group_disappears(bus):
    topic, group = bus.topology.name(TOPIC), bus.topology.group("dept.health")
    create_topic(bus.bootstrap, topic, 1)
    produce_one_per_flush(bus.bootstrap, topic, 0, 3)
    commit(bus.bootstrap, group, {(topic, 0): 1})
    exporter = build_exporter(bus.settings, bus.bootstrap, window=3)
    reports = []
    for _ in range(3):
        reports.append(exporter.poll())
        produce_one_per_flush(bus.bootstrap, topic, 0, 2)
    time_lags = [r.groups[0].partitions[0].lag_seconds for r in reports]
    assert math.isnan(time_lags[0])  # one point: too few to estimate, as kafka-lag-exporter
    # offset 1 was written before the first poll: its estimated age is at least the time since then
    assert all(time_lags[k] >= reports[k].time - reports[0].time > 0 for k in (1, 2))
    assert reports[-1].groups[0].status is Status.STOPPED  # no member, offset frozen, lag > 0

    admin = AdminClient({"bootstrap.servers": bus.bootstrap})
    admin.delete_consumer_groups([group])[group].result()
    report = exporter.poll()
    assert report.up and report.groups == ()
    registry = CollectorRegistry()
    registry.register(exporter)
    assert group not in generate_latest(registry).decode()


def test_unreachable_broker_reports_up_0_and_recovers(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        create_topic(broker.bootstrap, TOPIC, 1)
        end = produce_one_per_flush(broker.bootstrap, TOPIC, 0, 4)
        commit(broker.bootstrap, "dept.transport", {(TOPIC, 0): 1})
        from civicbus.settings import Settings

        exporter = build_exporter(Settings(bootstrap=broker.bootstrap), broker.bootstrap, window=2)
        exporter.reader.timeout_s = 2.0
        registry = CollectorRegistry()
        registry.register(exporter)
        assert exporter.poll().up
        broker.freeze()
        try:
            down = exporter.poll()
            text = generate_latest(registry).decode()
        finally:
            broker.thaw()
        assert not down.up and down.error
        assert "civicbus_lag_exporter_up 0.0" in text and "kafka_consumergroup_group_lag{" not in text
        back = exporter.poll()
        assert back.up and back.group("dept.transport").sum_lag == end - 1
        assert "civicbus_lag_exporter_up 1.0" in generate_latest(registry).decode()


def test_civicbus_lag_prints_a_table_and_fails_clearly_without_a_broker(bus):
    topic, group = bus.topology.name(TOPIC), bus.topology.group("dept.market")
    create_topic(bus.bootstrap, topic, 1)
    end = produce_one_per_flush(bus.bootstrap, topic, 0, 6)
    commit(bus.bootstrap, group, {(topic, 0): 2})
    command = [sys.executable, "-m", "civicbus.cli", "lag", "--samples", "2", "--interval", "0.2"]
    result = subprocess.run(command, env=stage_env(bus), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split()[:3] == ["GROUP", "STATE", "STATUS"]
    # two polls, nobody in the group, the offset did not move while records wait: STOPPED
    assert row.split()[:8] == [group, "EMPTY", "STOPPED", topic, "0", "2", str(end), str(end - 2)]

    nobody = {**stage_env(bus), "CIVICBUS_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    result = subprocess.run(command[:-4] + ["--samples", "1"], env=nobody, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Kafka unreachable" in result.stderr
