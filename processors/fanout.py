"""Fan-out: civic.dist.events -> civic.feed.<department> for every department that receives it.

Who receives what is the policy's decision (civicbus.policy: dispatched or granted, within
clearance and jurisdiction), re-read when config/policy.yaml changes, so an edit applies to the
next event. Personal fields a department holds no grant for are masked in its copy, free text it
holds no grant for is scanned and masked where it identifies a person (civicbus.policy.masking;
the record then carries the `civic_masked` header saying what), and each delivered event is
recorded in civic.audit (one record naming every department it reached; civicbus.audit).

An event the policy lets no department receive (dispatched only to departments not cleared
for it, say) goes to civic.dlq as UNDELIVERABLE rather than vanishing.

Once into the feeds, without transactions. The stage commits at least once (processors.runner):
a batch's feed and audit records are flushed, then its input offsets committed, and after a
crash it delivers again only what neither the feeds nor the audit log show. A transaction cost
the embedded broker about a millisecond per partition it wrote, and a fan-out's batch writes a
dozen feeds and the audit log: at 1,000 events/s its commits alone kept the broker's one busy
core full (README, Benchmarks). It also drops events it has already delivered, by id: the case
stage writes its events at-least-once (processors.cases) and may emit an event twice after a
crash. An id is its publisher's (civicbus.ids): the same id from another department, or with
other content, is no duplicate but a conflict, dead-lettered as ID_CONFLICT.

Delivered ids are kept in memory while the stage runs and, on start, read back from the tail of
every feed (as the same publication, since a masked copy is not what was published) and of the
audit log: a batch cut short by a crash may have reached some of an event's feeds, or its audit
record, and not the rest, and the replay writes exactly the rest. What is replayed is what was
fetched since the last commit, seconds ago, well inside those tails.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterable

from confluent_kafka import Message, TopicPartition
from confluent_kafka.admin import OffsetSpec

from civicbus.audit import FANOUT_WRITER, AuditChain
from civicbus.context import BusContext
from civicbus.dlq import Reason
from civicbus.ids import Publication, id_conflict
from civicbus.kafka import make_admin, partition_offsets, security_config
from civicbus.metrics import AUDITED, DELIVERED, DUPLICATES_DROPPED, END_TO_END_LATENCY, MASKED
from civicbus.policy import Delivery, Policy, masked_event
from civicbus.quirks import FEED_TAIL_RECORDS, read_to_end_of
from civicbus.topology import AUDIT, DIST_EVENTS
from civicbus.wire import masked_header, read_published_ms
from processors.runner import Output, Stage, dead_letter_output

# Ids remembered for deduplication: far more than can be re-emitted between two commits, and
# hours of a city's traffic for publishers that send again what they sent before an outage.
SEEN_CAPACITY = 1_000_000


class SeenIds:
    """The ids delivered lately, each with its first publication; the oldest are forgotten beyond
    `capacity`.

    Kept compact, since the fan-out holds up to a million (`python -m benchmarks memory`): the
    publisher's name interned (a city has a few dozen), the content digest as its 16 bytes rather
    than 32 hex characters, and the order of arrival as a deque of the same key objects rather than
    an OrderedDict's linked nodes."""

    def __init__(self, capacity: int = SEEN_CAPACITY):
        self.capacity = capacity
        self._first: dict[bytes, tuple[str, bytes]] = {}  # id -> (source, digest)
        self._order: deque[bytes] = deque()  # ids, oldest first

    def __contains__(self, event_id: bytes) -> bool:
        return event_id in self._first

    def get(self, event_id: bytes) -> Publication | None:
        first = self._first.get(event_id)
        return None if first is None else Publication(first[0], first[1].hex())

    def add(self, event_id: bytes, publication: Publication) -> None:
        if event_id not in self._first:
            self._order.append(event_id)
        self._first[event_id] = (sys.intern(publication.source), bytes.fromhex(publication.digest))
        if len(self._order) > self.capacity:
            del self._first[self._order.popleft()]

    def __len__(self) -> int:
        return len(self._first)


