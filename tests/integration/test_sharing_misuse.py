"""Sharing by rule against misuse, through the real ingest, case stage and fan-out on the broker:
a department trying to see or change more than it may (the probes of issue 11)."""

from __future__ import annotations

import uuid

import pytest

from civicbus.wire import read_masked
from civicbus.context import BusContext
from civicbus.wire import read_dead_letter
from civicbus.kafka import apply_topics
from civicbus.topology import DIST_EVENTS, DLQ
from producers.sdk import Publisher
from tests.conftest import make_settings
from tests.support import PipelineProcesses, read_topic

XICHENG = {"raw_address": "西城区金融大街5号"}
ANDINGMEN = {"raw_address": "东城区安定门内大街1号", "lat": 39.9475, "lon": 116.4075}
STREETLIGHT = {"category": "municipal_facilities", "subcategory": "broken_streetlight", "description": "路灯不亮"}


@pytest.fixture(scope="module")
def city(broker_bootstrap):
    """The sample city with its three stages running, shared by the probes (their ids differ)."""
    ctx = BusContext(make_settings(broker_bootstrap))
    apply_topics(ctx.bootstrap, ctx.topology.specs())
    stages = PipelineProcesses(ctx)
    stages.start_all()
    yield ctx
    assert stages.stop_all() == {"fanout": 0, "cases": 0, "ingest": 0}, stages.logs()


def publish(ctx: BusContext, department: str, event: dict) -> str:
    with Publisher(ctx, department) as publisher:
        return publisher.publish(event)


def feed(ctx: BusContext, department: str, until, timeout_s: float = 90) -> dict[str, tuple[dict, tuple[str, ...]]]:
    """Event id -> (event, what was masked) in a department's feed, once `until(ids)` holds."""
    topic = ctx.topology.feed(department)
    messages = read_topic(ctx, topic, until=lambda m: until({x.key().decode() for x in m}), timeout_s=timeout_s)
    return {m.key().decode(): (ctx.serde.decode(m.value(), topic), read_masked(m.headers())) for m in messages}


def dead_letters(ctx: BusContext, ids: set[str], timeout_s: float = 90) -> dict[str, dict[str, str]]:
    """The dead letters of the events `ids` (their dlq.* headers), once each has one."""
    def of_ids(messages):
        return {m.key().decode(): read_dead_letter(m.headers()) for m in messages if m.key() and m.key().decode() in ids}

    messages = read_topic(ctx, ctx.topology.name(DLQ), until=lambda m: ids <= set(of_ids(m)), timeout_s=timeout_s)
    return of_ids(messages)


def on_distribution(ctx: BusContext, ids: set[str]) -> list[dict]:
    topic = ctx.topology.name(DIST_EVENTS)
    messages = read_topic(ctx, topic, until=lambda m: ids <= {x.key().decode() for x in m}, timeout_s=90)
    return [ctx.serde.decode(m.value(), topic) for m in messages if m.key().decode() in ids]


def test_free_text_is_masked_for_a_receiver_without_a_grant(city):
    description = "市民张三(手机13812345678,身份证110101199003074514)反映路面坑洼，金融大街5号院3号楼门口"
    report = publish(city, "citymgmt", {"type": "city.case.reported", "location": XICHENG, "data": {
        "category": "municipal_facilities", "subcategory": "pothole", "description": description, "reporter_phone": "6512345"}})
    district = feed(city, "district.xicheng", lambda ids: report in ids)
    event, masked = district[report]
    assert event["data"]["description"] == "市民张三(手机138****5678,身份证110***********4514)反映路面坑洼，金融大街5号院3号楼门口"
    assert event["data"]["reporter_phone"] == "*****45"  # a short value is never shown whole
    assert set(masked) == {"reporter_phone", "description:phone", "description:id_number"}
    own, own_masked = feed(city, "citymgmt", lambda ids: report in ids)[report]
    assert own["data"]["reporter_phone"] == "6512345" and set(own_masked) == {"description:phone", "description:id_number"}


def test_the_notes_of_a_confidential_case_reach_only_the_departments_on_it(city):
    petition = publish(city, "petition", {"type": "petition.filed", "location": {"raw_address": "火星大道1号"}, "data": {
        "issue": "noise", "channel": "visit", "summary": "楼下商户噪声扰民", "petitioner_name": "王伟", "petitioner_phone": "13812345678"}})
    [filed] = on_distribution(city, {petition})
    assert filed["targets"] == ["petition", "triage"]  # its owner and, the place unknown, the triage desk
    note = publish(city, "triage", {"type": "case.status.updated", "classification": "INTERNAL", "data": {
        "case_id": petition, "status": "in_progress", "note": "已联系信访人13812345678，身份证110101199003074514"}})
    bureau = feed(city, "petition", lambda ids: {petition, note} <= ids)
    relayed, masked = bureau[note]
    assert relayed["classification"] == "CONFIDENTIAL"  # whatever the update claimed
    assert relayed["data"]["note"] == "已联系信访人138****5678，身份证110***********4514" and masked == ("note:id_number", "note:phone")
    # delivered to the bureau, so the fan-out is done with it: the hotline, which holds a grant for
    # every case.status.updated but is cleared only for RESTRICTED, did not get it
    hotline = read_topic(city, city.topology.feed("hotline12345"), idle_s=1.0)
    assert not {note, petition} & {m.key().decode() for m in hotline}


