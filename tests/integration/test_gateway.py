"""The HTTP gateway on a real broker, through FastAPI's TestClient."""

from __future__ import annotations

import json
import threading
import uuid
from urllib.parse import quote
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from civicbus.audit import AuditRecord, decode_entry
from civicbus.broker import EmbeddedBroker
from civicbus.cli import app as cli
from civicbus.kafka import make_producer
from civicbus.lag.exporter import build_exporter
from civicbus.tokens import TokenStore
from civicbus.topology import AUDIT
from civicbus.wire import masked_header
from consumers.feed_position import FeedPosition
from consumers.gateway.app import MAX_BODY_BYTES, create_app
from consumers.subscriber import FeedSubscriber
from tests.support import case_report, headers_of, produce_signed, read_topic, wait_for


@pytest.fixture
def gateway(bus, tmp_path):
    bus.settings.state_dir = tmp_path
    with TestClient(create_app(bus)) as client:
        yield client


def bearer(bus, department: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TokenStore(bus.settings.state_dir).issue(department)}"}


def offsets(cursor: str) -> dict[int, int]:
    """The offsets of a cursor (which also carries the feed's epoch)."""
    return FeedPosition.parse(cursor).positions


def feed_event(bus, **overrides) -> dict:
    event = {**case_report(reporter_name="***", reporter_phone=None), "id": str(uuid.uuid4()), "source": "citymgmt",
             "time": datetime.now(timezone.utc), "classification": "INTERNAL", "targets": ["citymgmt"]}
    return bus.catalog.validate({**event, **overrides})


def seed_feed(bus, department: str, count: int, timestamp_ms: int | None = None, masked: tuple[str, ...] = ()) -> list[str]:
    """Write events into a feed as the fan-out would; returns their ids."""
    producer = make_producer(bus.bootstrap)
    topic = bus.topology.feed(department)
    ids = []
    for _ in range(count):
        event = feed_event(bus, targets=[department])
        value, headers = bus.serde.encode(event, topic)
        extra = [masked_header(masked)] if masked else []
        produce_signed(bus, producer, topic, value, event["id"].encode(), headers + extra, timestamp=timestamp_ms or 0)
        ids.append(event["id"])
    producer.flush(10)
    return ids


def test_every_cross_department_path_is_refused_and_leaks_nothing(bus, gateway):
    seeded = {d: seed_feed(bus, d, 1)[0] for d in ("citymgmt", "police", "hotline12345")}
    citymgmt = bearer(bus, "citymgmt")
    revoked = bearer(bus, "ecoenv")
    TokenStore(bus.settings.state_dir).revoke("ecoenv")
    attempts = {
        "no token": gateway.get("/v1/feeds/police/events"),
        "not a bearer": gateway.get("/v1/feeds/police/events", headers={"Authorization": "Basic cG9saWNlOnB3"}),
        "wrong token": gateway.get("/v1/feeds/police/events", headers={"Authorization": "Bearer cbt_guessed"}),
        "removed token": gateway.get("/v1/feeds/ecoenv/events", headers=revoked),
        "another feed": gateway.get("/v1/feeds/police/events", headers=citymgmt),
        "another stream": gateway.get("/v1/feeds/police/stream", headers=citymgmt),
        "unknown feed": gateway.get("/v1/feeds/ministry/events", headers=citymgmt),
        "forged source": gateway.post("/v1/events", json={**case_report(), "source": "police"}, headers=citymgmt),
        "type not granted": gateway.post("/v1/events", json={"type": "hotline.request.received", "data": {}}, headers=citymgmt),
        "publish without token": gateway.post("/v1/events", json=case_report()),
        "catalog without token": gateway.get("/v1/catalog"),
        "asyncapi without token": gateway.get("/v1/asyncapi.json"),
    }
    statuses = {name: response.status_code for name, response in attempts.items()}
    assert statuses == {
        "no token": 401, "not a bearer": 401, "wrong token": 401, "removed token": 401, "another feed": 403,
        "another stream": 403, "unknown feed": 403, "forged source": 403, "type not granted": 403,
        "publish without token": 401, "catalog without token": 401, "asyncapi without token": 401,
    }
    for name, response in attempts.items():
        assert not any(event_id in response.text for event_id in seeded.values()), name
        assert response.json()["detail"], name  # says why
    assert attempts["no token"].headers["www-authenticate"] == "Bearer"
    inbound = [bus.topology.inbound(d) for d in ("citymgmt", "police")]
    assert read_topic(bus, inbound + [bus.topology.name(AUDIT)], idle_s=1.0) == []  # nothing published, nothing delivered


