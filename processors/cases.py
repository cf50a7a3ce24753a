"""The case stage: the stateful part of the pipeline, on the shared transactional runner.

Topology, all of it declared here:
  civic.pipe.cases  --CaseStage-->  civic.dist.events   (case events, escalations)
                                    civic.dlq           (refusals)
  state:  per input partition, a CaseBook (processors.casebook) over a CaseStore, logged to the
          compacted civic.state.cases partition of the same number
  read model: each case changed by a commit, once, as a case.snapshot (processors.case_snapshot)
          on the compacted civic.cases partition of the same number (key: case id; a forgotten
          case's key gets a tombstone), in the same transaction: the stage is its only writer
  clock:  every `clock` of categories.yaml a clock record on each assigned civic.pipe.cases
          partition; the stage checks deadlines when it reaches it, so escalations are decided
          in stream order and a replayed clock record decides exactly what it decided before.

Why not faust (measured 2026-12-01, `civicbus up --simulate 20`): faust fetched afresh at every
transaction-marker gap of its input and committed about one record per commit, and fell behind
from minute 6 at 20 events/s. Here librdkafka steps over markers, and the state changes, the
dead letters and the input offsets commit in one transaction: the state is exactly what the
committed input produced.

Its case events go to civic.dist.events through a second, idempotent producer, flushed before the
transaction commits, not inside the transaction: the embedded broker completes a transaction only
once every other open transaction that wrote the same partition is prepared too
(tansu-storage's txn_end), so two transactional writers on civic.dist.events (ingest and this
stage) hold each other's commits back without end under steady traffic (seen: readers of the
partition stalled for good within seconds at 100 events/s). Flushing first makes the case
events at-least-once; a replay after a crash re-emits them with the same ids (casebook's replay
rules) and the fan-out drops what it delivered already.

A status update for a case this partition does not know yet is held (parked) until ingest has
read every inbound record published up to `Settings.case_report_wait_ms` after it, and only then
dead-lettered UNKNOWN_CASE: ingest reads many inbound topics, and an answer published right after
its report may overtake it there, by minutes when ingest is behind on the report's topic. Each
clock record carries how far ingest had read when it was written (processors.ingest_progress), so
a replayed clock record gives up exactly the updates it gave up before.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from civicbus.context import BusContext
from civicbus.dlq import DeadLetter, Reason
from civicbus.kafka import make_producer
from civicbus.metrics import ESCALATED, HELD_UPDATES, OPEN_CASES, OVERDUE_CASES, REJECTED, ROUTED, labelled
from civicbus.quirks import read_to_end_of
from civicbus.schemas import ESCALATION_TYPE
from civicbus.serde import DecodeError
from civicbus.signing import RecordSigner
from civicbus.topology import CASES, DIST_EVENTS, DLQ, PIPE_CASES
from civicbus.wire import (clock_header, ingest_progress_header, is_cloudevent_header, read_clock_ms, read_ingest_progress_ms,
                           read_published_ms)
from processors.case_snapshot import case_snapshot
from processors.casebook import CaseBook, CaseError, CaseRules, TickResult
from processors.ingest_progress import IngestProgress
from processors.runner import ClientStatistics, Output, Stage

log = logging.getLogger(__name__)

STAGE = "cases"
# How long a commit waits for the broker to acknowledge the case events written beside it.
FLUSH_TIMEOUT_S = 30.0


def _forwarded(headers: dict) -> list[tuple[str, bytes]]:
    """Headers to carry on (e.g. the publish time for end-to-end latency), not the CloudEvents ones."""
    return [(k, v) for k, v in headers.items() if not is_cloudevent_header(k)]


@dataclass(frozen=True)
class PipeRecord:
    """One civic.pipe.cases record, as fetched or as parked in the store."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    @classmethod
    def of(cls, message: Message) -> PipeRecord:
        return cls(message.topic(), message.partition(), message.offset(), message.key(), message.value(),
                   dict(message.headers() or []))

    def to_json(self) -> dict:
        b64 = lambda b: None if b is None else base64.b64encode(b).decode()  # noqa: E731
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "key": b64(self.key),
                "value": b64(self.value), "headers": {k: b64(v) for k, v in self.headers.items()}}

    @classmethod
    def from_json(cls, data: dict) -> PipeRecord:
        unb64 = lambda s: None if s is None else base64.b64decode(s)  # noqa: E731
        return cls(data["topic"], data["partition"], data["offset"], unb64(data["key"]), unb64(data["value"]),
                   {k: unb64(v) for k, v in data["headers"].items()})


# What a case keeps per report: logged as one record per report, never inside the case's own record.
PER_REPORT = ("reports", "report_origins")


