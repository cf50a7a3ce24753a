"""The issue's story, end to end on a real broker with deadlines in seconds.

A hotline call, a grid worker's report and a camera alert about the same street vending become
one case, dispatched to city management and the street office; no acceptance arrives in time,
so it is escalated; the acceptance and the resolution arrive, and the hotline (the originator)
sees every status.
"""

import uuid

import pytest
import yaml

from civicbus.context import BusContext
from civicbus.kafka import apply_topics
from civicbus.topology import DIST_EVENTS, DLQ
from civicbus.wire import read_dead_letter
from producers.sdk import Publisher
from tests.conftest import make_settings
from tests.support import PipelineProcesses, private_config, read_topic

ACCEPT_S = 6


@pytest.fixture
def fast_city(broker_bootstrap, tmp_path):
    """The sample city with a half-second clock and street-order deadlines of seconds."""
    config = private_config(tmp_path)
    categories = yaml.safe_load((config / "categories.yaml").read_text(encoding="utf-8"))
    categories["clock"] = "PT0.5S"
    categories["families"]["street_order"].update(accept=f"PT{ACCEPT_S}S", resolve="PT10M")
    (config / "categories.yaml").write_text(yaml.safe_dump(categories, allow_unicode=True), encoding="utf-8")
    ctx = BusContext(make_settings(broker_bootstrap, config=config))
    apply_topics(ctx.bootstrap, ctx.topology.specs())
    stages = PipelineProcesses(ctx)
    stages.start_all()
    yield ctx, stages
    stages.stop_all()


def publish(ctx, department, event):
    with Publisher(ctx, department) as publisher:
        return publisher.publish(event)


def decoded(ctx, topic, until, timeout_s=90):
    messages = read_topic(ctx, topic, until=lambda m: until([ctx.serde.decode(x.value(), x.topic()) for x in m]), timeout_s=timeout_s)
    return [ctx.serde.decode(m.value(), m.topic()) for m in messages]


def test_three_reports_one_case_escalated_then_accepted_and_resolved_seen_by_the_hotline(fast_city):
    ctx, stages = fast_city
    call = publish(ctx, "hotline12345", {
        "type": "hotline.request.received", "location": {"raw_address": "东城区安定门内大街1号"},
        "data": {"category": "complaint", "topic": "street_vending", "content": "门口有人占道摆摊", "caller_name": "张敏", "caller_phone": "13800000000"},
    })
    grid = publish(ctx, "street.dongcheng.andingmen", {
        "type": "city.case.reported", "location": {"raw_address": "安定门内大街1号", "lat": 39.9477, "lon": 116.4076},
        "data": {"category": "street_order", "subcategory": "street_vending", "description": "网格员巡查：占道经营"},
    })
    camera = publish(ctx, "police", {
        "type": "security.video.alert", "location": {"lat": 39.9474, "lon": 116.4078},
        "data": {"camera_id": "cam-0042", "alert_type": "street_vending", "confidence": 0.91},
    })
    dist = ctx.topology.name(DIST_EVENTS)
    reports = [e for e in decoded(ctx, dist, lambda es: {call, grid, camera} <= {e["id"] for e in es}) if e["id"] in (call, grid, camera)]
    # one case; whichever report ingest passed on first opened it (inbound topics interleave)
    [case_id] = {e["correlation_id"] for e in reports}
    assert case_id in (call, grid, camera)
    for report in reports:
        assert {"citymgmt", "street.dongcheng.andingmen"} <= set(report["targets"])
        assert report["location"]["street"] == "dongcheng.andingmen"

    hotline_feed = ctx.topology.feed("hotline12345")
    escalated = lambda es: [e for e in es if e["type"] == "case.escalated"]
    [escalation] = escalated(decoded(ctx, hotline_feed, escalated))
    assert escalation["correlation_id"] == case_id and escalation["data"]["missed"] == "acceptance"
    assert set(escalation["data"]["reports"]) == {call, grid, camera}
    assert set(escalation["targets"]) == {"citymgmt", "police", "district.dongcheng", "hotline12345", "street.dongcheng.andingmen"}

    # a department may name the case by any report it received
    accepted = publish(ctx, "citymgmt", {"type": "case.status.updated", "data": {"case_id": call, "status": "accepted", "note": "已派执法队员"}})
    resolved = publish(ctx, "citymgmt", {"type": "case.status.updated", "data": {"case_id": grid, "status": "resolved", "note": "摊位已清理"}})
    seen = decoded(ctx, hotline_feed, lambda es: resolved in {e["id"] for e in es})
    assert [(e["type"], e["id"]) for e in seen] == [
        ("case.escalated", escalation["id"]), ("case.status.updated", accepted), ("case.status.updated", resolved),
    ]
    assert all(e["correlation_id"] == case_id for e in seen)
    assert seen[-1]["due"] is None and seen[1]["due"] is not None  # the resolution deadline, once accepted


def test_unknown_category_goes_to_triage_and_a_status_for_no_case_is_a_dead_letter(fast_city):
    ctx, stages = fast_city
    ufo = publish(ctx, "hotline12345", {
        "type": "hotline.request.received", "location": {"raw_address": "西城区金融大街5号"},
        "data": {"category": "report", "topic": "ufo_sighting", "content": "看见不明飞行物"},
    })
    unknown = str(uuid.uuid4())
    orphan = publish(ctx, "citymgmt", {"type": "case.status.updated", "data": {"case_id": unknown, "status": "accepted"}})
    [triaged] = decoded(ctx, ctx.topology.feed("triage"), lambda es: len(es) >= 1)
    assert triaged["id"] == ufo and triaged["targets"] == ["triage", "street.xicheng.jinrongjie", "district.xicheng"]
    letters = read_topic(ctx, ctx.topology.name(DLQ), until=lambda m: len(m) >= 1, timeout_s=90)
    meta = read_dead_letter(letters[0].headers())
    assert (meta["reason"], meta["stage"]) == ("UNKNOWN_CASE", "cases") and unknown in meta["detail"]
    assert ctx.serde.decode(letters[0].value(), "x")["id"] == orphan