def test_publish_answers_202_after_the_broker_acknowledged(bus, gateway):
    response = gateway.post("/v1/events", json=case_report(), headers=bearer(bus, "citymgmt"))
    assert response.status_code == 202
    event_id = response.json()["id"]
    [record] = read_topic(bus, bus.topology.inbound("citymgmt"), until=lambda m: len(m) >= 1)
    event = bus.serde.decode(record.value(), record.topic())
    assert event["id"] == event_id and event["source"] == "citymgmt" and event["classification"] == "INTERNAL"
    assert headers_of(record)["ce_source"] == b"urn:civicbus:dept:citymgmt"


@pytest.mark.parametrize(
    "body, content_type, status, field",
    [
        (b"{not json", "application/json", 422, "(body)"),
        (b"[1, 2]", "application/json", 422, "(body)"),
        (json.dumps({**case_report(), "data": {"category": 7}}).encode(), "application/json", 422, "data.category"),
        (json.dumps({**case_report(), "time": "yesterday"}).encode(), "application/json", 422, "time"),
        (json.dumps({**case_report(), "type": "city.case.invented"}).encode(), "application/json", 422, "type"),
        (json.dumps({**case_report(), "type": 5}).encode(), "application/json", 422, "type"),
        (json.dumps({**case_report(), "location": {"lat": 95, "lon": 0}}).encode(), "application/json", 422, "location"),
        (b'{"type": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}', "application/json", 413, None),
        (b"type=city.case.reported", "application/x-www-form-urlencoded", 422, None),
    ],
)
def test_bad_requests_get_clear_4xx(bus, gateway, body, content_type, status, field):
    response = gateway.post("/v1/events", content=body, headers={**bearer(bus, "citymgmt"), "content-type": content_type})
    assert response.status_code == status, response.text
    if field is not None:
        assert field in [e["field"] for e in response.json()["detail"]], response.json()


@pytest.mark.parametrize(
    "query, field",
    [("limit=0", "limit"), ("limit=100000", "limit"), ("wait=-1", "wait"), ("wait=abc", "wait"), ("cursor=abc", "cursor"),
     ("cursor=0:-5", "cursor"), ("cursor=7:0", "cursor"), ("cursor=0:1&since=2026-01-01T00:00:00Z", "since"), ("since=noon", "since")],
)
def test_bad_feed_queries_name_the_parameter(bus, gateway, query, field):
    response = gateway.get(f"/v1/feeds/citymgmt/events?{query}", headers=bearer(bus, "citymgmt"))
    assert response.status_code == 422 and [e["field"] for e in response.json()["detail"]] == [field], response.text


@pytest.mark.parametrize("query, field", [("cursor=abc", "cursor"), ("cursor=0:1&since=2026-01-01T00:00:00Z", "since")])
def test_a_bad_stream_request_is_refused_before_streaming(bus, gateway, query, field):
    with gateway.stream("GET", f"/v1/feeds/citymgmt/stream?{query}", headers=bearer(bus, "citymgmt")) as response:
        assert response.status_code == 422 and field in response.read().decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["city.case.reported", "hotline.request.received", "x"]) | json_values},
    optional={"data": json_values | st.fixed_dictionaries({}, optional={"category": json_values, "subcategory": json_values, "description": json_values}),
              "location": json_values, "time": json_values, "id": json_values, "source": json_values, "classification": json_values},
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values.map(json.dumps), event_like.map(json.dumps), st.binary(max_size=200)), query=st.text(max_size=30))
def test_no_request_gets_a_500(bus, gateway, body, query):
    headers = {**bearer(bus, "citymgmt"), "content-type": "application/json"}
    assert gateway.post("/v1/events", content=body, headers=headers).status_code < 500
    assert gateway.get("/v1/feeds/citymgmt/events", params={"cursor": query, "limit": 1}, headers=headers).status_code < 500
    assert gateway.get(f"/v1/feeds/{quote(query, safe='')}/events", headers=headers).status_code < 500


def test_feed_pages_by_cursor_long_polls_and_every_read_is_audited(bus, gateway):
    auth = bearer(bus, "citymgmt")
    ids = seed_feed(bus, "citymgmt", 5, masked=("reporter_name",))
    pages, cursor = [], None
    while True:
        response = gateway.get("/v1/feeds/citymgmt/events", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=auth)
        assert response.status_code == 200
        page = response.json()
        cursor = page["cursor"]
        if not page["events"]:
            break
        pages.append([e["id"] for e in page["events"]])
    assert [i for p in pages for i in p] == ids and max(len(p) for p in pages) == 2 and offsets(cursor) == {0: 5}
    assert response.json()["events"] == []

    later = {}
    waiting = threading.Thread(target=lambda: later.setdefault("r", gateway.get("/v1/feeds/citymgmt/events", params={"cursor": cursor, "wait": 30}, headers=auth)))
    waiting.start()
    [new_id] = seed_feed(bus, "citymgmt", 1)
    waiting.join(60)
    assert [e["id"] for e in later["r"].json()["events"]] == [new_id] and offsets(later["r"].json()["cursor"]) == {0: 6}

    def delivery_records(messages):
        return [e for e in map(decode_entry, (m.value() for m in messages)) if isinstance(e, AuditRecord)]

    records = delivery_records(read_topic(bus, bus.topology.name(AUDIT), until=lambda m: len(delivery_records(m)) >= 6))
    assert [r.event_id for r in records] == ids + [new_id]
    assert {(d.department, r.path) for r in records for d in r.deliveries} == {("citymgmt", "gateway")}
    assert [d.masked_fields for r in records for d in r.deliveries] == [("reporter_name",)] * 5 + [()]