class FanoutStage(Stage):
    name = "fanout"
    exactly_once = False  # see the module docstring

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        self.topology = ctx.topology
        self.audit_topic = self.topology.name(AUDIT)
        self.seen = SeenIds()
        self._policy: Policy = ctx.policy.get()
        # Event id -> departments whose feed shows it already, read from the feeds' tails on start.
        self._in_feeds: dict[bytes, set[str]] = {}
        self.audit: AuditChain | None = None  # this writer's audit chain, taken up in prepare

    def subscription(self) -> list[str]:
        return [self.topology.name(DIST_EVENTS)]

    def prepare(self, ctx: BusContext) -> None:
        """Restore the delivered ids from the tail of every feed, per department, and take up the
        audit chain (with the deliveries its tail records): a fan-out killed mid-batch leaves
        records that a replay must not write twice (tests/reliability/test_kill_processors.py)."""
        feeds = [self.topology.feed(d) for d in self.topology.departments]
        admin = make_admin(ctx.bootstrap, **security_config(ctx.settings))
        lows, highs = (partition_offsets(admin, feeds, spec) for spec in (OffsetSpec.earliest(), OffsetSpec.latest()))
        tails = [TopicPartition(feed, p, max(low, highs[(feed, p)] - FEED_TAIL_RECORDS)) for (feed, p), low in lows.items()]
        read_to_end_of(ctx.settings, ctx.bootstrap, self.topology.group("civicbus-fanout-restore"), tails, self._restore_record)
        self.audit = AuditChain.restored(ctx.settings, ctx.bootstrap, FANOUT_WRITER)

    def _restore_record(self, message: Message) -> None:
        self._in_feeds.setdefault(message.key(), set()).add(message.topic())

    def begin_batch(self) -> None:
        self._policy = self.ctx.policy.get()  # an edit applies from the next batch on

    def process(self, message: Message) -> Iterable[Output]:
        event_id = message.key()
        # Written by ingest or the case stage, which validated it: decoding is enough.
        event = self.ctx.serde.decode(message.value(), message.topic(), validate=False)
        publication = Publication.of(event, self.ctx.catalog[event["type"]])
        if event_id in self.seen:
            conflict = id_conflict(event["id"], self.seen.get(event_id), publication)
            if conflict:
                return [dead_letter_output(self.ctx, self.name, message, Reason.ID_CONFLICT, conflict)]
            self.counts.inc(DUPLICATES_DROPPED, self.name)
            return []
        self.seen.add(event_id, publication)  # a failed batch ends the process (processors.runner): no batch to forget
        deliveries = self._policy.deliveries(event)
        if not deliveries:
            detail = f"dispatched to {', '.join(event.get('targets') or ()) or 'nobody'}; no department may receive a {event['classification']} {event['type']} there"
            return [dead_letter_output(self.ctx, self.name, message, Reason.UNDELIVERABLE, detail)]
        # written before a restart, maybe partly (see prepare): the replay writes what is not
        shown, audited = self._in_feeds.pop(event_id, ()), self.audit.head.recent_deliveries.pop(event["id"], ())
        unaudited = [d for d in deliveries if d.department not in audited]
        deliveries = [d for d in deliveries if self.topology.feed(d.department) not in shown]
        if not deliveries and not unaudited:
            self.counts.inc(DUPLICATES_DROPPED, self.name)
            return []
        published_ms = read_published_ms(message.headers())
        latency_s = max(0.0, time.time() - published_ms / 1000) if published_ms else None
        copies: dict[tuple, tuple[bytes, list, tuple[str, ...]]] = {}  # one encoding per masking
        outputs: list[Output] = []
        for delivery in deliveries:
            department = delivery.department
            value, headers, masked = self._copy_for(copies, message, event, delivery)
            outputs.append(Output(self.topology.feed(department), value, event_id, headers))
            if masked:
                self.counts.inc(MASKED, department, event["type"], amount=len(masked))
            self.counts.inc(DELIVERED, department, event["type"])
            if latency_s is not None:
                self.counts.observe(END_TO_END_LATENCY, department, value=latency_s)
        if unaudited:
            masked_for = [(d.department, self._copy_for(copies, message, event, d)[2]) for d in unaudited]
            record = self.audit.record(event["id"], event["type"], "fanout", masked_for)
            outputs += [Output(self.audit_topic, value, self.audit.kafka_key) for value in record]
            self.counts.inc(AUDITED, "fanout", amount=len(unaudited))
        return outputs

    def _copy_for(self, copies: dict, message: Message, event: dict, delivery: Delivery) -> tuple[bytes, list, tuple[str, ...]]:
        """The copy for `delivery`, made once per masking."""
        if delivery.masking not in copies:
            copies[delivery.masking] = self._copy(message, event, delivery)
        return copies[delivery.masking]

    def _copy(self, message: Message, event: dict, delivery: Delivery) -> tuple[bytes, list, tuple[str, ...]]:
        """A department's copy (the record itself when nothing is masked), its headers, and what was masked."""
        copy, masked = masked_event(event, self.ctx.catalog[event["type"]], delivery.masked, delivery.scanned)
        if not masked:
            return message.value(), message.headers(), ()
        value, _ = self.ctx.serde.encode(copy, message.topic())
        return value, (message.headers() or []) + [masked_header(masked)], masked
