"""The case stage stopped with SIGTERM mid-stream and restarted: no case lost, none doubled.

faust restores the case tables from their changelogs; inputs it sees again are re-emitted with
the same ids, and civic.dist.events holds every case event once after dedup by id.
"""

import threading
from collections import defaultdict

import pytest

from civicbus.config import load_gazetteer
from civicbus.topology import DIST_EVENTS, DLQ
from producers.sdk import Publisher
from tests.support import read_topic

INCIDENTS = 40


def places(bus):
    entries = load_gazetteer(bus.settings.config)
    return [entries[i * 13] for i in range(INCIDENTS)]  # hundreds of metres apart: separate cases


def call(place):
    return {"type": "hotline.request.received", "location": {"raw_address": place.text},
            "data": {"category": "complaint", "topic": "exposed_garbage", "content": "垃圾堆放"}}


def camera(place):
    return {"type": "security.video.alert", "location": {"lat": place.lat, "lon": place.lon},
            "data": {"camera_id": f"cam-{place.address_code}", "alert_type": "exposed_garbage", "confidence": 0.8}}


def accepted(case_id):
    return {"type": "case.status.updated", "data": {"case_id": case_id, "status": "accepted"}}


@pytest.mark.xfail(
    reason="Known fault, open in issues 3 and 6: on the embedded broker the faust case stage can lose "
    "outputs across a restart (faust may commit an input offset before its producer buffer drained, and "
    "its table recovery stops at Tansu's understated high watermark). Kept running so a fix shows as XPASS.",
    strict=False,
)
def test_sigterm_mid_stream_loses_no_case_state_and_duplicates_nothing(bus, pipeline):
    spots = places(bus)
    hotline, police, citymgmt = Publisher(bus, "hotline12345"), Publisher(bus, "police"), Publisher(bus, "citymgmt")
    calls: list[str] = []
    cameras: dict[str, str] = {}  # camera report id -> the call it duplicates
    statuses: dict[str, str] = {}  # status id -> call id

    def stream():
        for i, place in enumerate(spots):
            calls.append(hotline.publish(call(place)))
            if i >= 5:
                cameras[police.publish(camera(spots[i - 5]))] = calls[i - 5]
            if i >= 10:
                statuses[citymgmt.publish(accepted(calls[i - 10]))] = calls[i - 10]
            threading.Event().wait(0.1)

    publishing = threading.Thread(target=stream)
    publishing.start()
    dist = bus.topology.name(DIST_EVENTS)
    read_topic(bus, dist, until=lambda m: len(m) >= 15, timeout_s=90)
    assert pipeline.stop("cases") == 0, pipeline.logs()  # SIGTERM while the stream flows
    pipeline.start("cases")
    publishing.join(60)
    # after the restart: a duplicate of a case opened before it, a status for another
    cameras[police.publish(camera(spots[0]))] = calls[0]
    statuses[citymgmt.publish(accepted(calls[1]))] = calls[1]
    expected = set(calls) | set(cameras) | set(statuses)
    records = read_topic(bus, dist, until=lambda m: expected <= {r.key().decode() for r in m}, timeout_s=120)

    copies = defaultdict(set)
    for record in records:
        event = bus.serde.decode(record.value(), record.topic())
        copies[event["id"]].add((event["correlation_id"], tuple(event["targets"])))
    assert all(len(versions) == 1 for versions in copies.values()), "a re-emitted event differs from the first"
    case_of = {event_id: next(iter(versions))[0] for event_id, versions in copies.items()}
    # one case per incident (whichever of its reports ingest passed on first opened it), none split or merged
    assert len({case_of[c] for c in calls}) == INCIDENTS
    assert all(case_of[c] == case_of[cameras[c]] for c in cameras)  # duplicates joined, before and after the restart
    assert all(case_of[s] == case_of[statuses[s]] for s in statuses)
    assert read_topic(bus, bus.topology.name(DLQ)) == []  # no status found its case missing
    hotline_feed = [r.key().decode() for r in read_topic(bus, bus.topology.feed("hotline12345"), until=lambda m: len(m) >= len(statuses))]
    assert sorted(hotline_feed) == sorted(statuses)  # each status relayed to the originator once
    for publisher in (hotline, police, citymgmt):
        publisher.close()
