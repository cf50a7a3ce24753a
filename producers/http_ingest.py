"""HTTP ingest: POST /v1/events, the HTTP twin of the publishing SDK.

A router the gateway app mounts (consumers/gateway/app.py). It lives with the producers because
it publishes: the same `complete_event` as the SDK fills and validates the event, and it goes
to civic.in.<department> like any SDK publish, so ingest checks it again downstream. The
department is always the token's; a body naming another source is refused (403), and so is an
event below its type's classification floor (civicbus.policy.below_floor). An id this gateway
published already, reused by another department or for other content, is refused 409
(civicbus.ids); one it never saw is the pipeline's to catch (ID_CONFLICT dead letters).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from confluent_kafka import KafkaException
from fastapi import APIRouter, Body, Depends, HTTPException
from pydantic import BaseModel

from civicbus.context import BusContext
from civicbus.ids import Publication, id_conflict
from civicbus.kafka import AsyncProducer
from civicbus.policy import below_floor
from civicbus.schemas import EventValidationError
from civicbus.serde import MAX_EVENT_BYTES
from producers.sdk import complete_event


class Accepted(BaseModel):
    id: str


class FieldError(BaseModel):
    field: str
    message: str


class ValidationProblem(BaseModel):
    detail: list[FieldError]


class Problem(BaseModel):
    detail: str


EXAMPLE = {
    "type": "city.case.reported",
    "location": {"raw_address": "东城区安定门内大街1号", "lat": 39.9475, "lon": 116.4075},
    "data": {"category": "municipal_facilities", "subcategory": "pothole", "description": "路面坑洼"},
}


# An event's time must lie within what a feed still holds and no further ahead than clock skew.
MAX_AHEAD = timedelta(minutes=5)
# Ids published through this gateway remembered for the 409 on reuse (the newest ones).
REMEMBERED_IDS = 200_000


class PublishedIds:
    """The newest ids this gateway published, with who published what under each, and the time the
    gateway gave an event posted without one: a client that retries the same body (its first
    answer lost) sends no time again, and gets the same event again, a duplicate, not a 409."""

    def __init__(self, capacity: int = REMEMBERED_IDS):
        self.capacity = capacity
        self._ids: OrderedDict[str, tuple[Publication, datetime | None]] = OrderedDict()

    def conflict(self, event_id: str, publication: Publication) -> str | None:
        first = self._ids.get(event_id)
        return None if first is None else id_conflict(event_id, first[0], publication)

    def time_given(self, event_id: Any) -> datetime | None:
        """The time this gateway filled in for `event_id` when it was first posted without one."""
        first = self._ids.get(event_id) if isinstance(event_id, str) else None
        return None if first is None else first[1]

    def add(self, event_id: str, publication: Publication, time_given: datetime | None) -> None:
        self._ids[event_id] = (publication, time_given)
        self._ids.move_to_end(event_id)
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


def _unencodable(value: Any, path: str = "") -> str | None:
    """The first string (key or value) that is not valid Unicode, e.g. a lone surrogate "\\ud800"."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(body)"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _unencodable(key, path or "(body)") or _unencodable(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _unencodable(item, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None


def _time_problem(ctx: BusContext, department: str, time: datetime) -> str | None:
    retention_ms = next(int(s.config["retention.ms"]) for s in ctx.topology.specs() if s.name == ctx.topology.feed(department))
    now = datetime.now(timezone.utc)
    if time > now + MAX_AHEAD:
        return f"time {time.isoformat()} is more than {MAX_AHEAD.seconds // 60} minutes ahead of the bus's clock"
    if time < now - timedelta(milliseconds=retention_ms):
        return f"time {time.isoformat()} is older than the {retention_ms // 86_400_000} days the feeds keep"
    return None


def ingest_router(ctx: BusContext, department_of_caller: Callable[..., str], producer: Callable[[], AsyncProducer]) -> APIRouter:
    router = APIRouter(tags=["ingest"])
    published = PublishedIds()

    @router.post(
        "/v1/events",
        status_code=202,
        response_model=Accepted,
        summary="Publish one event as the token's department",
        responses={
            401: {"model": Problem}, 403: {"model": Problem}, 409: {"model": Problem}, 413: {"model": Problem},
            422: {"model": ValidationProblem}, 429: {"model": Problem}, 503: {"model": Problem},
        },
    )
    async def publish_event(
        event: dict[str, Any] = Body(..., examples=[EXAMPLE], description="Envelope fields; `data` per the event type. id, time, source and classification may be left out."),
        department: str = Depends(department_of_caller),
    ) -> Accepted:
        """202 once the broker has acknowledged the event on civic.in.<department>."""
        bad_text = _unencodable(event)
        if bad_text is not None:
            raise HTTPException(422, [{"field": bad_text, "message": "not valid Unicode text (a lone surrogate such as \\ud800)"}])
        if event.get("source", department) != department:
            raise HTTPException(403, f"source {event['source']!r} is not the department of this token ({department})")
        type_name = event.get("type")
        if not isinstance(type_name, str):
            raise HTTPException(422, [{"field": "type", "message": "an event type name is required, e.g. city.case.reported"}])
        if type_name in ctx.catalog and not ctx.policy.get().may_publish(department, type_name):
            raise HTTPException(403, f"{department} may not publish {type_name}")
        if "time" not in event and (given := published.time_given(event.get("id"))) is not None:
            event = {**event, "time": given}  # a retry of an event this gateway gave its time
        try:
            completed = complete_event(ctx, department, event)
        except EventValidationError as e:
            raise HTTPException(422, e.errors) from None
        time_problem = _time_problem(ctx, department, completed["time"])
        if time_problem:
            raise HTTPException(422, [{"field": "time", "message": time_problem}])
        event_type = ctx.catalog[completed["type"]]
        too_low = below_floor(completed, event_type)
        if too_low:
            raise HTTPException(403, [{"field": "classification", "message": too_low}])
        publication = Publication.of(completed, event_type)
        conflict = published.conflict(completed["id"], publication)
        if conflict:
            raise HTTPException(409, conflict)
        topic = ctx.topology.inbound(department)
        value, headers = ctx.serde.encode(completed, topic)
        if len(value) > MAX_EVENT_BYTES:
            raise HTTPException(413, f"the event is {len(value)} bytes in Avro, more than the {MAX_EVENT_BYTES} the bus accepts")
        try:
            await producer().send(topic, value, completed["id"].encode(), headers)
        except KafkaException as e:
            raise HTTPException(503, f"the broker did not acknowledge the event: {e.args[0].str()}") from None
        published.add(completed["id"], publication, None if "time" in event else completed["time"])
        return Accepted(id=completed["id"])

    return router
