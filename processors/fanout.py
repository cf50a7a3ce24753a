"""Fan-out: civic.dist.events -> civic.feed.<department> for every department that receives it.

Who receives what is the policy's decision (civicbus.policy: dispatched or granted, within
clearance and jurisdiction), re-read when config/policy.yaml changes, so an edit applies to the
next event. Personal fields a department holds no grant for are masked in its copy, free text it
holds no grant for is scanned and masked where it identifies a person (civicbus.policy.masking;
the record then carries the `civic_masked` header saying what), and every delivery is recorded
in civic.audit in the same transaction as the feed record.

An event the policy lets no department receive (dispatched only to departments not cleared
for it, say) goes to civic.dlq as UNDELIVERABLE rather than vanishing.

Exactly once into the feeds. The stage runs in Kafka transactions, and it also drops events it
has already delivered, by id: the case stage is at-least-once (faust) and may emit an event
twice after a restart, and the embedded broker exposes records of aborted transactions (see
DESIGN notes in README). An id is its publisher's (civicbus.ids): the same id from another
department, or with other content, is no duplicate but a conflict, dead-lettered as ID_CONFLICT. Delivered ids are kept in memory and in civic.state.fanout-seen,
written in the same transaction *after* the feed records were acknowledged, so the set restored
after a crash never claims an event the feeds do not hold.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

from confluent_kafka import Message, Producer, TopicPartition

from civicbus.audit import AuditRecord, masked_header
from civicbus.context import BusContext
from civicbus.dlq import Reason
from civicbus.ids import Publication, id_conflict
from civicbus.kafka import make_consumer, read_to_end
from civicbus.metrics import AUDITED, DELIVERED, DUPLICATES_DROPPED, END_TO_END_LATENCY, MASKED, labelled
from civicbus.policy import Delivery, Policy, masked_event
from civicbus.topology import AUDIT, DIST_EVENTS, STATE_FANOUT_SEEN
from processors.ingest import PUBLISHED_AT_HEADER
from processors.runner import Output, Stage, dead_letter_output

# Ids remembered for deduplication: far more than can be re-emitted between two commits.
SEEN_CAPACITY = 1_000_000
# Records read back from the end of each feed on start: more than one batch writes to a feed.
FEED_TAIL_RECORDS = 5_000


def header(message: Message, name: str) -> bytes | None:
    for key, value in message.headers() or []:
        if key == name:
            return value
    return None


class SeenIds:
    """A bounded, insertion-ordered map of event ids to their first publication (None: a record
    of the changelog written before publications were kept, taken as the same publication)."""

    def __init__(self, capacity: int = SEEN_CAPACITY):
        self.capacity = capacity
        self._ids: OrderedDict[bytes, Publication | None] = OrderedDict()

    def __contains__(self, event_id: bytes) -> bool:
        return event_id in self._ids

    def get(self, event_id: bytes) -> Publication | None:
        return self._ids.get(event_id)

    def add(self, event_id: bytes, publication: Publication | None) -> None:
        self._ids[event_id] = publication
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


class FanoutStage(Stage):
    name = "fanout"

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        self.topology = ctx.topology
        self.seen_topic = self.topology.name(STATE_FANOUT_SEEN)
        self.audit_topic = self.topology.name(AUDIT)
        self.seen = SeenIds()
        # Ids delivered by the open transaction: they join `seen` only once it commits, so an
        # aborted batch is replayed in full rather than dropped as duplicates.
        self._delivered_in_batch: dict[bytes, Publication] = {}
        self._policy: Policy = ctx.policy.get()
        # Event id -> departments whose feed shows it already, read from the feeds' tails on start.
        self._in_feeds: dict[bytes, set[str]] = {}

    def subscription(self) -> list[str]:
        return [self.topology.name(DIST_EVENTS)]

    def prepare(self, ctx: BusContext) -> None:
        """Restore the delivered ids (read_committed): the whole changelog, and the tail of every feed.

        The feeds' tails matter on the embedded broker, which shows readers the records of
        aborted transactions (DESIGN notes in README): a fan-out killed mid-batch leaves feed
        records that every reader sees but whose ids never reached the changelog, and delivering
        them again would put them in the feeds twice (tests/reliability/test_kill_processors.py).
        Such an event may be in some of its feeds only, so what the tails show is kept per
        department, and the event is still delivered to the others. On Apache Kafka
        read_committed hides those records, and the tails add nothing new.
        """
        consumer = make_consumer(
            ctx.settings, ctx.bootstrap, self.topology.group("civicbus-fanout-restore"), **{"enable.partition.eof": True}
        )
        try:
            topics = consumer.list_topics(timeout=10).topics
            partitions = [TopicPartition(self.seen_topic, p, 0) for p in topics[self.seen_topic].partitions]
            for feed in (self.topology.feed(d) for d in self.topology.departments):
                for p in topics[feed].partitions:
                    low, high = consumer.get_watermark_offsets(TopicPartition(feed, p), timeout=10)
                    partitions.append(TopicPartition(feed, p, max(low, high - FEED_TAIL_RECORDS)))
            consumer.assign(partitions)
            read_to_end(consumer, self._restore_record)
        finally:
            consumer.close()
        self._in_feeds = {event_id: feeds for event_id, feeds in self._in_feeds.items() if event_id not in self.seen}

    def _restore_record(self, message: Message) -> None:
        if message.topic() == self.seen_topic:
            source, _, digest = (message.value() or b"").decode().partition(" ")
            self.seen.add(message.key(), Publication(source, digest) if digest else None)
        else:
            self._in_feeds.setdefault(message.key(), set()).add(message.topic())

    def begin_batch(self) -> None:
        self._policy = self.ctx.policy.get()  # an edit applies from the next batch on

    def process(self, message: Message) -> Iterable[Output]:
        event_id = message.key()
        # Written by ingest or the case stage, which validated it: decoding is enough.
        event = self.ctx.serde.decode(message.value(), message.topic(), validate=False)
        publication = Publication.of(event, self.ctx.catalog[event["type"]])
        if event_id in self.seen or event_id in self._delivered_in_batch:
            first = self.seen.get(event_id) or self._delivered_in_batch.get(event_id)
            conflict = first and id_conflict(event["id"], first, publication)
            if conflict:
                return [dead_letter_output(self.ctx, self.name, message, Reason.ID_CONFLICT, conflict)]
            labelled(DUPLICATES_DROPPED, self.name).inc()
            return []
        self._delivered_in_batch[event_id] = publication
        deliveries = self._policy.deliveries(event)
        if not deliveries:
            detail = f"dispatched to {', '.join(event.get('targets') or ()) or 'nobody'}; no department may receive a {event['classification']} {event['type']} there"
            return [dead_letter_output(self.ctx, self.name, message, Reason.UNDELIVERABLE, detail)]
        shown = self._in_feeds.pop(event_id, ())
        if shown:  # partly delivered by an aborted batch that readers see (see prepare)
            deliveries = [d for d in deliveries if self.topology.feed(d.department) not in shown]
        published_ms = header(message, PUBLISHED_AT_HEADER)
        latency_s = max(0.0, time.time() - int(published_ms) / 1000) if published_ms else None
        copies: dict[tuple, tuple[bytes, list, tuple[str, ...]]] = {}  # one encoding per masking
        outputs = []
        for delivery in deliveries:
            department = delivery.department
            if delivery.masking not in copies:
                copies[delivery.masking] = self._copy(message, event, delivery)
            value, headers, masked = copies[delivery.masking]
            outputs.append(Output(self.topology.feed(department), value, event_id, headers))
            if masked:
                labelled(MASKED, department, event["type"]).inc(len(masked))
            audit = AuditRecord.now(event["id"], event["type"], department, masked, "fanout")
            outputs.append(Output(self.audit_topic, audit.encode(), event_id))
            labelled(DELIVERED, department, event["type"]).inc()
            if latency_s is not None:
                labelled(END_TO_END_LATENCY, department).observe(latency_s)
        labelled(AUDITED, "fanout").inc(len(deliveries))
        return outputs

    def _copy(self, message: Message, event: dict, delivery: Delivery) -> tuple[bytes, list, tuple[str, ...]]:
        """A department's copy (the record itself when nothing is masked), its headers, and what was masked."""
        copy, masked = masked_event(event, self.ctx.catalog[event["type"]], delivery.masked, delivery.scanned)
        if not masked:
            return message.value(), message.headers(), ()
        value, _ = self.ctx.serde.encode(copy, message.topic())
        return value, (message.headers() or []) + [masked_header(masked)], masked

    def before_commit(self, producer: Producer) -> None:
        if not self._delivered_in_batch:
            return
        producer.flush()  # the feed records first: see the module docstring
        for event_id, publication in self._delivered_in_batch.items():
            producer.produce(self.seen_topic, f"{publication.source} {publication.digest}".encode(), event_id)

    def after_commit(self) -> None:
        for event_id, publication in self._delivered_in_batch.items():
            self.seen.add(event_id, publication)
        self._delivered_in_batch = {}

    def after_abort(self) -> None:
        self._delivered_in_batch = {}
