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
   EMBEDDED_COMMIT_SPACING_PER_BATCH_US); ListOffsets lists them too, so the lag exporter reads log
   starts once a minute and keeps its polling under a tenth of the time (civicbus.lag), and
   publishes how long ListOffsets takes (civicbus_broker_list_offsets_seconds); the live view warns
   when it climbs.
3. A transaction commits only once every other open transaction that wrote an overlapping range
   of the same partition is prepared (DynoStore::txn_end): two transactional writers on one
   partition stall each other's readers under steady traffic.
   -> one transactional writer per partition: the case stage writes civic.dist.events beside its
   transaction (processors.cases).
4. read_committed readers see the records of aborted transactions.
   -> every hop is idempotent by event id; the fan-out reads back FEED_TAIL_RECORDS of every feed
   on start (processors.fanout).
5. ListOffsets answers the base offset of the last batch + 1 for the high watermark.
   -> restores read to end-of-partition, not to the watermark (civicbus.kafka.read_to_end); the
   exporter never reports negative lag.
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
   -> fewer batches per event (2); the tests start an embedded broker per module, not one for the
   whole session of per-test namespaces.
"""

from __future__ import annotations

from civicbus.kafka import make_admin

# The cluster id the embedded broker reports.
EMBEDDED_CLUSTER_ID_PREFIX = "tansu"
# (2) How much a stage's commit spacing grows per batch it wrote to a partition: at 20 us a
# partition written at every commit holds about 19,000 batches after an hour, committed to every 0.4 s.
EMBEDDED_COMMIT_SPACING_PER_BATCH_US = 20.0
# (4) Records read back from the end of each feed when the fan-out starts: far more than one
# transaction writes there, and more than a crashed case stage re-emits.
FEED_TAIL_RECORDS = 5_000


def is_embedded(bootstrap: str) -> bool:
    """Whether `bootstrap` is the embedded broker (by the cluster id it reports)."""
    metadata = make_admin(bootstrap).list_topics(timeout=10)
    return (metadata.cluster_id or "").startswith(EMBEDDED_CLUSTER_ID_PREFIX)
