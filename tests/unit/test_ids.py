"""Ids belong to their publisher (civicbus.ids): what counts as the same event again."""

from datetime import datetime, timezone

from civicbus.ids import Publication, content_digest, id_conflict
from civicbus.schemas import ESCALATION_TYPE, EventCatalog
from civicbus.settings import REPO_ROOT

CATALOG = EventCatalog(REPO_ROOT / "schemas")
REPORT = {
    "id": "e1", "type": "city.case.reported", "source": "citymgmt", "time": datetime(2026, 12, 1, tzinfo=timezone.utc),
    "subject": None, "classification": "INTERNAL", "location": {"raw_address": "东城区安定门内大街1号"},
    "data": {"category": "municipal_facilities", "subcategory": "pothole", "description": "路面坑洼", "credit_code": None},
}


def digest(event):
    return content_digest(event, CATALOG[event["type"]])


def test_what_the_pipeline_adds_is_not_content():
    processed = {**REPORT, "location": {**REPORT["location"], "street": "dongcheng.andingmen", "resolved": True},
                 "correlation_id": "c1", "targets": ["citymgmt"], "due": datetime(2026, 12, 2, tzinfo=timezone.utc),
                 "classification": "RESTRICTED", "data": {**REPORT["data"], "entity_name": "某公司"}}
    assert digest(processed) == digest(REPORT)
    assert digest({**REPORT, "data": {**REPORT["data"], "description": "另一件事"}}) != digest(REPORT)
    assert digest({**REPORT, "time": datetime(2026, 12, 1, 0, 1, tzinfo=timezone.utc)}) != digest(REPORT)


def test_an_escalation_emitted_again_from_a_grown_case_is_the_same_escalation():
    escalation = {"id": "x", "type": ESCALATION_TYPE, "source": "triage", "time": REPORT["time"],
                  "data": {"case_id": "c1", "missed": "acceptance", "reports": ["e1"], "last_status": None}}
    grown = {**escalation, "data": {**escalation["data"], "reports": ["e1", "e2"], "last_status": "commented"}}
    assert digest(grown) == digest(escalation)


def test_a_conflict_names_both_publishers_and_a_duplicate_is_none():
    first = Publication.of(REPORT, CATALOG["city.case.reported"])
    assert id_conflict("e1", first, first) is None
    assert id_conflict("e1", first, Publication("police", first.digest)) == "id e1 belongs to citymgmt; police reused it for another event"
    assert "with other content" in id_conflict("e1", first, Publication("citymgmt", "0" * 32))
