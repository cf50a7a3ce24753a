"""Ingest: every civic.in.<department> -> decode, validate, check the publisher, standardise the
location, enrich from master data -> route.

Events that open or update a case go to the stateful case stage (civic.pipe.cases), to the
partition of their place or of the case they name (processors.routing); all others are
dispatched here and written straight to civic.dist.events, one hop fewer. Anything that
cannot be decoded or is not allowed goes to civic.dlq with its reason; the stage keeps running.
Master data is held in memory (processors.enrich), loaded before the first event and followed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import Message

from civicbus.context import BusContext
from civicbus.dispatch import Dispatch, Place
from civicbus.dlq import Reason
from civicbus.kafka import make_admin
from civicbus.metrics import PUBLISHED, ROUTED
from civicbus.policy import Policy, below_floor
from civicbus.schemas import EventType
from civicbus.serde import DecodeError
from civicbus.topology import DIST_EVENTS, PIPE_CASES
from civicbus.wire import published_at_header
from processors.enrich import ReferenceFollower, ReferenceTables, enrich
from processors.routing import CaseRouter
from processors.runner import ClientStatistics, Output, Stage, dead_letter_output
from processors.standardise import Standardiser


def check_publisher(policy: Policy, department: str, event: dict[str, Any], event_type: EventType) -> tuple[Reason, str] | None:
    """The envelope's source must be the department owning the topic, the type one it may publish,
    at no less than the type's default classification."""
    if event["source"] != department:
        return Reason.SOURCE_MISMATCH, f"source {event['source']!r} published on the topic of {department!r}"
    if department not in policy.departments:
        return Reason.SOURCE_MISMATCH, f"{department!r} is not a department of this city"
    if not policy.may_publish(department, event["type"]):
        allowed = policy.rules(department).publishes
        return Reason.TYPE_NOT_PERMITTED, f"{department} may not publish {event['type']} (may: {', '.join(allowed)})"
    too_low = below_floor(event, event_type)
    if too_low:
        return Reason.CLASSIFICATION_TOO_LOW, too_low
    return None


class IngestStage(Stage):
    name = "ingest"
    exactly_once = False  # it holds no state; what a replay writes again, readers drop by id (processors.runner)

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        self.topology = ctx.topology
        self.pipe_topic = self.topology.name(PIPE_CASES)
        self.dist_topic = self.topology.name(DIST_EVENTS)
        self.standardiser = Standardiser.from_config(ctx.settings.config)
        self.dispatch = Dispatch(ctx.city)
        self.reference = ReferenceTables()
        self._follower: ReferenceFollower | None = None
        self.router: CaseRouter | None = None
        self._policy: Policy = ctx.policy.get()

    def subscription(self) -> list[str]:
        return [self.topology.inbound_pattern]

    def prepare(self, ctx: BusContext) -> None:
        # the followers' fetches counted beside the stage's own (civicbus_kafka_requests_total{client})
        self._follower = ReferenceFollower(ctx, self.reference, **ClientStatistics(ctx.settings, self.name, "reference-follower").config())
        self._follower.catch_up()
        self._follower.start()
        metadata = make_admin(ctx.bootstrap).list_topics(self.pipe_topic, timeout=10)
        self.router = CaseRouter(len(metadata.topics[self.pipe_topic].partitions))
        self.router.follow(ctx, **ClientStatistics(ctx.settings, self.name, "case-router").config())

    def begin_batch(self) -> None:
        self._policy = self.ctx.policy.get()  # an edit applies from the next batch on

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        if self.router is not None:
            self.router.stop()

    def process(self, message: Message) -> Iterable[Output]:
        try:
            event = self.ctx.serde.decode(message.value(), message.topic())
        except DecodeError as e:
            return [dead_letter_output(self.ctx, self.name, message, e.reason, e.detail)]
        department = self.topology.department_of_inbound(message.topic())
        event_type = self.ctx.catalog[event["type"]]
        refused = check_publisher(self._policy, department, event, event_type)
        if refused:
            return [dead_letter_output(self.ctx, self.name, message, *refused)]
        self.counts.inc(PUBLISHED, department, event["type"])
        event["location"] = self.standardiser.standardise(event["location"])
        enrich(event, event_type, self.reference)
        published_at = published_at_header(message.timestamp()[1])
        if event_type.case_stage:
            value, headers = self.ctx.serde.encode(event, self.pipe_topic)
            partition = self.router.update(event["data"]["case_id"]) if event_type.updates_case else self.router.report(event)
            return [Output(self.pipe_topic, value, event["id"].encode(), headers + [published_at], partition)]
        event["targets"] = self.dispatch.event_targets(event["type"], Place.of(event["location"]))
        self.counts.inc(ROUTED, event["type"])
        value, headers = self.ctx.serde.encode(event, self.dist_topic)
        return [Output(self.dist_topic, value, event["id"].encode(), headers + [published_at])]
