"""The case logic without a broker: merge, dispatch, deadlines, feedback, replay."""

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from civicbus.config import load_city
from civicbus.dlq import Reason
from civicbus.schemas import EventCatalog
from civicbus.settings import REPO_ROOT
from processors.casebook import LISTED_REPORTS, CaseBook, CaseError, CaseRules, derived_id, to_ms
from processors.standardise import Standardiser

CITY = load_city(REPO_ROOT / "config")
CATALOG = EventCatalog(REPO_ROOT / "schemas")
STANDARDISER = Standardiser.from_config(REPO_ROOT / "config")
T0 = datetime(2026, 5, 1, 9, 0, tzinfo=timezone.utc)
ANDINGMEN = {"raw_address": "东城区安定门内大街1号", "lat": 39.9475, "lon": 116.4075}
VENDING = {
    "hotline.request.received": {"category": "complaint", "topic": "street_vending", "content": "门口有人占道摆摊"},
    "city.case.reported": {"category": "street_order", "subcategory": "street_vending", "description": "网格员巡查发现占道经营"},
    "security.video.alert": {"camera_id": "cam-0042", "alert_type": "street_vending", "confidence": 0.93},
}
SOURCES = {"hotline.request.received": "hotline12345", "city.case.reported": "street.dongcheng.andingmen", "security.video.alert": "police"}


def event(type_name, at=T0, location=ANDINGMEN, source=None, **data):
    return {
        "id": str(uuid.uuid4()), "type": type_name, "source": source or SOURCES.get(type_name, "citymgmt"), "time": at,
        "subject": None, "classification": CATALOG[type_name].classification,
        "location": STANDARDISER.standardise(dict(location)) if location is not None else None,
        "data": {**VENDING.get(type_name, {}), **data}, "correlation_id": None, "targets": [], "due": None,
    }


def status(case_id, status_, source="citymgmt", at=T0, **data):
    return event("case.status.updated", at=at, location=None, source=source, case_id=case_id, status=status_, **data)


@pytest.fixture
def book():
    return CaseBook(CaseRules.from_city(CITY, CATALOG["case.escalated"]), {})


def handle(book, e):
    [out] = book.handle(e, CATALOG[e["type"]])
    return out


def test_three_channels_about_one_incident_become_one_case_dispatched_by_category_and_location(book):
    call = handle(book, event("hotline.request.received"))
    near = {"lat": 39.9478, "lon": 116.4077}  # ~40 m away
    grid = handle(book, event("city.case.reported", at=T0 + timedelta(minutes=3), location=near))
    camera = handle(book, event("security.video.alert", at=T0 + timedelta(minutes=5), location=near))
    assert call["correlation_id"] == grid["correlation_id"] == camera["correlation_id"] == call["id"]
    assert call["targets"] == ["citymgmt", "police", "street.dongcheng.andingmen", "district.dongcheng"]
    assert grid["targets"] == camera["targets"] == call["targets"]
    case = book.cases[call["id"]]
    assert case["reports"] == [call["id"], grid["id"], camera["id"]]
    assert case["originators"] == ["hotline12345", "street.dongcheng.andingmen", "police"]
    assert call["due"] == T0 + CITY.categories.lookup("street_vending").deadlines.accept


@pytest.mark.parametrize(
    "change",
    [
        {"location": {"lat": 39.9475 + 0.002, "lon": 116.4075}},  # ~220 m away
        {"at": T0 + timedelta(hours=3)},  # after the merge window
        {"topic": "noise"},  # another category
    ],
)
def test_reports_too_far_too_late_or_of_another_category_open_their_own_case(book, change):
    first = handle(book, event("hotline.request.received"))
    second = handle(book, event("hotline.request.received", **change))
    assert second["correlation_id"] == second["id"] != first["correlation_id"]


def test_a_resolved_case_takes_no_new_reports_and_petitions_never_merge(book):
    first = handle(book, event("hotline.request.received"))
    handle(book, status(first["id"], "resolved"))
    again = handle(book, event("hotline.request.received", at=T0 + timedelta(minutes=1)))
    assert again["correlation_id"] == again["id"]
    petition = dict(issue="wage_arrears", channel="visit", summary="欠薪", petitioner_name="王伟")
    one = handle(book, event("petition.filed", source="petition", **petition))
    two = handle(book, event("petition.filed", source="petition", **petition))
    assert one["correlation_id"] != two["correlation_id"]
    assert one["targets"] == ["petition"]  # dispatch.yaml: the petitions bureau owns petitions, no office sees them


