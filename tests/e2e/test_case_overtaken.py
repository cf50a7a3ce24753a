"""A status update that overtakes its report waits for it; one whose report never comes is
dead-lettered UNKNOWN_CASE once the wait (Settings.case_report_wait_ms) is over.

Ingest reads every department's inbound topic; an answer published right after the report it
answers can reach the case stage first.
"""

from __future__ import annotations

import uuid

from civicbus.dlq import Reason
from civicbus.wire import read_dead_letter
from civicbus.topology import DIST_EVENTS, DLQ, PIPE_CASES
from producers.sdk import Publisher
from tests.support import read_topic


def test_an_update_before_its_report_is_applied_when_the_report_arrives(bus, pipeline):
    hotline, citymgmt = Publisher(bus, "hotline12345"), Publisher(bus, "citymgmt")
    call = hotline.complete({"type": "hotline.request.received", "location": {"raw_address": "东城区安定门内大街1号"},
                             "data": {"category": "complaint", "topic": "exposed_garbage", "content": "垃圾堆放"}})
    early = citymgmt.publish({"type": "case.status.updated", "data": {"case_id": call["id"], "status": "accepted"}})
    orphan = citymgmt.publish({"type": "case.status.updated", "data": {"case_id": str(uuid.uuid4()), "status": "accepted"}})
    read_topic(bus, bus.topology.name(PIPE_CASES), until=lambda m: {early, orphan} <= {r.key().decode() for r in m}, timeout_s=60)
    hotline.send(call)
    hotline.close()

    dist = read_topic(bus, bus.topology.name(DIST_EVENTS), until=lambda m: {call["id"], early} <= {r.key().decode() for r in m}, timeout_s=60)
    update = next(bus.serde.decode(r.value(), r.topic()) for r in dist if r.key().decode() == early)
    assert update["correlation_id"] == call["id"]
    assert "hotline12345" in update["targets"]  # relayed to the caller's department

    [letter] = read_topic(bus, bus.topology.name(DLQ), until=lambda m: len(m) >= 1, timeout_s=90)
    assert letter.key().decode() == orphan
    assert read_dead_letter(letter.headers())["reason"] == Reason.UNKNOWN_CASE.value
    assert orphan not in {r.key().decode() for r in read_topic(bus, bus.topology.name(DIST_EVENTS))}
    citymgmt.close()
