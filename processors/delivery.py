"""Delivery into the department feeds, shared by the two stages that deliver.

Who receives what is the policy's decision (civicbus.policy: dispatched or granted, within
clearance and jurisdiction). Personal fields a department holds no grant for are masked in its
copy (the record then carries the `civic_masked` header), and every delivery is recorded in
civic.audit in the same transaction as the feed record. An event the policy lets no department
receive (dispatched only to departments not cleared for it, say) goes to civic.dlq as
UNDELIVERABLE rather than vanishing.

Ingest delivers the events that form no case itself, in the transaction that writes them to
civic.dist.events (marked with DELIVERED_HEADER): one hop fewer. The fan-out delivers what the
case stage writes there. Both drop events delivered before, by id (DeliveredIds): publishers
retry, the case stage is at-least-once, and the embedded broker exposes records of aborted
transactions (DESIGN notes in README).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from confluent_kafka import Message, Producer, TopicPartition

from civicbus.audit import AuditRecord, masked_header
from civicbus.context import BusContext
from civicbus.dlq import Reason
from civicbus.kafka import make_consumer
from civicbus.metrics import AUDITED, DELIVERED, END_TO_END_LATENCY, MASKED, labelled
from civicbus.policy import Policy, masked_event
from civicbus.topology import AUDIT, STATE_FANOUT_SEEN
from processors.runner import Output, dead_letter_output

# Carried from the inbound record to the feed, for the end-to-end latency histogram.
PUBLISHED_AT_HEADER = "civic_published_ms"
# On a civic.dist.events record: already delivered to the feeds, in the transaction that wrote it.
DELIVERED_HEADER = "civic_delivered"
# Ids remembered for deduplication: far more than can be re-emitted between two commits.
SEEN_CAPACITY = 1_000_000


def header(headers: list[tuple[str, bytes]] | None, name: str) -> bytes | None:
    for key, value in headers or []:
        if key == name:
            return value
    return None


class SeenIds:
    """A bounded, insertion-ordered set of event ids."""

    def __init__(self, capacity: int = SEEN_CAPACITY):
        self.capacity = capacity
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, event_id: bytes) -> bool:
        return event_id in self._ids

    def add(self, event_id: bytes) -> None:
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


class DeliveredIds:
    """Ids of the events delivered, in memory and in civic.state.fanout-seen.

    The ids of a batch are written in its transaction *after* its feed records were
    acknowledged, and join the set in memory only once it commits, so an aborted batch is
    replayed in full and the set restored after a crash never claims an event the feeds lack.
    """

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        self.topic = ctx.topology.name(STATE_FANOUT_SEEN)
        self.seen = SeenIds()
        self._in_batch: dict[bytes, None] = {}

    def restore(self) -> None:
        """Read the whole changelog (read_committed)."""
        consumer = make_consumer(self.ctx.settings, self.ctx.bootstrap, self.ctx.topology.group("civicbus-fanout-restore"),
                                 **{"enable.partition.eof": True})
        try:
            metadata = consumer.list_topics(self.topic, timeout=10).topics[self.topic]
            partitions = [TopicPartition(self.topic, p, 0) for p in metadata.partitions]
            consumer.assign(partitions)
            remaining = {p.partition for p in partitions}
            idle_since = time.monotonic()
            while remaining and time.monotonic() - idle_since < 2.0:
                message = consumer.poll(0.2)
                if message is None:
                    continue
                idle_since = time.monotonic()
                if message.error():
                    remaining.discard(message.partition())
                    continue
                self.seen.add(message.key())
        finally:
            consumer.close()

    def claim(self, event_id: bytes) -> bool:
        """True the first time an id is seen (this batch included): deliver it."""
        if event_id in self.seen or event_id in self._in_batch:
            return False
        self._in_batch[event_id] = None
        return True

    def before_commit(self, producer: Producer) -> None:
        if not self._in_batch:
            return
        producer.flush()  # the feed records first: see the class docstring
        for event_id in self._in_batch:
            producer.produce(self.topic, b"", event_id)

    def after_commit(self) -> None:
        for event_id in self._in_batch:
            self.seen.add(event_id)
        self._in_batch = {}

    def after_abort(self) -> None:
        self._in_batch = {}


class Deliverer:
    """The feed and audit records (or the dead letter) that deliver one event."""

    def __init__(self, ctx: BusContext, stage: str):
        self.ctx = ctx
        self.stage = stage
        self.audit_topic = ctx.topology.name(AUDIT)

    def deliver(self, policy: Policy, event: dict, value: bytes, headers: list[tuple[str, bytes]], source: Message) -> list[Output]:
        """`value`/`headers`: the event on the wire, as the unmasked copy; `source`: the record
        being processed, named in a dead letter."""
        deliveries = policy.deliveries(event)
        if not deliveries:
            detail = (f"dispatched to {', '.join(event.get('targets') or ()) or 'nobody'}; "
                      f"no department may receive a {event['classification']} {event['type']} there")
            return [dead_letter_output(self.ctx, self.stage, source, Reason.UNDELIVERABLE, detail)]
        key = event["id"].encode()
        published_ms = header(headers, PUBLISHED_AT_HEADER)
        latency_s = max(0.0, time.time() - int(published_ms) / 1000) if published_ms else None
        masked_copies: dict[tuple[str, ...], tuple[bytes, list]] = {}  # one encoding per set of masked fields
        outputs = []
        for delivery in deliveries:
            department = delivery.department
            feed = self.ctx.topology.feed(department)
            if not delivery.masked:
                outputs.append(Output(feed, value, key, headers))
            else:
                if delivery.masked not in masked_copies:
                    masked_copies[delivery.masked] = self._masked(event, headers, delivery.masked, feed)
                masked_value, masked_headers = masked_copies[delivery.masked]
                outputs.append(Output(feed, masked_value, key, masked_headers))
                labelled(MASKED, department, event["type"]).inc(len(delivery.masked))
            audit = AuditRecord.now(event["id"], event["type"], department, delivery.masked, "fanout")
            outputs.append(Output(self.audit_topic, audit.encode(), key))
            labelled(DELIVERED, department, event["type"]).inc()
            if latency_s is not None:
                labelled(END_TO_END_LATENCY, department).observe(latency_s)
        labelled(AUDITED, "fanout").inc(len(deliveries))
        return outputs

    def _masked(self, event: dict, headers: list[tuple[str, bytes]], masked: tuple[str, ...], feed: str) -> tuple[bytes, list]:
        """The event with `masked` fields masked, re-encoded, and its headers naming them."""
        value, _ = self.ctx.serde.encode(masked_event(event, self.ctx.catalog[event["type"]], masked), feed)
        return value, [*headers, masked_header(masked)]
