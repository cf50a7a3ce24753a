"""The publishing SDK a department system uses to put events on civic.in.<department>.

    publisher = Publisher(ctx, "citymgmt")
    event_id = publisher.publish({"type": "city.case.reported", "data": {...}, "location": {...}})

Every event is validated against its schema before it is sent (EventValidationError names the
failing fields); `publish` returns once the broker acknowledged it (idempotent producer, acks=all).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import KafkaError

from civicbus.context import BusContext
from civicbus.kafka import make_producer
from civicbus.schemas import EventValidationError


class PublishError(RuntimeError):
    """The broker did not acknowledge an event in time or refused it."""


def complete_event(ctx: BusContext, department: str, event: dict[str, Any]) -> dict[str, Any]:
    """Fill in what the publisher knows (id, time, source, default classification) and validate.
    Shared by this SDK and the HTTP ingest route."""
    event = dict(event)
    if event.get("source", department) != department:
        raise EventValidationError([{"field": "source", "message": f"is {event['source']!r}, but this publisher is {department!r}"}])
    event["source"] = department
    event.setdefault("id", str(uuid.uuid4()))
    event.setdefault("time", datetime.now(timezone.utc))
    if event.get("type") in ctx.catalog:
        event.setdefault("classification", ctx.catalog[event["type"]].classification)
    return ctx.catalog.validate(event)


class Publisher:
    def __init__(self, ctx: BusContext, department: str, timeout_s: float = 30.0):
        ctx.city.department(department)  # KeyError for an unknown department
        self.ctx = ctx
        self.department = department
        self.topic = ctx.topology.inbound(department)
        self.timeout_s = timeout_s
        self._producer = make_producer(ctx.bootstrap, **{"message.timeout.ms": int(timeout_s * 1000)})

    def complete(self, event: dict[str, Any]) -> dict[str, Any]:
        """Fill in what the SDK knows (id, time, source, default classification) and validate."""
        return complete_event(self.ctx, self.department, event)

    def publish(self, event: dict[str, Any]) -> str:
        """Validate, send, and return the event id once the broker has acknowledged it."""
        return self.publish_many([event])[0]

    def publish_many(self, events: list[dict[str, Any]]) -> list[str]:
        """Validate all first (nothing is sent if one is invalid), send, wait for every ack."""
        completed = [self.complete(e) for e in events]
        failures: list[KafkaError] = []

        def on_delivery(err, _msg):
            if err is not None:
                failures.append(err)

        for event in completed:
            self.send(event, on_delivery)
        remaining = self._producer.flush(self.timeout_s)
        if remaining or failures:
            raise PublishError(f"{remaining} events unacknowledged, {len(failures)} refused: {failures[:3]}")
        return [e["id"] for e in completed]

    def send(self, completed_event: dict[str, Any], on_delivery=None) -> None:
        """Send an event returned by `complete` without waiting for the ack (high-rate callers)."""
        value, headers = self.ctx.serde.encode(completed_event, self.topic)
        self._producer.produce(self.topic, value, completed_event["id"].encode(), headers=headers, on_delivery=on_delivery)
        self._producer.poll(0)

    def close(self) -> None:
        self._producer.flush(self.timeout_s)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
