"""The case stage scaled out: two workers on two partitions decide exactly what one decides.

The same reports and status updates (the same ids) go into two pipelines on one broker: one
with a single civic.pipe.cases partition and one case worker, one with two partitions and two
case workers. Reports are routed by district and status updates to their case's partition
(processors.routing), so each case lives in one partition and every merge is decided there.
"""

from __future__ import annotations

import dataclasses
import uuid

from civicbus.config import load_gazetteer
from civicbus.context import BusContext
from civicbus.kafka import apply_topics
from civicbus.topology import DIST_EVENTS, DLQ, PIPE_CASES
from producers.sdk import Publisher
from tests.conftest import make_settings
from tests.support import PipelineProcesses, read_topic

INCIDENTS = 24


def pipeline_bus(bootstrap: str, partitions: int) -> BusContext:
    ctx = BusContext(make_settings(bootstrap))
    topology = dataclasses.replace(ctx.topology, pipeline_partitions=partitions)
    apply_topics(bootstrap, topology.specs())
    return ctx


def traffic(ctx: BusContext) -> list[list[tuple[str, dict]]]:
    """Incidents all over the city, each reported by a call and, for half, a camera nearby; a
    status update for each call. Completed once, so both pipelines get the same ids. In three
    phases (calls, cameras, statuses), each published once the last is through: across inbound
    topics ingest may pass on either of two events first, and which report opens a case is then
    a race in both pipelines alike, not a decision of the case stage."""
    entries = load_gazetteer(ctx.settings.config)
    spots = [entries[i * 23 % len(entries)] for i in range(INCIDENTS)]
    publishers = {d: Publisher(ctx, d) for d in ("hotline12345", "police", "citymgmt")}
    calls, cameras = [], []
    for i, place in enumerate(spots):
        calls.append(("hotline12345", publishers["hotline12345"].complete({
            "type": "hotline.request.received", "location": {"raw_address": place.text},
            "data": {"category": "complaint", "topic": "exposed_garbage", "content": "垃圾堆放"}})))
        if i % 2 == 0:
            cameras.append(("police", publishers["police"].complete({
                "type": "security.video.alert", "location": {"lat": place.lat, "lon": place.lon},
                "data": {"camera_id": f"cam-{uuid.uuid4().hex[:6]}", "alert_type": "exposed_garbage", "confidence": 0.9}})))
    statuses = [("citymgmt", publishers["citymgmt"].complete(
        {"type": "case.status.updated", "data": {"case_id": call["id"], "status": "accepted"}})) for _, call in calls]
    for publisher in publishers.values():
        publisher.close()
    return [calls, cameras, statuses]


def decisions(ctx: BusContext, expected: set[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Event id -> (case it was merged into, departments it went to), from civic.dist.events."""
    records = read_topic(ctx, ctx.topology.name(DIST_EVENTS), until=lambda m: expected <= {r.key().decode() for r in m}, timeout_s=150)
    out = {}
    for record in records:
        event = ctx.serde.decode(record.value(), record.topic())
        if event["id"] in expected:
            out[event["id"]] = (event["correlation_id"], tuple(event["targets"]))
    return out


def test_two_case_workers_on_two_partitions_decide_what_one_decides(broker_bootstrap):
    one, two = pipeline_bus(broker_bootstrap, 1), pipeline_bus(broker_bootstrap, 2)
    phases = traffic(one)
    runs = {}
    for ctx, workers in ((one, 1), (two, 2)):
        stages = PipelineProcesses(ctx)
        stages.start("ingest")
        for instance in range(workers):
            stages.start("cases", str(instance))
        try:
            runs[workers] = {}
            for phase in phases:
                with Publisher(ctx, phase[0][0]) as publisher:
                    for _, event in phase:
                        publisher.send(event)
                runs[workers].update(decisions(ctx, {e["id"] for _, e in phase}))
            assert read_topic(ctx, ctx.topology.name(DLQ)) == [], stages.logs()
        finally:
            stages.stop_all()
    assert runs[2] == runs[1]
    cases = {case for case, _ in runs[1].values()}
    assert len(cases) == INCIDENTS  # every camera alert joined its call's case, in both
    partitions_used = {r.partition() for r in read_topic(two, two.topology.name(PIPE_CASES))}
    assert partitions_used == {0, 1}  # the work really was split
