"""A status update that overtakes its report waits for it; one whose report never comes is
dead-lettered UNKNOWN_CASE once ingest has read everything published up to the wait
(Settings.case_report_wait_ms) after it.

Ingest reads every department's inbound topic; an answer published right after the report it
answers can reach the case stage first, by minutes when ingest is behind on the report's topic.
"""

from __future__ import annotations

import time
import uuid

from civicbus.dlq import Reason
from civicbus.wire import read_dead_letter
from civicbus.topology import DIST_EVENTS, DLQ, PIPE_CASES
from producers.sdk import Publisher
from tests.conftest import CASE_REPORT_WAIT_MS
from tests.support import read_topic

CLOCK_S = 5  # config/categories.yaml: how often the case stage checks its deadlines and held updates


def call_and_answers(bus):
    """A hotline call (not sent yet), an answer to it and an answer to no call, both published."""
    hotline, citymgmt = Publisher(bus, "hotline12345"), Publisher(bus, "citymgmt")
    call = hotline.complete({"type": "hotline.request.received", "location": {"raw_address": "东城区安定门内大街1号"},
                             "data": {"category": "complaint", "topic": "exposed_garbage", "content": "垃圾堆放"}})
    early = citymgmt.publish({"type": "case.status.updated", "data": {"case_id": call["id"], "status": "accepted"}})
    orphan = citymgmt.publish({"type": "case.status.updated", "data": {"case_id": str(uuid.uuid4()), "status": "accepted"}})
    citymgmt.close()
    read_topic(bus, bus.topology.name(PIPE_CASES), until=lambda m: {early, orphan} <= {r.key().decode() for r in m}, timeout_s=60)
    return hotline, call, early, orphan


def assert_applied_and_orphan_refused(bus, call, early, orphan):
    dist = read_topic(bus, bus.topology.name(DIST_EVENTS), until=lambda m: {call["id"], early} <= {r.key().decode() for r in m}, timeout_s=90)
    update = next(bus.serde.decode(r.value(), r.topic()) for r in dist if r.key().decode() == early)
    assert update["correlation_id"] == call["id"]
    assert "hotline12345" in update["targets"]  # relayed to the caller's department

    [letter] = read_topic(bus, bus.topology.name(DLQ), until=lambda m: len(m) >= 1, timeout_s=90)
    assert letter.key().decode() == orphan
    assert read_dead_letter(letter.headers())["reason"] == Reason.UNKNOWN_CASE.value
    assert orphan not in {r.key().decode() for r in read_topic(bus, bus.topology.name(DIST_EVENTS))}


def test_an_update_before_its_report_is_applied_when_the_report_arrives(bus, pipeline):
    hotline, call, early, orphan = call_and_answers(bus)
    hotline.send(call)
    hotline.close()
    assert_applied_and_orphan_refused(bus, call, early, orphan)


def test_an_update_waits_for_its_report_as_long_as_ingest_is_behind(bus, pipeline):
    """The report waits in ingest's input (ingest stopped) well past the wait: the update is held,
    not dead-lettered, and applied once ingest reads the report."""
    hotline, call, early, orphan = call_and_answers(bus)
    published = time.monotonic()
    assert pipeline.stop("ingest") == 0
    hotline.send(call)
    hotline.close()
    time.sleep(max(0.0, published + CASE_REPORT_WAIT_MS / 1000 + 3 * CLOCK_S - time.monotonic()))
    letters = {r.key().decode() for r in read_topic(bus, bus.topology.name(DLQ), idle_s=3)}
    assert early not in letters, "dead-lettered while its report waited in ingest's input"

    pipeline.start("ingest")
    assert_applied_and_orphan_refused(bus, call, early, orphan)
