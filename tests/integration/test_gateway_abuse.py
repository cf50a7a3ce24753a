"""The gateway under abuse and after resets, on a real broker through FastAPI's TestClient."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from confluent_kafka.admin import NewTopic
from fastapi.testclient import TestClient

from civicbus.broker import EmbeddedBroker, free_port
from civicbus.context import BusContext
from civicbus.kafka import apply_topics, make_admin
from civicbus.quirks import LISTING_SAMPLES_NEEDED, ListingWait
from consumers.feed_position import FeedPosition, FeedResetError
from consumers.gateway.app import create_app
from consumers.subscriber import FeedSubscriber
from tests.conftest import make_settings
from tests.integration.test_gateway import bearer, seed_feed
from tests.support import case_report, private_config, wait_for


@pytest.fixture
def gateway(bus, tmp_path):
    bus.settings.state_dir = tmp_path
    with TestClient(create_app(bus)) as client:
        yield client


def limited_bus(bus, tmp_path, limits: str) -> BusContext:
    """The test's namespace with a private policy whose rate_limits default is `limits`."""
    config = private_config(tmp_path)
    policy = config / "policy.yaml"
    text = policy.read_text(encoding="utf-8")
    default = next(line for line in text.splitlines() if line.startswith("  default:"))
    policy.write_text(text.replace(default, f"  default: {limits}"), encoding="utf-8")
    return BusContext(bus.settings.model_copy(update={"config": config, "state_dir": tmp_path}))


@pytest.mark.parametrize(
    "query, field",
    [("cursor=0:9223372036854775808", "cursor"), ("cursor=9999999999:0", "cursor"), ("since=1900-01-01T00:00:00Z", "since"),
     ("since=-1", "since"), ("cursor=%ED%A0%80", "cursor"), ("cursor=0:1.0:2", "cursor")],
)
def test_hostile_feed_queries_get_a_4xx_naming_the_field(bus, gateway, query, field):
    response = gateway.get(f"/v1/feeds/citymgmt/events?{query}", headers=bearer(bus, "citymgmt"))
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["detail"]] == [field]