def test_replay_from_a_time_or_an_offset_through_gateway_and_sdk(bus, gateway):
    now = datetime.now(timezone.utc)
    old = seed_feed(bus, "citymgmt", 2, timestamp_ms=int((now - timedelta(hours=2)).timestamp() * 1000))
    recent = seed_feed(bus, "citymgmt", 2, timestamp_ms=int(now.timestamp() * 1000))
    auth = bearer(bus, "citymgmt")
    since = (now - timedelta(hours=1)).isoformat()
    by_time = gateway.get("/v1/feeds/citymgmt/events", params={"since": since}, headers=auth).json()
    assert [e["id"] for e in by_time["events"]] == recent and offsets(by_time["cursor"]) == {0: 4}
    by_offset = gateway.get("/v1/feeds/citymgmt/events", params={"cursor": "0:1"}, headers=auth).json()
    assert [e["id"] for e in by_offset["events"]] == old[1:] + recent

    def first(start, count):
        got = []
        with FeedSubscriber(bus, "citymgmt", group_id=bus.topology.group(f"dept.citymgmt.{uuid.uuid4().hex[:6]}"), start=start) as feed:
            for item in feed:
                got.append(item.id)
                if len(got) == count:
                    return got

    assert first(now - timedelta(hours=1), 2) == recent
    assert first(1, 3) == old[1:] + recent


def test_catalog_and_asyncapi_follow_schemas_and_policy(bus, gateway):
    auth = bearer(bus, "police")
    types = {t["type"]: t for t in gateway.get("/v1/catalog", headers=auth).json()["event_types"]}
    assert set(types) == set(bus.catalog.types)
    hotline = types["hotline.request.received"]
    assert hotline["classification"] == "RESTRICTED" and hotline["personal_fields"] == ["caller_name", "caller_phone"]
    assert hotline["publishers"] == ["hotline12345"] and set(hotline["receivers"]["by_grant"]) == {"police", "petition"}
    assert "street.dongcheng.andingmen" in hotline["receivers"]["when_dispatched"]  # work orders reach the offices
    # CONFIDENTIAL: cleared are the petitions bureau, which owns petitions, and the triage desk
    assert set(types["petition.filed"]["receivers"]["when_dispatched"]) == {"petition", "triage"}
    document = gateway.get("/v1/asyncapi.json", headers=auth).json()
    assert document["asyncapi"] == "3.0.0"

    def resolve(ref: str):
        node = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return resolve(node["$ref"]) if "$ref" in node else node

    refs = []

    def collect(node):
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    assert refs and all(resolve(ref) for ref in refs)
    publish = document["operations"]["publish.hotline12345"]
    assert publish["action"] == "send" and resolve(publish["channel"]["$ref"])["address"] == bus.topology.inbound("hotline12345")
    assert {resolve(m["$ref"])["name"] for m in publish["messages"]} == {"hotline.request.received", "case.status.updated"}
    assert resolve(document["operations"]["receive.police"]["channel"]["$ref"])["address"] == bus.topology.feed("police")


def test_health_metrics_and_openapi_need_no_token(bus, gateway):
    assert gateway.get("/healthz").json() == {"status": "ok"}
    gateway.get("/v1/catalog")
    assert 'civicbus_gateway_requests_total{route="/v1/catalog",status="401"}' in gateway.get("/metrics").text
    paths = gateway.get("/openapi.json").json()["paths"]
    assert {"/v1/events", "/v1/feeds/{agency}/events", "/v1/feeds/{agency}/stream", "/v1/catalog", "/v1/asyncapi.json"} <= set(paths)


def test_acl_apply_refuses_the_embedded_broker_before_sending_anything():
    with EmbeddedBroker() as broker:  # whichever broker the session uses, this one is Tansu
        result = CliRunner().invoke(cli, ["acl", "apply"], env={"CIVICBUS_BOOTSTRAP": broker.bootstrap})
        assert result.exit_code == 1 and "has no ACLs: nothing applied" in result.output
        assert AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5).brokers  # still answering


