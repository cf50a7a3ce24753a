"""The publishing SDK a department system uses to put events on civic.in.<department>.

    publisher = Publisher(ctx, "citymgmt")
    event_id = publisher.publish({"type": "city.case.reported", "data": {...}, "location": {...}})

    with Publisher(ctx, "citymgmt", spool=True) as publisher:
        event_id = publisher.accept({...})   # on local disk now; delivered whenever the broker answers

Every event is validated against its schema before it is sent (EventValidationError names the
failing fields). Two ways to hand it over, the caller chooses:
- `publish` waits for the broker's ack (idempotent producer, acks=all) and raises PublishError
  when it does not come in time: the caller owns the retry.
- `accept` (with `spool=True`) returns once the event is fsync'd to the department's spool
  under Settings.state_dir; a background sender delivers the spool in order, across broker
  outages and restarts of this process (see producers/spool.py).

Make one Publisher when the department's system starts and keep it: its producer is idempotent,
and librdkafka holds the first records of a new idempotent producer until it has a producer id,
which it asks for on a 500 ms timer from the producer's creation (rdkafka_idempotence.c; measured
on the embedded broker: 503 ms for a record produced as the producer is made, 1-2 ms for the next).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError

from civicbus.context import BusContext
from civicbus.kafka import make_producer
from civicbus.schemas import EventValidationError
from producers.spool import DiskSpool, SpoolSender, encode_record


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


def spool_directory(ctx: BusContext) -> Path:
    return ctx.settings.state_dir / "spool"


class Publisher:
    def __init__(self, ctx: BusContext, department: str, timeout_s: float = 30.0, spool: bool = False):
        """`spool=True` opens (and resumes) the department's spool; one process at a time holds it."""
        ctx.city.department(department)  # KeyError for an unknown department
        self.ctx = ctx
        self.department = department
        self.topic = ctx.topology.inbound(department)
        self.timeout_s = timeout_s
        self._producer = make_producer(ctx.bootstrap, **{"message.timeout.ms": int(timeout_s * 1000)})
        self._spool: SpoolSender | None = None
        if spool:
            self._spool = SpoolSender(
                DiskSpool(spool_directory(ctx), ctx.topology.name(department)),
                lambda: make_producer(ctx.bootstrap, **{"message.timeout.ms": 0}),  # 0: retry until delivered
                self.topic,
            )

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

    def accept(self, event: dict[str, Any]) -> str:
        """Validate and spool durably; return the id. Delivery follows in the background."""
        return self.accept_many([event])[0]

    def accept_many(self, events: list[dict[str, Any]]) -> list[str]:
        """Validate all first (nothing is spooled if one is invalid), spool with one fsync."""
        if self._spool is None:
            raise RuntimeError("accept needs the spool: create the publisher with Publisher(..., spool=True)")
        completed = [self.complete(e) for e in events]
        frames = [encode_record(e["id"].encode(), *self.ctx.serde.encode(e, self.topic)) for e in completed]
        self._spool.append(frames)
        return [e["id"] for e in completed]

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every accepted event is acknowledged by the broker; False on timeout."""
        return self._spool is None or self._spool.drain(self.timeout_s if timeout_s is None else timeout_s)

    @property
    def spooled_bytes(self) -> int:
        """Bytes accepted into the spool and not yet acknowledged by the broker."""
        return 0 if self._spool is None else self._spool.pending_bytes()

    def close(self) -> None:
        """Flush what was sent; give the spool `timeout_s` to drain, the rest waits on disk for next time."""
        self._producer.flush(self.timeout_s)
        if self._spool is not None:
            self._spool.close(self.timeout_s)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
