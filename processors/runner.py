"""The consume-transform-produce loop every pipeline stage runs in.

A stage is an object with a `name`, the topics it reads and a `process(message) -> outputs`
function; this loop owns everything Kafka: batching, commits, the one catch of unexpected errors
(a dead letter with PROCESSING_ERROR) and the stage metrics. It commits a batch one of two ways:
- exactly once (`Stage.exactly_once`, the default): the outputs and the input offsets in one Kafka
  transaction (send_offsets_to_transaction): a crash before the commit replays the batch, a crash
  after it replays nothing. The case stage needs it: its state log must say exactly what the
  committed input decided.
- at least once: the outputs are flushed, then the input offsets committed. A crash between the
  two replays the batch. Ingest, which holds no state, writes again what it wrote once, with the
  same event ids, which every reader downstream drops (civicbus.ids); the fan-out writes only
  what its feeds and audit log do not show yet (processors.fanout). A transaction costs five
  broker round trips a commit (AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn, and
  the flush) where a flush costs one, a transaction marker in every partition it wrote, and on
  the embedded broker about a millisecond of its time per partition (measured at 100 events/s:
  64 % of ingest's time was spent committing, and an event waited 98 ms, median, before ingest
  wrote it).

Transactions are spaced (CommitSpacing). Each commit costs the broker a record batch and a
transaction marker in every partition the transaction wrote, and the embedded broker's cost per
fetch grows with the batches a partition holds (README, broker facts), so under a trickle one
transaction per record grows the logs fastest for the least traffic. A record that arrives after
a quiet spell is committed at once; only records arriving faster than that wait, at most one
interval, for the open transaction to close. The producer lingers as long, so a transaction
writes one batch per partition.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from civicbus.context import BusContext
from civicbus.dlq import DeadLetter, Reason
from civicbus.group_input import GroupInput
from civicbus.kafka import producer_config
from civicbus.metrics import (KAFKA_REQUESTS, OFFSET_COMMIT_FAILURES, PRODUCED_BATCHES, REJECTED, STAGE_BATCH_SECONDS,
                              STAGE_FETCH_WAIT, STAGE_RECORDS, BatchedMetrics, labelled)
from civicbus.quirks import EMBEDDED_COMMIT_SPACING_PER_BATCH_US, is_embedded
from civicbus.settings import Settings
from civicbus.signing import SIGNATURE_HEADER, RecordSigner
from civicbus.topology import DLQ

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None  # None: the producer's partitioner picks by key


class Stage:
    """Base of the confluent-kafka stages: subclasses set `name` and implement the two below."""

    name: str
    exactly_once = True  # False: outputs flushed, then offsets committed (see the module docstring)

    def subscription(self) -> list[str]:
        raise NotImplementedError

    def process(self, message: Message) -> Iterable[Output]:
        raise NotImplementedError

    @functools.cached_property
    def counts(self) -> BatchedMetrics:
        """What `process` counts per event, written to the metrics when its batch commits."""
        return BatchedMetrics()

    def prepare(self, ctx: BusContext) -> None:
        """Called once before consuming (start helpers)."""

    def assigned(self, partitions: list[TopicPartition]) -> None:
        """The group gave this worker these input partitions: restore their state."""

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """These input partitions went to another worker (after the open transaction closed)."""

    def begin_batch(self) -> None:
        """Called before each batch: per-batch work such as taking the policy in force."""

    def before_commit(self, producer: Producer) -> None:
        """Called before the batch commits (inside its transaction), after its outputs were produced."""

    def after_commit(self) -> None:
        """The batch committed: its effects are durable."""

    def after_abort(self) -> None:
        """The batch's transaction was aborted: forget what it did; its input will be replayed."""

    def close(self) -> None:
        """Called once when the loop ends (stop helpers started by prepare)."""


def dead_letter_output(ctx: BusContext, stage: str, message: Message, reason: Reason, detail: str) -> Output:
    labelled(REJECTED, stage, reason.value).inc()
    letter = DeadLetter(reason, detail, stage, message.topic(), message.partition(), message.offset(), message.key(), message.value())
    return Output(ctx.topology.name(DLQ), letter.value, letter.key, letter.headers())


