"""The consume-transform-produce loop every confluent-kafka stage runs in, exactly once.

A batch of input records is processed into output records inside one Kafka transaction
together with the input offsets (send_offsets_to_transaction): a crash before the commit
replays the batch, a crash after it replays nothing. A stage is an object with a `name`, the
topics it reads and a `process(message) -> outputs` function; this loop owns everything Kafka.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, KafkaError, KafkaException, Message, Producer, TopicPartition

from civicbus.context import BusContext
from civicbus.dlq import DeadLetter, Reason
from civicbus.kafka import make_consumer, producer_config
from civicbus.metrics import REJECTED, STAGE_BATCH_SECONDS, STAGE_RECORDS, labelled
from civicbus.signing import SIGNATURE_HEADER, RecordSigner
from civicbus.topology import DLQ

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None


class Stage:
    """Base of the confluent-kafka stages: subclasses set `name` and implement the two below."""

    name: str

    def subscription(self) -> list[str]:
        raise NotImplementedError

    def process(self, message: Message) -> Iterable[Output]:
        raise NotImplementedError

    def prepare(self, ctx: BusContext) -> None:
        """Called once before consuming (restore state)."""

    def begin_batch(self) -> None:
        """Called before each batch: per-batch work such as taking the policy in force."""

    def before_commit(self, producer: Producer) -> None:
        """Called inside the transaction, after the batch's outputs were produced."""

    def after_commit(self) -> None:
        """The batch's transaction committed: its effects are durable."""

    def after_abort(self) -> None:
        """The batch's transaction was aborted: forget what it did; its input will be replayed."""

    def close(self) -> None:
        """Called once when the loop ends (stop helpers started by prepare)."""


def dead_letter_output(ctx: BusContext, stage: str, message: Message, reason: Reason, detail: str) -> Output:
    labelled(REJECTED, stage, reason.value).inc()
    letter = DeadLetter(reason, detail, stage, message.topic(), message.partition(), message.offset(), message.key(), message.value())
    return Output(ctx.topology.name(DLQ), letter.value, letter.key, letter.headers())


class TransactionalRunner:
    """Runs a Stage, one transaction per batch of what the consumer has fetched.

    A batch is whatever is already fetched, up to `batch_size`: the loop waits up to
    `batch_timeout_s` for the first record only, never for a full batch, so a slow trickle
    travels on at once and under load batches (and the cost of a commit) grow by themselves.
    Holding a transaction open for a fixed interval instead (Kafka Streams' commit.interval.ms)
    was tried: 20 ms doubled the latency at 100 events/s (p50 37 -> 74 ms through ingest and
    fan-out) and changed nothing at 1,000/s, where batches already hold 10-50 records.
    """

    def __init__(self, stage: Stage, ctx: BusContext, instance: str = "0", batch_size: int = 2000, batch_timeout_s: float = 0.05):
        self.stage = stage
        self.ctx = ctx
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.group_id = ctx.topology.group(f"civicbus-{stage.name}")
        self.transactional_id = f"{self.group_id}.{instance}"
        self.signer = RecordSigner.of_stack(ctx.settings)

    def run(self, stop: threading.Event) -> None:
        producer = Producer(
            producer_config(
                self.ctx.bootstrap,
                **{"transactional.id": self.transactional_id, "transaction.timeout.ms": 60000, "linger.ms": 2},
            )
        )
        producer.init_transactions()  # fences a previous incarnation and aborts its open transaction
        self.stage.prepare(self.ctx)
        consumer = make_consumer(self.ctx.settings, self.ctx.bootstrap, self.group_id)
        consumer.subscribe(self.stage.subscription())
        log.info("stage %s running as %s", self.stage.name, self.transactional_id)
        try:
            while not stop.is_set():
                messages = self._take(consumer)
                if messages:
                    self._process_batch(producer, consumer, messages)
        finally:
            consumer.close()  # leave the group now, so a successor is assigned at once
            producer.flush(10)
            self.stage.close()
            log.info("stage %s stopped", self.stage.name)

    def _take(self, consumer) -> list[Message]:
        """What is fetched already, at most a batch, after waiting up to the batch timeout for
        the first record (consume(n, timeout) would hold a trickle back until n arrived)."""
        first = consumer.poll(self.batch_timeout_s)
        if first is None:
            return []
        return [first, *consumer.consume(self.batch_size - 1, 0)]

    def _process_batch(self, producer: Producer, consumer, messages: list[Message]) -> None:
        started = time.perf_counter()
        self.stage.begin_batch()
        producer.begin_transaction()
        try:
            for message in messages:
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(message.error())
                for out in self._safe_process(message):
                    self._produce(producer, out)
            producer.poll(0)
            self.stage.before_commit(producer)
            positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset != OFFSET_INVALID]
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata())
            producer.commit_transaction()
        except KafkaException as e:
            if not e.args[0].txn_requires_abort():
                raise  # fatal (fenced, broker gone for good): exit and let the supervisor restart us
            log.warning("stage %s aborting batch: %s", self.stage.name, e)
            producer.abort_transaction()
            self.stage.after_abort()
            self._rewind(consumer)
            return
        self.stage.after_commit()
        labelled(STAGE_RECORDS, self.stage.name).inc(len(messages))
        labelled(STAGE_BATCH_SECONDS, self.stage.name).observe(time.perf_counter() - started)

    def _produce(self, producer: Producer, out: Output) -> None:
        """Produce, signed when bound for an internal topic (civicbus.signing); delivery reports
        are served once per batch, and here when librdkafka's queue is full."""
        headers = self.signer.sign(out.topic, out.key, out.value, out.headers) if self.signer.covers(out.topic) else out.headers
        while True:
            try:
                producer.produce(out.topic, out.value, out.key, headers=headers)
                return
            except BufferError:
                producer.poll(0.05)

    def _safe_process(self, message: Message) -> Iterable[Output]:
        if self.signer.covers(message.topic()) and not self.signer.verifies_message(message):
            detail = f"no valid {SIGNATURE_HEADER} header: not written by a stage of this stack, or changed since"
            return [dead_letter_output(self.ctx, self.stage.name, message, Reason.FORGED, detail)]
        try:
            return list(self.stage.process(message))
        except Exception as e:  # a bug or an unforeseen input must not stop the city's pipeline
            log.exception("stage %s failed on %s[%d]@%d", self.stage.name, message.topic(), message.partition(), message.offset())
            return [dead_letter_output(self.ctx, self.stage.name, message, Reason.PROCESSING_ERROR, f"{type(e).__name__}: {e}")]

    @staticmethod
    def _rewind(consumer) -> None:
        """Back to the committed offsets (the start, where none is committed yet)."""
        for tp in consumer.committed(consumer.assignment()):
            consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset != OFFSET_INVALID else OFFSET_BEGINNING))