def test_unknown_category_goes_to_the_hub_with_default_deadlines(book):
    out = handle(book, event("hotline.request.received", topic="ufo_sighting"))
    assert out["targets"] == ["triage", "street.dongcheng.andingmen", "district.dongcheng"]
    assert out["due"] == T0 + CITY.categories.unknown.accept
    # an unlisted subcategory of a known family takes the family's departments
    family = handle(book, event("city.case.reported", subcategory="graffiti", category="city_appearance"))
    assert family["targets"][0] == "citymgmt"


def test_an_unplaced_location_still_dispatches_and_adds_the_triage_desk(book):
    out = handle(book, event("hotline.request.received", location={"raw_address": "火星大道1号"}))
    assert out["location"]["resolved"] is False
    assert out["targets"] == ["citymgmt", "police", "triage"]


def test_status_updates_are_attached_and_flow_back_to_the_originators(book):
    call = handle(book, event("hotline.request.received"))
    grid = handle(book, event("city.case.reported"))
    accepted = handle(book, status(grid["id"], "accepted"))  # any report id finds the case
    assert accepted["correlation_id"] == call["id"]
    assert accepted["targets"] == ["hotline12345", "street.dongcheng.andingmen", "police", "district.dongcheng"]
    assert accepted["due"] == T0 + CITY.categories.lookup("street_vending").deadlines.resolve
    resolved = handle(book, status(call["id"], "resolved"))
    assert resolved["due"] is None
    assert [s["status"] for s in book.cases[call["id"]]["statuses"]] == ["accepted", "resolved"]


def test_status_for_an_unknown_case_or_from_an_outsider_is_refused(book):
    with pytest.raises(CaseError) as unknown:
        handle(book, status(str(uuid.uuid4()), "accepted"))
    assert unknown.value.reason is Reason.UNKNOWN_CASE
    call = handle(book, event("hotline.request.received"))
    with pytest.raises(CaseError) as outsider:
        handle(book, status(call["id"], "accepted", source="market"))
    assert outsider.value.reason is Reason.NOT_RESPONSIBLE


def test_a_missed_deadline_escalates_once_to_responsible_district_and_originators(book):
    call = handle(book, event("hotline.request.received"))
    accept_by = T0 + CITY.categories.lookup("street_vending").deadlines.accept
    assert book.tick(to_ms(accept_by) - 1).events == []
    result = book.tick(to_ms(accept_by))
    [escalation] = result.events
    assert escalation["id"] == derived_id(call["id"], "escalated", "acceptance")
    assert escalation["type"] == "case.escalated" and escalation["source"] == "triage"
    assert escalation["targets"] == ["citymgmt", "police", "district.dongcheng", "hotline12345"]
    assert escalation["data"]["missed"] == "acceptance" and escalation["data"]["reports"] == [call["id"]]
    assert CATALOG.validate(escalation)["correlation_id"] == call["id"]
    assert result.escalated == [("citymgmt", "street_vending"), ("police", "street_vending")]
    assert result.overdue[("citymgmt", "street_vending")] == 1
    later = book.tick(to_ms(accept_by) + 1000)
    assert later.events == [] and later.open[("police", "street_vending")] == 1


def test_accepted_in_time_is_not_escalated_but_resolution_still_is(book):
    call = handle(book, event("hotline.request.received"))
    handle(book, status(call["id"], "accepted", at=T0 + timedelta(minutes=1)))
    resolve_by = to_ms(T0 + CITY.categories.lookup("street_vending").deadlines.resolve)
    assert [e["data"]["missed"] for e in book.tick(resolve_by).events] == ["resolution"]


def test_replays_after_a_restart_emit_the_same_events_and_change_nothing(book):
    call_event = event("hotline.request.received")
    call = handle(book, call_event)
    status_event = status(call["id"], "accepted")
    handle(book, status_event)
    tick_ms = to_ms(T0 + timedelta(days=1))
    first = book.tick(tick_ms).events
    # a restarted worker: the same tables, a fresh CaseBook; it sees inputs it already applied
    restarted = CaseBook(book.rules, book.cases)
    before = repr(book.cases)
    replayed = handle(restarted, call_event)  # its `due` is now the resolution deadline: the fan-out drops it by id
    assert (replayed["id"], replayed["correlation_id"], replayed["targets"]) == (call["id"], call["correlation_id"], call["targets"])
    assert handle(restarted, status_event)["id"] == status_event["id"]
    assert [e["id"] for e in restarted.tick(tick_ms).events] == [e["id"] for e in first]
    assert repr(restarted.cases) == before
    # and its rebuilt merge index still merges into the restored case
    assert handle(restarted, event("security.video.alert"))["correlation_id"] == call["id"]