class ClientStatistics:
    """A client's librdkafka statistics (`stats_cb`) as civicbus_kafka_requests_total, by API, and
    civicbus_produced_batches_total, by topic: the requests and record batches a stage costs the
    broker, which the embedded broker pays for as its logs grow (civicbus.quirks, 1 and 2).

    librdkafka reports requests as totals since the client started (per broker connection) and
    batches per statistics window, so the first are counted by difference and the second summed.
    """

    def __init__(self, settings: Settings, stage: str, client: str):
        self.settings = settings
        self.stage = stage
        self.client = client
        self._sent: dict[tuple[str, str], int] = {}  # (broker connection, API) -> requests reported so far

    def config(self) -> dict:
        """What to add to the client's configuration; nothing when statistics are off."""
        interval = self.settings.client_statistics_interval_ms
        return {"statistics.interval.ms": interval, "stats_cb": self.update} if interval else {}

    def update(self, stats_json: str) -> None:
        stats = json.loads(stats_json)
        for connection, broker in stats.get("brokers", {}).items():
            for request, total in broker.get("req", {}).items():
                sent = total - self._sent.get((connection, request), 0)
                if sent > 0:
                    labelled(KAFKA_REQUESTS, self.stage, self.client, request).inc(sent)
                    self._sent[(connection, request)] = total
        if stats.get("type") != "producer":
            return  # a consumer's topic figures are of what it fetched
        for topic, figures in stats.get("topics", {}).items():
            batches = figures.get("batchcnt", {}).get("cnt", 0)
            if batches:
                labelled(PRODUCED_BATCHES, self.stage, topic).inc(batches)


class CommitSpacing:
    """The least time between two commits of a stage.

    On Apache Kafka a fixed `commit_interval_ms`. On the embedded broker, whose every fetch that
    returns data lists all the batches of its partition (civicbus.quirks, 2), the interval also
    grows with the batches this stage has written to the fullest partition it writes, by
    `commit_spacing_per_batch_us` each. A reader then pays about the same per second however long
    the stack has run, and a partition reaches 20,000 batches after about an hour of steady
    traffic rather than in minutes: a fresh stack answers in milliseconds, and one that has run
    for an hour commits every few hundred.
    """

    def __init__(self, minimum_ms: int, maximum_ms: int, per_batch_us: float):
        self.minimum_s = minimum_ms / 1000
        self.maximum_s = max(minimum_ms, maximum_ms) / 1000
        self.per_batch_s = per_batch_us / 1e6
        self.batches: Counter[tuple[str, int]] = Counter()

    def committed(self, partitions: Iterable[tuple[str, int]], transactional: bool) -> None:
        """A batch that wrote `partitions` committed: a record batch in each, and a transaction
        marker if it was a transaction."""
        for partition in partitions:
            self.batches[partition] += 2 if transactional else 1

    @property
    def interval_s(self) -> float:
        fullest = max(self.batches.values(), default=0)
        return min(self.maximum_s, max(self.minimum_s, fullest * self.per_batch_s))


