"""What the embedded broker (Tansu 0.6.0, memory storage) does differently from Apache Kafka, what
was measured, and where civicbus works around each. The workarounds are harmless on Apache
Kafka; the ones that cost something there are switched on only when `is_embedded` says so.

1. A waiting fetch is never ended early. tansu-storage's FetchService reads every partition of the
   request once, then sleeps what is left of `fetch.wait.max.ms` (half of it from 250 ms) whether
   it found data or not: a consumer sends one fetch per wait whatever the traffic, a record waits
   up to the wait before a read and the whole wait after it, and an idle consumer costs the broker
   about 0.09 of a core at 10 ms and 0.02 at 100 ms, plus about 0.01 per partition it reads at
   10 ms (benchmarks/results/broker.json, idle_read_committed_consumer_broker_cores).
   -> consumers on an event's path wait 10 ms (Settings.fetch_wait_max_ms); followers that are not
   (master data, the case router) wait FOLLOWER_FETCH_WAIT_MS (civicbus.kafka.TopicFollower);
   departments' feed readers (the subscriber SDK, `tail`, the gateway) FEED_READER_FETCH_WAIT_MS.
2. Every fetch that returns data lists every batch and transaction marker its partition holds
   (DynoStore::fetch over the in-memory object store): 7 ms empty, 21 ms at 15,000 batches, 47 ms at
   20,000, over 2 s from 40,000; nothing trims a partition (no DeleteRecords, no retention).
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
   -> restores read to end-of-partition, not to the watermark (civicbus.kafka.read_to_end); the
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
"""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, Message, TopicPartition

from civicbus.kafka import make_admin
from civicbus.metrics import SKIPPED_BATCHES

log = logging.getLogger(__name__)

# The cluster id the embedded broker reports.
EMBEDDED_CLUSTER_ID_PREFIX = "tansu"
# (2) How much a stage's commit spacing grows per batch it wrote to a partition: at 20 us a
# partition written at every commit holds about 19,000 batches after an hour, committed to every 0.4 s.
EMBEDDED_COMMIT_SPACING_PER_BATCH_US = 20.0
# Records read back from the end of each feed when the fan-out starts: far more than one of its
# batches writes there, and more than a crashed case stage re-emits.
FEED_TAIL_RECORDS = 5_000


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