def test_http_readers_lag_shows_in_the_exporter_under_the_departments_gateway_group(bus, gateway):
    for _ in range(5):
        seed_feed(bus, "citymgmt", 1)  # one record per batch: the embedded broker's end is exact then
    page = gateway.get("/v1/feeds/citymgmt/events", params={"limit": 3}, headers=bearer(bus, "citymgmt")).json()
    assert len(page["events"]) == 3
    exporter = build_exporter(bus.settings, bus.bootstrap, window=2)
    group, topic = bus.topology.department_group_prefix("citymgmt") + "gateway", bus.topology.feed("citymgmt")
    wait_for(lambda: exporter.poll().group(group) is not None, 10, "the gateway's commit")
    registry = CollectorRegistry()
    registry.register(exporter)
    text = generate_latest(registry).decode()
    assert f'kafka_consumergroup_group_lag{{group="{group}",partition="0",topic="{topic}"}} 2.0' in text
    gateway.get("/v1/feeds/citymgmt/events", params={"cursor": page["cursor"]}, headers=bearer(bus, "citymgmt"))
    wait_for(lambda: exporter.poll().group(group).sum_lag == 0, 10, "the lag to reach 0 once read to the end")


def test_an_http_reader_at_the_end_of_a_transactional_feed_shows_lag_0(bus, gateway):
    """A feed written in transactions (as the fan-out wrote them before it committed at least
    once): the commit marker takes an offset, so the cursor (and the committed position) must move
    past it, or a reader that is done would show lag 1."""
    topic = bus.topology.feed("citymgmt")
    producer = make_producer(bus.bootstrap, **{"transactional.id": bus.topology.group(f"fanout-like-{uuid.uuid4().hex[:6]}")})
    producer.init_transactions(10)
    producer.begin_transaction()
    for _ in range(3):
        event = feed_event(bus)
        value, headers = bus.serde.encode(event, topic)
        produce_signed(bus, producer, topic, value, event["id"].encode(), headers)
    producer.commit_transaction(10)
    page = gateway.get("/v1/feeds/citymgmt/events", headers=bearer(bus, "citymgmt")).json()
    assert len(page["events"]) == 3
    if offsets(page["cursor"]) == {0: 3}:  # the marker had not been fetched with the records
        page = gateway.get("/v1/feeds/citymgmt/events", params={"cursor": page["cursor"]}, headers=bearer(bus, "citymgmt")).json()
    assert page["events"] == [] and offsets(page["cursor"]) == {0: 4}  # past the marker at offset 3
    exporter = build_exporter(bus.settings, bus.bootstrap, window=2)
    group = bus.topology.department_group_prefix("citymgmt") + "gateway"
    wait_for(lambda: (found := exporter.poll().group(group)) is not None and found.sum_lag == 0, 10, "lag 0")


def test_a_classification_below_the_floor_is_403_and_a_reused_id_409(bus, gateway):
    petition = {"type": "petition.filed", "classification": "PUBLIC", "location": {"raw_address": "东城区安定门内大街1号"},
                "data": {"issue": "wage_arrears", "channel": "visit", "summary": "欠薪", "petitioner_name": "王伟"}}
    refused = gateway.post("/v1/events", json=petition, headers=bearer(bus, "petition"))
    assert refused.status_code == 403 and refused.json()["detail"][0]["field"] == "classification"
    event_id = str(uuid.uuid4())
    first = gateway.post("/v1/events", json={**case_report(), "id": event_id}, headers=bearer(bus, "citymgmt"))
    assert first.status_code == 202
    again = gateway.post("/v1/events", json={**case_report(), "id": event_id}, headers=bearer(bus, "citymgmt"))
    assert again.status_code == 202  # the same body once more (its first answer lost): a harmless retry
    assert same_event_twice(bus, event_id)
    other = gateway.post("/v1/events", json={**case_report(description="另一处"), "id": event_id}, headers=bearer(bus, "citymgmt"))
    assert other.status_code == 409 and "other content" in other.json()["detail"]
    camera = {"type": "security.video.alert", "id": event_id, "location": {"lat": 39.9475, "lon": 116.4075},
              "data": {"camera_id": "cam-1", "alert_type": "exposed_garbage", "confidence": 0.9}}
    taken = gateway.post("/v1/events", json=camera, headers=bearer(bus, "police"))
    assert taken.status_code == 409 and "belongs to citymgmt" in taken.json()["detail"]


def same_event_twice(bus, event_id: str) -> bool:
    """Both records of a retried post on the inbound topic are the same event, time included (the
    gateway gave the first its time and the retry carried none)."""
    records = read_topic(bus, bus.topology.inbound("citymgmt"), until=lambda m: sum(r.key().decode() == event_id for r in m) == 2)
    first, again = (bus.serde.decode(r.value(), r.topic()) for r in records if r.key().decode() == event_id)
    return first == again