class CaseStore(MutableMapping):
    """One partition's cases, with what changed since the last commit, logged to civic.state.cases.

    The log holds three kinds of keys: `case/<id>` (a case without what it keeps per report),
    `report/<id>` (one record per report, naming its case, with its publisher and content digest)
    and `parked/<id>` (a held status update). A report adds one small record however many reports
    its case holds already (a mass incident: thousands of people reporting one fire), and a case
    changed many times in one transaction is written once. Restoring reads the partition to its end (end-of-partition, not the watermark the
    embedded broker understates) and attaches each case's reports in log order.
    """

    def __init__(self, partition: int):
        self.partition = partition
        self.data: dict[str, dict] = {}
        self.parked: dict[str, tuple[str, int, PipeRecord]] = {}  # event id -> (reference, until ms, record)
        self._waiting: dict[str, set[str]] = {}  # reference -> ids of the updates parked for it
        self._dirty: set[str] = set()
        self._dirty_parked: set[str] = set()
        self._logged_reports: dict[str, int] = {}  # case id -> reports already in the log
        self._forgotten: dict[str, list[str]] = {}  # case id -> its reports, for deleted cases

    def __getitem__(self, key: str) -> dict:
        return self.data[key]

    def __setitem__(self, key: str, value: dict) -> None:
        self.data[key] = value
        self._dirty.add(key)

    def __delitem__(self, key: str) -> None:
        self._forgotten[key] = self.data.pop(key)["reports"]
        self._dirty.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def park(self, event_id: str, reference: str, until_ms: int, record: PipeRecord) -> None:
        self.parked[event_id] = (reference, until_ms, record)
        self._waiting.setdefault(reference, set()).add(event_id)
        self._dirty_parked.add(event_id)

    def unpark(self, event_id: str) -> tuple[str, int, PipeRecord]:
        parked = self.parked.pop(event_id)
        waiting = self._waiting.get(parked[0], set())
        waiting.discard(event_id)
        if not waiting:
            self._waiting.pop(parked[0], None)
        self._dirty_parked.add(event_id)
        return parked

    def waiting_for(self, reference: str) -> list[str]:
        """Ids of the parked updates that refer to `reference`, oldest first."""
        return sorted(self._waiting.get(reference, ()), key=lambda event_id: self.parked[event_id][2].offset)

    def changed_cases(self) -> Iterator[tuple[str, dict | None]]:
        """Each case changed since the last `committed()`, once (None: forgotten)."""
        for case_id in self._dirty:
            yield case_id, self.data.get(case_id)

    def changes(self) -> Iterator[tuple[bytes, bytes | None]]:
        """The log records for what changed since the last `committed()`."""
        for case_id in self._dirty:
            case = self.data.get(case_id)
            logged = self._logged_reports.get(case_id, 0)
            if case is None:
                yield f"case/{case_id}".encode(), None
                for report_id in self._forgotten.get(case_id, ()):
                    yield f"report/{report_id}".encode(), None
                continue
            core = {k: v for k, v in case.items() if k not in PER_REPORT}
            yield f"case/{case_id}".encode(), json.dumps(core).encode()
            origins = case.get("report_origins", {})
            for report_id in case["reports"][logged:]:
                yield f"report/{report_id}".encode(), json.dumps({"case": case_id, **origins.get(report_id, {})}).encode()
        for event_id in self._dirty_parked:
            parked = self.parked.get(event_id)
            value = None if parked is None else json.dumps(
                {"reference": parked[0], "until_ms": parked[1], "record": parked[2].to_json()}).encode()
            yield f"parked/{event_id}".encode(), value

    def committed(self) -> None:
        for case_id in self._dirty:
            case = self.data.get(case_id)
            if case is None:
                self._logged_reports.pop(case_id, None)
            else:
                self._logged_reports[case_id] = len(case["reports"])
        self._dirty.clear()
        self._dirty_parked.clear()
        self._forgotten.clear()

    def restore(self, ctx: BusContext, topic: str, timeout_s: float = 120.0) -> None:
        """Rebuild the partition from all of its log: what it says last about a key holds."""
        self.data.clear()
        self.parked.clear()
        self._waiting.clear()
        self._dirty.clear()
        self._dirty_parked.clear()
        self._forgotten.clear()
        reports: dict[str, dict[str, dict]] = {}  # case id -> its report ids (in log order) -> their origins

        def apply(message: Message) -> None:
            kind, _, key = message.key().decode().partition("/")
            value = json.loads(message.value()) if message.value() else None
            if kind == "case":
                if value is None:
                    self.data.pop(key, None)
                    reports.pop(key, None)
                else:
                    self.data[key] = value
            elif kind == "report" and value is not None:
                reports.setdefault(value.pop("case"), {})[key] = value
            elif kind == "parked":
                if value is None:
                    self.parked.pop(key, None)
                else:
                    self.parked[key] = (value["reference"], value["until_ms"], PipeRecord.from_json(value["record"]))

        # assigned, never subscribed; named inside the stage's group prefix, which its ACLs allow
        read_to_end_of(ctx.settings, ctx.bootstrap, ctx.topology.group("civicbus-cases-restore"),
                       [TopicPartition(topic, self.partition, 0)], apply, timeout_s)
        for case_id, case in self.data.items():
            origins = reports.get(case_id, {})
            case["reports"] = list(origins)
            # a log written before origins moved to the report records holds them in the case's own
            case["report_origins"] = case.get("report_origins", {}) | {r: origin for r, origin in origins.items() if origin}
        for event_id, (reference, _, _) in self.parked.items():
            self._waiting.setdefault(reference, set()).add(event_id)
        self._logged_reports = {case_id: len(case["reports"]) for case_id, case in self.data.items()}