def test_resolved_cases_are_forgotten_after_the_retention(book):
    call = handle(book, event("hotline.request.received"))
    handle(book, status(call["id"], "resolved"))
    book.tick(to_ms(T0 + CITY.categories.retention + timedelta(seconds=1)))
    assert book.cases == {} and book.reports() == {}


def test_a_case_nobody_resolves_is_forgotten_a_retention_after_its_resolution_deadline(book):
    call = handle(book, event("hotline.request.received"))
    resolve_by = T0 + CITY.categories.lookup("street_vending").deadlines.resolve
    book.tick(to_ms(resolve_by + CITY.categories.retention) - 1)
    assert call["correlation_id"] in book.cases
    result = book.tick(to_ms(resolve_by + CITY.categories.retention))
    assert book.cases == {} and book.reports() == {} and result.open == {}


def test_open_and_overdue_counts_follow_each_change_without_a_scan(book):
    first = handle(book, event("hotline.request.received"))
    handle(book, event("hotline.request.received", location={"raw_address": "x", "lat": 39.99, "lon": 116.30}))
    open_, overdue = book.counts()
    assert open_[("citymgmt", "street_vending")] == 2 and not overdue
    accept_by = to_ms(T0 + CITY.categories.lookup("street_vending").deadlines.accept)
    assert book.tick(accept_by).overdue[("police", "street_vending")] == 2
    handle(book, status(first["id"], "accepted", at=T0 + timedelta(hours=1)))  # late, but accepted now
    handle(book, status(first["id"], "resolved", at=T0 + timedelta(hours=2)))
    open_, overdue = book.counts()
    assert open_[("citymgmt", "street_vending")] == 1 and overdue[("citymgmt", "street_vending")] == 1
    # a restarted book counts the same from the restored cases
    assert CaseBook(book.rules, book.cases).counts() == (open_, overdue)


# ---- a case's classification -----------------------------------------------------------------

PETITION = dict(issue="noise", channel="visit", summary="楼下商户噪声扰民", petitioner_name="王伟")


def test_updates_and_escalations_of_a_confidential_case_are_confidential_whatever_they_claim(book):
    petition = handle(book, event("petition.filed", source="petition", **PETITION))
    assert petition["targets"] == ["petition"]  # a noise petition does not go to ecoenv or the offices
    note = handle(book, status(petition["id"], "accepted", source="petition", note="已联系当事人13812345678"))
    assert note["classification"] == "CONFIDENTIAL" and note["targets"] == ["petition"]  # the bureau is alone on it
    [escalation] = book.tick(to_ms(T0 + CITY.categories.lookup("noise").deadlines.resolve)).events
    assert escalation["classification"] == "CONFIDENTIAL" and escalation["targets"] == ["petition"]


def test_a_confidential_report_opens_a_case_of_its_own_and_nothing_joins_it(book):
    grid = handle(book, {**event("city.case.reported"), "classification": "CONFIDENTIAL"})
    camera = handle(book, event("security.video.alert"))
    call = handle(book, event("hotline.request.received"))
    assert grid["correlation_id"] == grid["id"] and camera["correlation_id"] == camera["id"] == call["correlation_id"]
    assert handle(book, status(grid["id"], "accepted"))["classification"] == "CONFIDENTIAL"


def test_a_merged_case_carries_the_classification_of_its_most_classified_report(book):
    grid = handle(book, event("city.case.reported"))  # INTERNAL
    assert handle(book, status(grid["id"], "in_progress"))["classification"] == "INTERNAL"
    handle(book, event("hotline.request.received"))  # RESTRICTED, merged into it
    update = handle(book, status(grid["id"], "resolved"))
    assert update["classification"] == "RESTRICTED"
    assert update["targets"] == ["street.dongcheng.andingmen", "hotline12345", "police", "district.dongcheng"]


# ---- roles on a case -------------------------------------------------------------------------

STREETLIGHT = {"category": "municipal_facilities", "subcategory": "broken_streetlight", "description": "路灯不亮"}


def refusal(book, update) -> CaseError:
    with pytest.raises(CaseError) as info:
        handle(book, update)
    return info.value