@pytest.mark.parametrize("where", ["data.description", "location.raw_address", "subject"])
def test_a_lone_surrogate_in_any_string_is_a_422_naming_it(bus, gateway, where):
    event = case_report()
    section, _, name = where.rpartition(".")
    (event.setdefault(section, {}) if section else event)[name] = "坑\ud800洼"
    body = json.dumps(event)  # ensure_ascii: the surrogate travels as the escape \ud800
    assert "\\ud800" in body
    response = gateway.post("/v1/events", content=body, headers={**bearer(bus, "citymgmt"), "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["detail"]] == [where]


def test_a_body_over_the_event_limit_is_refused_at_the_door(bus, gateway):
    headers = {**bearer(bus, "citymgmt"), "content-type": "application/json"}
    unparseable = b"{" * 300_000  # 413 and not 422: refused before it is parsed
    assert gateway.post("/v1/events", content=unparseable, headers=headers).status_code == 413
    oversize = case_report(description="路" * 100_000)  # 300 KB of UTF-8
    response = gateway.post("/v1/events", content=json.dumps(oversize, ensure_ascii=False).encode(), headers=headers)
    assert response.status_code == 413


@pytest.mark.parametrize(
    "moved, status",
    [(timedelta(minutes=-30), 202), (timedelta(days=-31), 422), (timedelta(hours=1), 422), (None, 422)],
)
def test_event_times_outside_the_window_get_422(bus, gateway, moved, status):
    time_ = "0001-01-01T00:00:00Z" if moved is None else (datetime.now(timezone.utc) + moved).isoformat()
    response = gateway.post("/v1/events", json={**case_report(), "time": time_}, headers=bearer(bus, "citymgmt"))
    assert response.status_code == status, response.text
    if status == 422:
        assert [e["field"] for e in response.json()["detail"]] == ["time"]


def test_publishes_beyond_the_departments_rate_get_429_with_retry_after(bus, tmp_path):
    ctx = limited_bus(bus, tmp_path, "{publish_per_s: 1, publish_burst: 3, concurrent_reads: 32}")
    with TestClient(create_app(ctx)) as client:
        citymgmt, police = bearer(ctx, "citymgmt"), bearer(ctx, "police")
        statuses = [client.post("/v1/events", json=case_report(), headers=citymgmt).status_code for _ in range(4)]
        assert statuses == [202, 202, 202, 429]
        refused = client.post("/v1/events", json=case_report(), headers=citymgmt)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1 and "citymgmt" in refused.json()["detail"]
        assert client.post("/v1/events", json=case_report(), headers=police).status_code == 202  # per department
        time.sleep(1.1)
        assert client.post("/v1/events", json=case_report(), headers=citymgmt).status_code == 202  # refilled


def test_concurrent_feed_reads_of_one_department_are_bounded(bus, tmp_path):
    ctx = limited_bus(bus, tmp_path, "{publish_per_s: 50, publish_burst: 100, concurrent_reads: 2}")
    with TestClient(create_app(ctx)) as client:
        auth = bearer(ctx, "citymgmt")
        answers: list[int] = []
        waiting = [threading.Thread(target=lambda: answers.append(client.get("/v1/feeds/citymgmt/events", params={"wait": 6}, headers=auth).status_code))
                   for _ in range(2)]
        for thread in waiting:
            thread.start()
        time.sleep(2)  # both long-polls are open
        third = client.get("/v1/feeds/citymgmt/events", headers=auth)
        assert third.status_code == 429 and third.headers["retry-after"] == "1"
        assert client.get("/v1/feeds/police/events", headers=bearer(ctx, "police")).status_code == 200  # other departments unaffected
        for thread in waiting:
            thread.join(30)
        assert answers == [200, 200]
        assert client.get("/v1/feeds/citymgmt/events", headers=auth).status_code == 200  # slots released


def test_feed_readers_are_pooled_and_all_closed(bus, gateway):
    departments = ("citymgmt", "police", "ecoenv")
    for department in departments:
        seed_feed(bus, department, 3)
    for round_ in range(8):
        for department in departments:
            cursor = None if round_ % 2 else "0:1"
            response = gateway.get("/v1/feeds/%s/events" % department, params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=bearer(bus, department))
            assert response.status_code == 200 and response.json()["events"]
    reader = gateway.app.state.feed_reader
    assert 1 <= reader.open_readers <= len(departments)  # 24 reads, one consumer per feed kept
    gateway.__exit__(None, None, None)
    assert reader.open_readers == 0


def test_a_feed_whose_listing_slows_is_read_by_a_reader_with_a_longer_wait(bus, gateway):
    """civicbus.quirks 10: a pooled reader whose wait is below what the feed's listing now needs
    is replaced, and the page is still whole."""
    ids = seed_feed(bus, "citymgmt", 4)
    auth = bearer(bus, "citymgmt")
    first = gateway.get("/v1/feeds/citymgmt/events", params={"limit": 2}, headers=auth).json()
    reader = gateway.app.state.feed_reader
    topic = bus.topology.feed("citymgmt")
    [pooled] = reader._idle[topic]
    assert pooled.wait_ms == 100  # a quick listing: FEED_READER_FETCH_WAIT_MS
    listing = ListingWait(100)
    for _ in range(LISTING_SAMPLES_NEEDED):
        listing.timed(0.2)  # as when listing the feed takes 200 ms
    reader._listings[topic] = (listing, time.monotonic())
    rest = gateway.get("/v1/feeds/citymgmt/events", params={"cursor": first["cursor"]}, headers=auth).json()
    assert [e["id"] for e in first["events"] + rest["events"]] == ids
    assert [r.wait_ms for r in reader._idle[topic]] == [800]
    assert reader.open_readers == 1  # the 100 ms reader was closed


def recreate_feed(bus, department: str) -> None:
    """What an operator's delete-and-create does to a feed; a new embedded broker does the same to
    every feed. No consumer that has read the topic may live across it: librdkafka 2.16's
    consumers crash (SIGSEGV) on the embedded broker when a topic they know is recreated."""
    admin, topic = make_admin(bus.bootstrap), bus.topology.feed(department)
    admin.delete_topics([topic])[topic].result()
    wait_for(lambda: topic not in admin.list_topics(timeout=5).topics, 30, "the topic to go")
    spec = next(s for s in bus.topology.specs() if s.name == topic)
    admin.create_topics([NewTopic(topic, spec.partitions, config=spec.config)])[topic].result()


def test_a_cursor_from_before_the_feed_was_reset_answers_409_never_a_skip(bus, tmp_path):
    bus.settings.state_dir = tmp_path
    auth = bearer(bus, "citymgmt")
    seed_feed(bus, "citymgmt", 3)
    with TestClient(create_app(bus)) as before_the_reset:
        before = before_the_reset.get("/v1/feeds/citymgmt/events", headers=auth).json()
    assert len(before["events"]) == 3
    recreate_feed(bus, "citymgmt")
    after = seed_feed(bus, "citymgmt", 5)

    with TestClient(create_app(bus)) as gateway:
        refused = gateway.get("/v1/feeds/citymgmt/events", params={"cursor": before["cursor"]}, headers=auth)
        assert refused.status_code == 409 and "reset" in refused.json()["detail"] and "without a cursor" in refused.json()["detail"]
        with gateway.stream("GET", "/v1/feeds/citymgmt/stream", headers={**auth, "Last-Event-ID": before["cursor"]}) as stream:
            assert stream.status_code == 409 and "reset" in stream.read().decode()
        beyond = gateway.get("/v1/feeds/citymgmt/events", params={"cursor": "0:50"}, headers=auth)
        assert beyond.status_code == 409 and "beyond the end" in beyond.json()["detail"]
        resumed = gateway.get("/v1/feeds/citymgmt/events", headers=auth).json()  # as the message says
        assert [e["id"] for e in resumed["events"]] == after


def test_the_subscriber_sdk_raises_on_a_position_from_before_a_reset(bus):
    seed_feed(bus, "citymgmt", 2)
    group = bus.topology.group(f"dept.citymgmt.{uuid.uuid4().hex[:6]}")
    with FeedSubscriber(bus, "citymgmt", group_id=group, start=0) as feed:
        cursor = next(iter(feed)).cursor
    assert FeedPosition.parse(cursor).positions == {0: 1}
    recreate_feed(bus, "citymgmt")
    seed_feed(bus, "citymgmt", 4)
    with pytest.raises(FeedResetError, match="reset"):  # a saved position from before
        FeedSubscriber(bus, "citymgmt", group_id=group, start=cursor)
    with pytest.raises(FeedResetError, match="beyond the end"):
        FeedSubscriber(bus, "citymgmt", group_id=group, start=40)
    with FeedSubscriber(bus, "citymgmt", group_id=group, start=1) as feed:  # within the new feed: fine
        assert next(iter(feed)).offset == 1


def test_a_position_at_the_end_of_a_batch_the_broker_reports_short_is_within_the_feed(bus, tmp_path):
    """The fan-out writes a feed one batch per commit, and the embedded broker reports the end as
    the last batch's base offset + 1: a reader that read the whole batch is at the end, not beyond."""
    bus.settings.state_dir = tmp_path
    seeded = seed_feed(bus, "citymgmt", 5)  # one flush: one batch
    group = bus.topology.group(f"dept.citymgmt.{uuid.uuid4().hex[:6]}")
    with FeedSubscriber(bus, "citymgmt", group_id=group, start=4) as feed:
        assert next(iter(feed)).event["id"] == seeded[4]
    FeedSubscriber(bus, "citymgmt", group_id=group, start=5).close()  # the end: no FeedResetError
    with pytest.raises(FeedResetError, match="beyond the end"):
        FeedSubscriber(bus, "citymgmt", group_id=group, start=6)
    with TestClient(create_app(bus)) as gateway:
        at_end = gateway.get("/v1/feeds/citymgmt/events", params={"cursor": "0:5"}, headers=bearer(bus, "citymgmt"))
        assert at_end.status_code == 200 and at_end.json()["events"] == []
        beyond = gateway.get("/v1/feeds/citymgmt/events", params={"cursor": "0:6"}, headers=bearer(bus, "citymgmt"))
        assert beyond.status_code == 409 and "beyond the end" in beyond.json()["detail"]


def test_a_new_embedded_broker_is_a_reset_for_the_running_gateway_and_subscriber(tmp_path):
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    try:
        ctx = BusContext(make_settings(broker.bootstrap, state_dir=tmp_path))
        apply_topics(ctx.bootstrap, ctx.topology.specs())
        seed_feed(ctx, "citymgmt", 3)
        auth = bearer(ctx, "citymgmt")
        group = ctx.topology.group("dept.citymgmt.restart")
        with TestClient(create_app(ctx)) as gateway, FeedSubscriber(ctx, "citymgmt", group_id=group, start=0) as feed:
            before = gateway.get("/v1/feeds/citymgmt/events", headers=auth).json()
            assert len(before["events"]) == 3
            assert next(iter(feed)).offset == 0
            broker.stop()  # memory only: everything is gone
            broker = EmbeddedBroker(port=port).start()
            apply_topics(ctx.bootstrap, ctx.topology.specs())
            seed_feed(ctx, "citymgmt", 5)
            with pytest.raises(FeedResetError, match="reset"):  # not offsets 1.. of the new feed
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    feed.poll()
            refused = gateway.get("/v1/feeds/citymgmt/events", params={"cursor": before["cursor"]}, headers=auth)
            assert refused.status_code == 409 and "reset" in refused.json()["detail"]
            # (reading on from the oldest is shown above on a recreated topic: here the gateway's
            # idempotent producer, which writes the audit, does not survive the broker's restart)
    finally:
        broker.stop()
