"""The consume-transform-produce loop every confluent-kafka stage runs in, exactly once.

Input records are processed into output records inside one Kafka transaction together with
the input offsets (send_offsets_to_transaction): a crash before the commit replays them, a
crash after it replays nothing. A transaction spans as many consumed batches as the load
warrants (see TransactionalRunner). A stage is an object with a `name`, the
topics it reads and a `process(message) -> outputs` function; this loop owns everything Kafka.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, Message, Producer

from civicbus.context import BusContext
from civicbus.dlq import DeadLetter, Reason
from civicbus.kafka import make_consumer, producer_config
from civicbus.metrics import REJECTED, STAGE_BATCH_SECONDS, STAGE_RECORDS
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

    def before_commit(self, producer: Producer) -> None:
        """Called inside the transaction, after the batch's outputs were produced."""


def dead_letter_output(ctx: BusContext, stage: str, message: Message, reason: Reason, detail: str) -> Output:
    REJECTED.labels(stage, reason.value).inc()
    letter = DeadLetter(reason, detail, stage, message.topic(), message.partition(), message.offset(), message.key(), message.value())
    return Output(ctx.topology.name(DLQ), letter.value, letter.key, letter.headers())


class _Transaction:
    """The open transaction of a runner: when it began and how many input records it holds."""

    def __init__(self, producer: Producer):
        self.producer = producer
        self.open = False
        self.started = 0.0
        self.records = 0

    def begin(self) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open, self.started, self.records = True, time.perf_counter(), 0

    def close(self) -> None:
        self.open = False


class TransactionalRunner:
    """Runs a Stage in transactions that adapt to the load.

    A transaction is committed as soon as the stage has caught up (nothing more is waiting), so
    at low rates each record travels on at once; under load it keeps taking what is waiting
    until it holds `commit_every` records or has been open `commit_interval_s`, so the fixed cost
    of a commit (four broker round trips) is shared by many records.
    """

    def __init__(
        self,
        stage: Stage,
        ctx: BusContext,
        instance: str = "0",
        batch_size: int = 2000,
        batch_timeout_s: float = 0.05,
        commit_every: int = 5000,
        commit_interval_s: float = 0.02,
    ):
        self.stage = stage
        self.ctx = ctx
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.commit_every = commit_every
        self.commit_interval_s = commit_interval_s
        self.group_id = ctx.topology.group(f"civicbus-{stage.name}")
        self.transactional_id = f"{self.group_id}.{instance}"

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
        transaction = _Transaction(producer)
        try:
            while not stop.is_set():
                messages = self._take(consumer, waiting=not transaction.open)
                if messages:
                    transaction.begin()
                    try:
                        self._process(producer, messages)
                    except KafkaException as e:
                        self._abort_or_raise(transaction, consumer, e)
                        continue
                    transaction.records += len(messages)
                if transaction.open and (
                    not messages
                    or transaction.records >= self.commit_every
                    or time.perf_counter() - transaction.started >= self.commit_interval_s
                ):
                    self._commit(transaction, consumer)
            if transaction.open:
                self._commit(transaction, consumer)  # what was processed before SIGTERM
        finally:
            consumer.close()  # leave the group now, so a successor is assigned at once
            producer.flush(10)
            log.info("stage %s stopped", self.stage.name)

    def _take(self, consumer, waiting: bool) -> list[Message]:
        """Records already fetched, at most a batch; when `waiting`, block up to the batch
        timeout for the first one (never for a full batch: that would hold up a slow trickle)."""
        if not waiting:
            return consumer.consume(self.batch_size, 0)
        first = consumer.poll(self.batch_timeout_s)
        if first is None:
            return []
        return [first, *consumer.consume(self.batch_size - 1, 0)]

    def _process(self, producer: Producer, messages: list[Message]) -> None:
        for message in messages:
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(message.error())
            for out in self._safe_process(message):
                producer.produce(out.topic, out.value, out.key, headers=out.headers)
            producer.poll(0)

    def _commit(self, transaction: _Transaction, consumer) -> None:
        try:
            self.stage.before_commit(transaction.producer)
            positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset != OFFSET_INVALID]
            transaction.producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata())
            transaction.producer.commit_transaction()
        except KafkaException as e:
            self._abort_or_raise(transaction, consumer, e)
            return
        STAGE_RECORDS.labels(self.stage.name).inc(transaction.records)
        STAGE_BATCH_SECONDS.labels(self.stage.name).observe(time.perf_counter() - transaction.started)
        transaction.close()

    def _abort_or_raise(self, transaction: _Transaction, consumer, e: KafkaException) -> None:
        if not e.args[0].txn_requires_abort():
            raise e  # fatal (fenced, broker gone for good): exit and let the supervisor restart us
        log.warning("stage %s aborting a transaction of %d records: %s", self.stage.name, transaction.records, e)
        transaction.producer.abort_transaction()
        transaction.close()
        self._rewind(consumer)

    def _safe_process(self, message: Message) -> Iterable[Output]:
        try:
            return list(self.stage.process(message))
        except Exception as e:  # a bug or an unforeseen input must not stop the city's pipeline
            log.exception("stage %s failed on %s[%d]@%d", self.stage.name, message.topic(), message.partition(), message.offset())
            return [dead_letter_output(self.ctx, self.stage.name, message, Reason.PROCESSING_ERROR, f"{type(e).__name__}: {e}")]

    @staticmethod
    def _rewind(consumer) -> None:
        for tp in consumer.committed(consumer.assignment()):
            if tp.offset != OFFSET_INVALID:
                consumer.seek(tp)