class CaseMetrics:
    """Open and overdue gauges per (department, category) over every partition held, refreshed at
    each clock tick; escalations counted as they happen."""

    def __init__(self):
        self._labels: set[tuple[str, str]] = set()

    def record(self, result: TickResult, books: Iterable[CaseBook]) -> None:
        for department, category in result.escalated:
            ESCALATED.labels(department, category).inc()
        open_, overdue = Counter(), Counter()
        for book in books:
            counts = book.counts()
            open_ += counts[0]
            overdue += counts[1]
        for key in set(open_) | self._labels:
            OPEN_CASES.labels(*key).set(open_[key])
            OVERDUE_CASES.labels(*key).set(overdue[key])
        self._labels = set(open_)
        HELD_UPDATES.set(sum(len(book.cases.parked) for book in books))


class CaseClock:
    """Writes a clock record to each assigned civic.pipe.cases partition every `interval_s`, with
    how far ingest had read then. That is read afresh only while a held update may be given up
    (`due(now_ms)`: its wait is over by the clock), since a read costs the broker requests; a clock
    record written meanwhile carries the last progress read: a hold may last a tick longer, never less."""

    def __init__(self, producer: Producer, signer: RecordSigner, topic: str, interval_s: float,
                 progress: IngestProgress, due: Callable[[int], bool]):
        self.producer = producer
        self.signer = signer
        self.topic = topic
        self.interval_s = interval_s
        self.progress = progress
        self.due = due
        self.partitions: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="case-clock", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            now_ms = int(time.time() * 1000)
            progress_ms = self.progress.read(now_ms) if self.due(now_ms) else self.progress.passed_ms
            for partition in sorted(self.partitions):
                headers = self.signer.sign(self.topic, b"clock", b"", [clock_header(now_ms), ingest_progress_header(progress_ms)])
                self.producer.produce(self.topic, b"", b"clock", partition=partition, headers=headers)
            self.producer.poll(0)


