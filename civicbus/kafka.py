"""Thin helpers over confluent-kafka: client configs and topic administration.

Client settings that every component shares live here, so a stage never hand-writes them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec

from civicbus.settings import Settings
from civicbus.topology import TopicSpec


# How long a follower's fetch waits (TopicFollower).
FOLLOWER_FETCH_WAIT_MS = 500
# How long a department's feed reader waits (the subscriber SDK, `tail`, the gateway) while the
# broker is quick: on the embedded broker every consumer sends a fetch per wait whatever the
# traffic (civicbus.quirks, 1), and a city has a reader per department, so readers wait ten times
# a stage's 10 ms; more once listing the feed takes longer (civicbus.quirks, 10).
FEED_READER_FETCH_WAIT_MS = 100


def security_config(settings: Settings | None = None) -> dict:
    """librdkafka settings to authenticate to a secured cluster (SASL/SCRAM in docker-compose.yml).

    Empty unless CIVICBUS_KAFKA_SECURITY_PROTOCOL is set: the embedded broker has no security.
    """
    settings = settings or Settings()
    if not settings.kafka_security_protocol:
        return {}
    config = {"security.protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL"):
        config.update({
            "sasl.mechanism": settings.kafka_sasl_mechanism,
            "sasl.username": settings.kafka_sasl_username or "",
            "sasl.password": settings.kafka_sasl_password or "",
        })
    return config


def make_admin(bootstrap: str, **extra) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, **security_config(), **extra})


def producer_config(bootstrap: str, **extra) -> dict:
    """Idempotent, acks=all: the broker never holds a record twice from one producer session."""
    return {
        "bootstrap.servers": bootstrap,
        **security_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        **extra,
    }


def consumer_config(settings: Settings, bootstrap: str, group_id: str, **extra) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        **security_config(settings),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 6),
        "fetch.wait.max.ms": settings.fetch_wait_max_ms,
        **extra,
    }


def make_producer(bootstrap: str, **extra) -> Producer:
    return Producer(producer_config(bootstrap, **extra))


def make_consumer(settings: Settings, bootstrap: str, group_id: str, **extra) -> Consumer:
    return Consumer(consumer_config(settings, bootstrap, group_id, **extra))


def partition_offsets(admin: AdminClient, topics: Iterable[str], spec: OffsetSpec,
                      timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
    """Every partition of `topics` with its offset by `spec` (OffsetSpec.earliest(), .latest(), or
    .for_timestamp(ms): -1 where no record is that recent), in one ListOffsets. KeyError names a
    topic the broker does not have."""
    metadata = admin.list_topics(timeout=timeout_s).topics
    return offsets_of(admin, [TopicPartition(topic, p) for topic in topics for p in metadata[topic].partitions], spec, timeout_s)


def offsets_of(admin: AdminClient, partitions: Iterable[TopicPartition], spec: OffsetSpec,
               timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
    """Each of `partitions` with its offset by `spec`, in one ListOffsets."""
    request = {TopicPartition(tp.topic, tp.partition): spec for tp in partitions}
    if not request:
        return {}
    answers = admin.list_offsets(request, request_timeout=timeout_s)
    return {(tp.topic, tp.partition): answer.result().offset for tp, answer in answers.items()}


def read_to_end(consumer: Consumer, on_record: Callable[[Message], None], ends: dict[tuple[str, int], int],
                timeout_s: float = 60.0) -> None:
    """Hand every record of the consumer's assignment to `on_record`, at least up to where each
    partition ended when the read began (`ends`, each partition's watermark as listed then, before
    the consumer was assigned: a request queues behind a fetch in flight, which the embedded broker
    holds for its whole wait).

    A partition that was empty when the read began is read already: waiting for its EOF would cost
    a fetch wait at every start of a fresh stack. Any other is read once partition EOF is reported
    (the consumer needs `enable.partition.eof`) or once a record at or past its last batch as
    listed when the read began has been handed over, with everything fetched alongside it: on the
    embedded broker a reader in step with a steady writer is never told EOF, and the listed
    watermark stops at the last batch's first record (civicbus.quirks, 5 and 11). TimeoutError
    names the partitions not read to their end in time.
    """
    last_batch = {partition: end - 1 for partition, end in ends.items()}
    pending = {partition for partition, end in ends.items() if end > 0}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None:
            continue
        partition = (message.topic(), message.partition())
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                pending.discard(partition)
            continue
        on_record(message)
        if message.offset() >= last_batch[partition]:
            pending.discard(partition)
    if pending:
        raise TimeoutError(f"not read to the end within {timeout_s:.0f}s: {sorted(pending)}")
    # the rest of the batches those last records came in: a fetch hands a batch over whole
    while (message := consumer.poll(0)) is not None:
        if not message.error():
            on_record(message)


class TopicFollower:
    """Reads every partition of `topics` from the start into `apply`, then follows them on a daemon
    thread; never commits. `catch_up` blocks until everything the topics held when it was called
    is applied; `start` follows from there until `stop`.

    Its fetches wait FOLLOWER_FETCH_WAIT_MS: a follower (master data, the case router) is not on
    an event's path, and an idle consumer fetching every 10 ms costs the broker a request each
    time for nothing. `client_config` is added to its consumer's (a stage's statistics callback).
    """

    def __init__(self, settings: Settings, bootstrap: str, group: str, topics: list[str],
                 apply: Callable[[Message], None], name: str, **client_config):
        self._apply = apply
        self._consumer = make_consumer(settings, bootstrap, group, **{"enable.partition.eof": True,
                                                                     "fetch.wait.max.ms": FOLLOWER_FETCH_WAIT_MS, **client_config})
        metadata = self._consumer.list_topics(timeout=10).topics
        self._partitions = [TopicPartition(t, p, 0) for t in topics for p in metadata[t].partitions]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=name, daemon=True)

    def catch_up(self, timeout_s: float = 60.0) -> None:
        ends = {(tp.topic, tp.partition): self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self._partitions}
        self._consumer.assign(self._partitions)  # after the listing (see read_to_end)
        read_to_end(self._consumer, self._apply, ends, timeout_s)

    def start(self) -> None:
        """Follow from where `catch_up` stopped (from the start when it was not called)."""
        if not self._consumer.assignment():
            self._consumer.assign(self._partitions)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._consumer.close()

    def _follow(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.05)  # a local wait (fetching is librdkafka's thread): how long `stop` waits
            if message is not None and not message.error():
                self._apply(message)


class AsyncProducer:
    """A producer for asyncio code (the HTTP gateway): `await send(...)` returns once the broker
    acknowledged the record, and raises KafkaException if it refused it or did not answer in time.
    A background thread serves librdkafka's delivery callbacks."""

    def __init__(self, bootstrap: str, timeout_s: float = 30.0):
        self._producer = make_producer(bootstrap, **{"message.timeout.ms": int(timeout_s * 1000), "linger.ms": 1})
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._serve_callbacks, name="async-producer", daemon=True)
        self._poller.start()

    def _serve_callbacks(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def send(self, topic: str, value: bytes, key: bytes | None = None, headers: list | None = None) -> None:
        loop = asyncio.get_running_loop()
        acked: asyncio.Future = loop.create_future()

        def settle(err: KafkaError | None) -> None:
            if acked.done():
                return
            if err is None:
                acked.set_result(None)
            else:
                acked.set_exception(KafkaException(err))

        try:
            self._producer.produce(topic, value, key, headers=headers, on_delivery=lambda err, _msg: loop.call_soon_threadsafe(settle, err))
        except BufferError as e:  # the local queue is full: the broker has been away for a while
            raise KafkaException(KafkaError(KafkaError._QUEUE_FULL, str(e))) from None
        await acked

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout_s`), then release the librdkafka handle now, not
        when the last reference goes: a handle left behind keeps reconnecting to its broker."""
        self._stop.set()
        self._poller.join()
        self._producer.flush(timeout_s)
        self._producer.close()


@dataclass(frozen=True)
class TopicsReport:
    created: list[str]
    unchanged: list[str]
    differs: list[str]  # human-readable: "topic: partitions 1 != 4", "topic: cleanup.policy ..."


def apply_topics(bootstrap: str, specs: list[TopicSpec], timeout_s: float = 15.0) -> TopicsReport:
    """Create missing topics; report (never alter) existing ones that differ. Idempotent."""
    admin = make_admin(bootstrap)
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [s for s in specs if s.name not in existing]
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=s.config) for s in missing],
            operation_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
            except Exception as e:  # another process created it in between: fine
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise
    present = [s for s in specs if s.name in existing]
    differs = _differences(admin, present, existing, timeout_s)
    unchanged = [s.name for s in present if not any(d.startswith(s.name + ":") for d in differs)]
    return TopicsReport(created=created, unchanged=unchanged, differs=differs)


def _differences(admin: AdminClient, specs: list[TopicSpec], existing: dict, timeout_s: float) -> list[str]:
    differs = []
    for s in specs:
        actual = len(existing[s.name].partitions)
        if actual != s.partitions:
            differs.append(f"{s.name}: partitions {actual}, expected {s.partitions}")
    if not specs:
        return differs
    futures = admin.describe_configs([ConfigResource("topic", s.name) for s in specs])
    by_name = {s.name: s for s in specs}
    for resource, future in futures.items():
        try:
            actual_config = {k: v.value for k, v in future.result(timeout=timeout_s).items()}
        except Exception:
            continue  # a broker that cannot describe configs: partitions were still compared
        for key, wanted in by_name[resource.name].config.items():
            if key in actual_config and actual_config[key] != wanted:
                differs.append(f"{resource.name}: {key}={actual_config[key]}, expected {wanted}")
    return differs