def test_a_department_merged_in_as_a_reporter_may_add_notes_but_not_resolve(book):
    first = handle(book, event("city.case.reported", source="citymgmt", **STREETLIGHT))
    near = {"lat": 39.94755, "lon": 116.40755}  # ~5 m away
    merged = handle(book, event("city.case.reported", source="police", location=near, **STREETLIGHT))
    assert merged["correlation_id"] == first["id"] and "police" in book.cases[first["id"]]["originators"]
    for status_ in ("resolved", "accepted", "in_progress", "rejected", "reassigned"):
        refused = refusal(book, status(first["id"], status_, source="police"))
        assert refused.reason is Reason.NOT_RESPONSIBLE and "police is a reporter of" in refused.detail
    assert book.cases[first["id"]]["statuses"] == [] and book.cases[first["id"]]["resolved_ms"] is None
    note = handle(book, status(first["id"], "commented", source="police", note="现场还有一盏也不亮"))
    assert note["targets"] == ["citymgmt", "transport", "street.dongcheng.andingmen", "district.dongcheng"]
    assert book.cases[first["id"]]["last_status"] is None  # a note changes nothing


def test_only_the_responsible_departments_and_the_hub_change_a_case(book):
    case = handle(book, event("city.case.reported", source="citymgmt", **STREETLIGHT))
    refused = refusal(book, status(case["id"], "resolved", source="street.dongcheng.andingmen"))  # dispatched, not responsible
    assert refused.reason is Reason.NOT_RESPONSIBLE and "dispatched to" in refused.detail
    assert refusal(book, status(case["id"], "commented", source="market")).reason is Reason.NOT_RESPONSIBLE  # not on it at all
    handle(book, status(case["id"], "commented", source="street.dongcheng.andingmen"))
    handle(book, status(case["id"], "accepted", source="transport"))
    handle(book, status(case["id"], "rejected", source="citymgmt"))  # handed back: the hub joins the responsible
    handle(book, status(case["id"], "resolved", source="triage"))
    assert [(s["source"], s["status"]) for s in book.cases[case["id"]]["statuses"]] == [
        ("street.dongcheng.andingmen", "commented"), ("transport", "accepted"), ("citymgmt", "rejected"), ("triage", "resolved")]


# ---- ids belong to their publisher -----------------------------------------------------------


def test_a_report_id_reused_by_another_department_is_a_conflict_naming_both(book):
    first = event("city.case.reported", source="citymgmt", **STREETLIGHT)
    handle(book, first)
    before = repr(book.cases)
    reused = {**event("city.case.reported", source="police", **STREETLIGHT), "id": first["id"]}
    conflict = refusal(book, reused)
    assert conflict.reason is Reason.ID_CONFLICT and "citymgmt" in conflict.detail and "police" in conflict.detail
    changed = {**first, "data": {**first["data"], "description": "另一件事"}}
    assert refusal(book, changed).reason is Reason.ID_CONFLICT  # the same publisher, other content
    assert repr(book.cases) == before
    assert handle(book, first)["correlation_id"] == first["id"]  # the very same event again: a replay


def test_a_status_id_is_its_publishers_too(book):
    case = handle(book, event("city.case.reported", source="citymgmt", **STREETLIGHT))
    accepted = status(case["id"], "accepted", source="citymgmt")
    handle(book, accepted)
    reused = {**status(case["id"], "resolved", source="transport"), "id": accepted["id"]}
    assert refusal(book, reused).reason is Reason.ID_CONFLICT
    as_report_id = {**status(case["id"], "resolved", source="transport"), "id": case["id"]}
    assert refusal(book, as_report_id).reason is Reason.ID_CONFLICT
    assert [s["status"] for s in book.cases[case["id"]]["statuses"]] == ["accepted"]
    assert handle(book, accepted)["id"] == accepted["id"]  # a replay is still fine


def test_a_mass_incident_logs_one_small_record_per_report_however_many_its_case_holds():
    from processors.cases import CaseStore

    store = CaseStore(partition=0)
    book = CaseBook(CaseRules.from_city(CITY, CATALOG["case.escalated"]), store)
    first = handle(book, event("hotline.request.received"))
    store.committed()
    logged_bytes = []  # of the case's own record, then of the report's, at each report
    for i in range(2_000):  # thousands of people reporting the same thing within minutes
        joined = handle(book, event("hotline.request.received", at=T0 + timedelta(milliseconds=50 * i)))
        assert joined["correlation_id"] == first["id"]
        changes = list(store.changes())
        assert [k for k, _ in changes] == [f"case/{first['id']}".encode(), f"report/{joined['id']}".encode()]
        logged_bytes.append([len(value) for _, value in changes])
        store.committed()
    assert len(book.cases[first["id"]]["reports"]) == 2_001
    # once the case lists its first reports in full, what a report costs the log stops growing
    settled = logged_bytes[LISTED_REPORTS]
    assert all(case - settled[0] < 10 and report == settled[1] for case, report in logged_bytes[LISTED_REPORTS:])