class CaseStage(Stage):
    name = STAGE

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        topology = ctx.topology
        self.pipe_topic = topology.name(PIPE_CASES)
        self.dist_topic = topology.name(DIST_EVENTS)
        self.dlq_topic = topology.name(DLQ)
        self.log_topic = topology.cases_changelog
        self.cases_topic = topology.name(CASES)
        self.rules = CaseRules.from_city(ctx.city, ctx.catalog[ESCALATION_TYPE])
        self.books: dict[int, CaseBook] = {}
        self.metrics = CaseMetrics()
        self.signer = RecordSigner.of_stack(ctx.settings)  # what goes beside the runner is signed here
        self._events: Producer | None = None  # the case events' own producer (module docstring)
        self._failed: list[KafkaError] = []
        self._clock: CaseClock | None = None

    def subscription(self) -> list[str]:
        return [self.pipe_topic]

    def prepare(self, ctx: BusContext) -> None:
        # Flushed at every commit (before_commit): lingering until then writes one batch per commit.
        self._events = make_producer(ctx.bootstrap, **{"linger.ms": int(ctx.settings.commit_interval_max_ms)},
                                     **ClientStatistics(ctx.settings, STAGE, "case-events").config())
        self._clock = CaseClock(self._events, self.signer, self.pipe_topic, self.rules.categories.clock.total_seconds(),
                                IngestProgress(ctx), self._update_due)
        self._clock.start()

    def _update_due(self, now_ms: int) -> bool:
        """Whether a held update's wait is over by `now_ms` (asked from the clock's thread: snapshots)."""
        return any(until_ms <= now_ms for book in list(self.books.values()) for _, until_ms, _ in list(book.cases.parked.values()))

    def close(self) -> None:
        if self._clock is not None:
            self._clock.stop()
        if self._events is not None:
            self._events.flush(10)

    def assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._restore(tp.partition)
            self._clock.partitions.add(tp.partition)

    def revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.books.pop(tp.partition, None)
            self._clock.partitions.discard(tp.partition)

    def _restore(self, partition: int) -> None:
        store = CaseStore(partition)
        store.restore(self.ctx, self.log_topic)
        self.books[partition] = CaseBook(self.rules, store)
        log.info("case stage restored %d cases, %d parked updates of partition %d", len(store), len(store.parked), partition)

    # ---- one record ----------------------------------------------------------------------

    def process(self, message: Message) -> Iterable[Output]:
        record = PipeRecord.of(message)
        book = self.books[record.partition]
        headers = list(record.headers.items())
        clock_ms = read_clock_ms(headers)
        if clock_ms is not None:
            progress_ms = read_ingest_progress_ms(headers)
            # a clock record written before clocks carried ingest's progress: the clock's time
            return self._tick(book, clock_ms, clock_ms if progress_ms is None else progress_ms)
        return self._handle(book, record, written_ms=message.timestamp()[1])

    def _handle(self, book: CaseBook, record: PipeRecord, written_ms: int) -> list[Output]:
        try:
            # written by ingest, which validated it, and signed (the runner verified it): decoding is enough
            event = self.ctx.serde.decode(record.value, record.topic, validate=False)
            outputs = book.handle(event, self.ctx.catalog[event["type"]])
        except DecodeError as e:
            return [self._dead_letter(record, e.reason, e.detail)]
        except CaseError as e:
            if e.reason is Reason.UNKNOWN_CASE:
                published_ms = read_published_ms(list(record.headers.items())) or written_ms
                book.cases.park(event["id"], event["data"]["case_id"], published_ms + self.ctx.settings.case_report_wait_ms, record)
                return []
            return [self._dead_letter(record, e.reason, e.detail)]
        for out in outputs:
            self._distribute(out, _forwarded(record.headers))
        results = []
        for event_id in book.cases.waiting_for(event["id"]):  # updates that overtook this report
            _, _, parked = book.cases.unpark(event_id)
            results += self._handle(book, parked, written_ms)
        return results

    def _tick(self, book: CaseBook, now_ms: int, ingest_progress_ms: int) -> list[Output]:
        result = book.tick(now_ms)
        for event in result.events:
            self._distribute(event, [])
        # held until ingest has read everything published up to the wait after the update
        expired = [event_id for event_id, (_, until_ms, _) in book.cases.parked.items() if until_ms <= ingest_progress_ms]
        letters = []
        for event_id in expired:
            reference, _, record = book.cases.unpark(event_id)
            detail = (f"no case {reference!r} is open or remembered (ingest read everything published up to "
                      f"{self.ctx.settings.case_report_wait_ms / 1000:g}s after this update, and no report of it came)")
            letters.append(self._dead_letter(record, Reason.UNKNOWN_CASE, detail))
        self.metrics.record(result, self.books.values())
        return letters

    def _distribute(self, event: dict, extra_headers: list[tuple[str, bytes]]) -> None:
        value, headers = self.ctx.serde.encode(event, self.dist_topic)
        key = event["id"].encode()
        headers = self.signer.sign(self.dist_topic, key, value, headers + extra_headers)
        self.counts.inc(ROUTED, event["type"])
        while True:
            try:
                self._events.produce(self.dist_topic, value, key, headers=headers, on_delivery=self._delivered)
                return
            except BufferError:
                self._events.poll(0.05)

    def _delivered(self, error: KafkaError | None, _message) -> None:
        if error is not None:
            self._failed.append(error)

    def _dead_letter(self, record: PipeRecord, reason: Reason, detail: str) -> Output:
        labelled(REJECTED, STAGE, reason.value).inc()
        letter = DeadLetter(reason, detail, STAGE, record.topic, record.partition, record.offset, record.key, record.value)
        return Output(self.dlq_topic, letter.value, letter.key, letter.headers())

    # ---- the transaction -----------------------------------------------------------------

    def before_commit(self, producer: Producer) -> None:
        """The case events acknowledged first, then the state changes join the transaction."""
        unsent = self._events.flush(FLUSH_TIMEOUT_S)
        if self._failed or unsent:
            error, self._failed = (self._failed or [KafkaError(KafkaError._MSG_TIMED_OUT)])[0], []
            raise KafkaException(KafkaError(error.code(), f"case events not written: {error.str()}", txn_requires_abort=True))
        for partition, book in self.books.items():
            for key, value in book.cases.changes():
                producer.produce(self.log_topic, value, key, partition=partition)
            for case_id, case in book.cases.changed_cases():
                value, headers = (None, []) if case is None else self.ctx.serde.encode(case_snapshot(case, self.rules.hub), self.cases_topic)
                producer.produce(self.cases_topic, value, case_id.encode(), partition=partition, headers=headers)

    def after_commit(self) -> None:
        for book in self.books.values():
            book.cases.committed()

    def after_abort(self) -> None:
        """Back to the committed state: the replayed input then does what it did the first time."""
        for partition in list(self.books):
            self._restore(partition)