class StageRunner:
    """Runs a Stage: records are processed as they are fetched, into a batch (a transaction, for a
    stage that needs one) that commits once the commit spacing has passed since the previous
    commit (at once after a quiet spell) or `batch_size` records are in it. See the module
    docstring for why commits are spaced."""

    def __init__(self, stage: Stage, ctx: BusContext, instance: str = "0", batch_size: int = 2000,
                 batch_timeout_s: float = 0.05):
        self.stage = stage
        self.ctx = ctx
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.spacing: CommitSpacing | None = None  # set in run(), which knows the broker
        self._written: set[tuple[str, int]] = set()  # partitions the open transaction wrote
        self._consumed: dict[tuple[str, int], int] = {}  # partition -> offset after the last record it read
        self.group_id = ctx.topology.stage_group(stage.name)
        self.transactional_id = f"{self.group_id}.{instance}"
        self._producer: Producer | None = None
        self._input: GroupInput | None = None
        self._open: list[Message] = []  # the records of the open transaction
        self._started = 0.0  # perf_counter when the open transaction began
        self._last_commit = 0.0
        self._failed_delivery: KafkaException | None = None  # at least once: an output the producer gave up on
        self.signer = RecordSigner.of_stack(ctx.settings)

    def run(self, stop: threading.Event) -> None:
        settings = self.ctx.settings
        embedded = is_embedded(self.ctx.bootstrap)
        per_batch_us = settings.commit_spacing_per_batch_us
        if per_batch_us is None:
            per_batch_us = EMBEDDED_COMMIT_SPACING_PER_BATCH_US if embedded else 0.0
        self.spacing = CommitSpacing(settings.commit_interval_ms, settings.commit_interval_max_ms, per_batch_us)
        linger_ms = max(2, int(self.spacing.maximum_s * 1000))  # a commit flushes: one batch per partition
        statistics = ClientStatistics(settings, self.stage.name, "producer").config()
        if self.stage.exactly_once:
            self._producer = Producer(producer_config(
                self.ctx.bootstrap, **{"transactional.id": self.transactional_id, "transaction.timeout.ms": 60000, "linger.ms": linger_ms},
                **statistics))
            self._producer.init_transactions()  # fences a previous incarnation and aborts its open transaction
        else:
            self._producer = Producer(producer_config(self.ctx.bootstrap, **{"linger.ms": linger_ms}, **statistics))
        self.stage.prepare(self.ctx)
        self._input = GroupInput(self.ctx, self.stage.name, self.group_id, self.stage.subscription(), embedded,
                                 on_assigned=self.stage.assigned, on_revoked=self._on_revoke, on_commit=self._offsets_committed,
                                 client_config=lambda: ClientStatistics(settings, self.stage.name, "consumer").config(),
                                 on_wait=lambda ms: labelled(STAGE_FETCH_WAIT, self.stage.name).set(ms / 1000))
        log.info("stage %s running as %s", self.stage.name, self.transactional_id)
        try:
            while not stop.is_set():
                self._process(self._take())
                if self._open and self._commit_due():
                    self._commit()
                if not self._open:
                    self._input.adapt()
            if self._open:
                self._commit(wait=True)  # what was processed before the stop is delivered, not replayed
        finally:
            self._input.close()
            self._producer.flush(10)
            self.stage.close()
            log.info("stage %s stopped", self.stage.name)

    def _commit_due(self) -> bool:
        now = time.perf_counter()
        return len(self._open) >= self.batch_size or now - self._last_commit >= self.spacing.interval_s

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        if self._open:
            self._commit(wait=True)  # while the partitions are still ours to commit offsets for
        self.stage.revoked(partitions)

    def _take(self) -> list[Message]:
        """What is fetched already, at most what fits the open transaction, after waiting for the
        first record up to the batch timeout, or until the open transaction is due to commit
        (consume(n, timeout) would hold a trickle back until n arrived)."""
        wait = self.batch_timeout_s
        if self._open:
            wait = max(0.0, min(wait, self._last_commit + self.spacing.interval_s - time.perf_counter()))
        return self._input.take(wait, max(1, self.batch_size - len(self._open)))

    def _process(self, messages: list[Message]) -> None:
        if not messages:
            return
        try:
            for message in messages:
                if not self._open:
                    self._begin()
                self._open.append(message)
                self._consumed[(message.topic(), message.partition())] = message.offset() + 1
                for out in self._safe_process(message):
                    self._produce(out)
            self._producer.poll(0)
        except KafkaException as e:
            self._abort(e)

    def _begin(self) -> None:
        self.stage.begin_batch()
        if self.stage.exactly_once:
            self._producer.begin_transaction()
        self._started = time.perf_counter()

    def _commit(self, wait: bool = False) -> None:
        """Commit the open batch; `wait`: at least once, also for the offsets' commit (on a stop
        or a revocation, when another worker starts from them)."""
        producer, consumer, count = self._producer, self._input.member, len(self._open)
        # only the partitions this batch read: each one costs the broker work at commit
        positions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in self._consumed.items()]
        try:
            self.stage.before_commit(producer)
            if self.stage.exactly_once:
                producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata())
                producer.commit_transaction()
            else:
                self._flush_then_commit(positions, wait)
        except KafkaException as e:
            self._abort(e)
            return
        finally:
            self._last_commit = time.perf_counter()
        producer.poll(0)  # the last delivery reports: which partitions the batch wrote
        self.spacing.committed(self._written, self.stage.exactly_once)
        self._written, self._consumed = set(), {}
        self._open = []
        self.stage.after_commit()
        self.stage.counts.write()
        labelled(STAGE_RECORDS, self.stage.name).inc(count)
        labelled(STAGE_BATCH_SECONDS, self.stage.name).observe(self._last_commit - self._started)

    def _flush_then_commit(self, positions: list[TopicPartition], wait: bool) -> None:
        """At least once: every output acknowledged, then the offsets (asynchronously unless
        `wait`: a commit lost to a crash only replays records whose outputs are written already)."""
        while self._producer.flush(1.0):
            log.warning("stage %s: %d outputs not acknowledged yet; waiting", self.stage.name, len(self._producer))
        if self._failed_delivery is not None:
            raise self._failed_delivery  # not retriable any more: exit, and the supervisor's restart replays the batch
        self._input.member.commit(offsets=positions, asynchronous=not wait)

    def _offsets_committed(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's answer to an offset commit: a failure is logged and counted, not raised, since
        the next commit covers the same partitions (and a crash before it replays from the last good one)."""
        if error is not None and error.code() == KafkaError._NO_OFFSET:
            return  # nothing new to commit
        failed = [tp for tp in partitions if tp.error is not None]
        if error is None and not failed:
            return
        labelled(OFFSET_COMMIT_FAILURES, self.stage.name).inc()
        detail = "; ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}: {tp.error.str()}" for tp in failed) or error.str()
        log.warning("stage %s: an offset commit failed (%s); the next commit covers it", self.stage.name, detail)

    def _abort(self, error: KafkaException) -> None:
        if not self.stage.exactly_once or not error.args[0].txn_requires_abort():
            raise error  # fatal (fenced, broker gone for good): exit and let the supervisor restart us
        log.warning("stage %s aborting batch: %s", self.stage.name, error)
        if self._open:
            self._producer.abort_transaction()
        self._open = []
        self._written, self._consumed = set(), {}
        self.stage.counts.discard()
        self.stage.after_abort()
        self._input.rewind()

    def _produce(self, out: Output) -> None:
        """Produce, signed when bound for an internal topic (civicbus.signing); delivery reports
        (which note the partition written) are served once per batch, and here when librdkafka's
        queue is full."""
        headers = self.signer.sign(out.topic, out.key, out.value, out.headers) if self.signer.covers(out.topic) else out.headers
        partition = {} if out.partition is None else {"partition": out.partition}
        while True:
            try:
                self._producer.produce(out.topic, out.value, out.key, headers=headers, on_delivery=self._delivered, **partition)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _delivered(self, error, message: Message) -> None:
        if error is None:
            self._written.add((message.topic(), message.partition()))
        else:
            self._failed_delivery = KafkaException(error)

    def _safe_process(self, message: Message) -> Iterable[Output]:
        if self.signer.covers(message.topic()) and not self.signer.verifies_message(message):
            detail = f"no valid {SIGNATURE_HEADER} header: not written by a stage of this stack, or changed since"
            return [dead_letter_output(self.ctx, self.stage.name, message, Reason.FORGED, detail)]
        try:
            return list(self.stage.process(message))
        except Exception as e:  # a bug or an unforeseen input must not stop the city's pipeline
            log.exception("stage %s failed on %s[%d]@%d", self.stage.name, message.topic(), message.partition(), message.offset())
            return [dead_letter_output(self.ctx, self.stage.name, message, Reason.PROCESSING_ERROR, f"{type(e).__name__}: {e}")]