def test_a_department_merged_into_a_case_cannot_take_it_over(city):
    case = publish(city, "citymgmt", {"type": "city.case.reported", "location": ANDINGMEN, "data": STREETLIGHT})
    on_distribution(city, {case})
    near = {"raw_address": "东城区安定门内大街1号", "lat": 39.94754, "lon": 116.40754}  # ~5 m away
    police = publish(city, "police", {"type": "city.case.reported", "location": near, "data": {**STREETLIGHT, "description": "路灯坏了"}})
    [merged] = on_distribution(city, {police})
    assert merged["correlation_id"] == case
    resolved = publish(city, "police", {"type": "case.status.updated", "data": {"case_id": case, "status": "resolved"}})
    note = publish(city, "police", {"type": "case.status.updated", "data": {"case_id": case, "status": "commented", "note": "旁边一盏也不亮"}})
    letter = dead_letters(city, {resolved})[resolved]
    assert (letter["reason"], letter["stage"]) == ("NOT_RESPONSIBLE", "cases") and "police is a reporter of" in letter["detail"]
    citymgmt = feed(city, "citymgmt", lambda ids: note in ids)
    assert resolved not in citymgmt and citymgmt[note][0]["data"]["status"] == "commented"


def test_an_id_reused_by_another_department_replaces_and_suppresses_nothing(city):
    taken = str(uuid.uuid4())
    first = publish(city, "citymgmt", {"id": taken, "type": "city.case.reported", "location": ANDINGMEN, "data": {
        "category": "city_appearance", "subcategory": "exposed_garbage", "description": "垃圾堆放"}})
    on_distribution(city, {first})
    publish(city, "police", {"id": taken, "type": "city.case.reported", "location": XICHENG, "data": {
        "category": "street_order", "subcategory": "illegal_parking", "description": "违章停车"}})
    licence = str(uuid.uuid4())
    granted = {"id": licence, "type": "entity.license.changed", "time": "2026-12-01T08:00:00Z", "data": {
        "credit_code": "91110000600037341L", "change": "issued", "license_type": "business", "effective": "2026-12-01T00:00:00Z"}}
    publish(city, "market", granted)
    on_distribution(city, {licence})
    publish(city, "housing", {"id": licence, "type": "housing.rental.registered", "location": XICHENG, "data": {
        "registration_id": "R00000001", "tenant_name": "王伟", "tenant_id_number": "110101199003074514", "landlord_name": "李四",
        "occupants": 1, "lease_start": "2026-12-01T00:00:00Z"}})
    publish(city, "market", granted)  # the very same event again: a duplicate, dropped
    letters = dead_letters(city, {taken, licence})
    case_letter, fanout_letter = letters[taken], letters[licence]
    assert (case_letter["reason"], case_letter["stage"]) == ("ID_CONFLICT", "cases")
    assert "citymgmt" in case_letter["detail"] and "police" in case_letter["detail"]
    assert (fanout_letter["reason"], fanout_letter["stage"]) == ("ID_CONFLICT", "fanout")
    assert "market" in fanout_letter["detail"] and "housing" in fanout_letter["detail"]
    shown = feed(city, "citymgmt", lambda ids: {taken, licence} <= ids)
    assert shown[taken][0]["source"] == "citymgmt" and shown[licence][0]["source"] == "market"
    feeds = read_topic(city, [city.topology.feed(d) for d in city.topology.departments], idle_s=2.0)
    assert sum(m.key().decode() == licence for m in feeds) == 2  # market's event in market's and citymgmt's feeds, once each


def test_an_event_below_its_types_classification_is_refused_at_ingest(city):
    petition = publish(city, "petition", {"type": "petition.filed", "classification": "PUBLIC", "location": XICHENG, "data": {
        "issue": "wage_arrears", "channel": "visit", "summary": "欠薪", "petitioner_name": "王伟"}})
    letter = dead_letters(city, {petition})[petition]
    assert (letter["reason"], letter["stage"]) == ("CLASSIFICATION_TOO_LOW", "ingest")
    assert letter["detail"].startswith("classification: PUBLIC is below CONFIDENTIAL")
