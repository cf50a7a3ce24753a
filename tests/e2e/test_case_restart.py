"""The case stage stopped with SIGTERM mid-stream and restarted: no case lost, none doubled.

The case table is restored from its changelog (to its real end: see ChangeloggedStore); inputs
seen again are re-emitted with the same ids, and civic.dist.events holds every case event once
after dedup by id. Statuses are sent only for calls already delivered, as a department answers
only what reached it (across topics, an earlier answer could overtake its call in ingest).
"""

import threading
import uuid
from collections import defaultdict

from confluent_kafka import Consumer, TopicPartition

from civicbus.config import load_gazetteer
from civicbus.topology import DIST_EVENTS, DLQ
from producers.sdk import Publisher
from tests.support import read_topic, wait_for

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


class Delivered:
    """Ids seen on civic.dist.events so far: a department answers only a case that reached it."""

    def __init__(self, bus):
        self._consumer = Consumer({"bootstrap.servers": bus.bootstrap, "group.id": uuid.uuid4().hex, "enable.auto.commit": False})
        self._consumer.assign([TopicPartition(bus.topology.name(DIST_EVENTS), 0, 0)])
        self.ids: set[str] = set()

    def refresh(self) -> set[str]:
        for message in self._consumer.consume(500, 0.05):
            if not message.error():
                self.ids.add(message.key().decode())
        return self.ids

    def close(self) -> None:
        self._consumer.close()


def test_sigterm_mid_stream_loses_no_case_state_and_duplicates_nothing(bus, pipeline):
    spots = places(bus)
    hotline, police, citymgmt = Publisher(bus, "hotline12345"), Publisher(bus, "police"), Publisher(bus, "citymgmt")
    calls: list[str] = []
    cameras: dict[str, str] = {}  # camera report id -> the call it duplicates
    statuses: dict[str, str] = {}  # status id -> call id
    delivered = Delivered(bus)

    def answer_delivered_calls():
        for c in [c for c in calls if c in delivered.refresh() and c not in statuses.values()][:2]:
            statuses[citymgmt.publish(accepted(c))] = c

    def stream():
        for i, place in enumerate(spots):
            calls.append(hotline.publish(call(place)))
            if i >= 5:
                cameras[police.publish(camera(spots[i - 5]))] = calls[i - 5]
            answer_delivered_calls()
            threading.Event().wait(0.1)

    publishing = threading.Thread(target=stream)
    publishing.start()
    dist = bus.topology.name(DIST_EVENTS)
    read_topic(bus, dist, until=lambda m: len(m) >= 15, timeout_s=90)
    assert pipeline.stop("cases") == 0, pipeline.logs()  # SIGTERM while the stream flows
    pipeline.start("cases")
    publishing.join(60)
    # after the restart: a duplicate of a case opened before it, and the answers still due
    cameras[police.publish(camera(spots[0]))] = calls[0]
    wait_for(lambda: answer_delivered_calls() or len(statuses) == INCIDENTS, 120, "every call delivered and answered")
    delivered.close()
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
    hotline_feed = [r.key().decode() for r in read_topic(bus, bus.topology.feed("hotline12345"), until=lambda m: len(m) >= len(statuses), timeout_s=90)]
    assert sorted(hotline_feed) == sorted(statuses)  # each status relayed to the originator once
    for publisher in (hotline, police, citymgmt):
        publisher.close()
