"""The escalation ladder (市-区-街道) with a deterministic clock, and the case.snapshot the case
stage publishes to civic.cases: pure functions of the case book, no broker."""

from datetime import timedelta

from processors.case_snapshot import case_snapshot
from processors.casebook import LISTED_REPORTS, CaseBook, derived_id, to_ms
from processors.cases import CaseStore
from tests.unit.test_casebook import CATALOG, CITY, T0, book, event, handle, status  # noqa: F401 (fixture)

LADDER = CITY.categories.escalation
ACCEPT = CITY.categories.lookup("street_vending").deadlines.accept


def levels(result, missed="acceptance"):
    """The escalations of one deadline a tick made (street vending's resolution falls due at 4 h
    and climbs a ladder of its own)."""
    return [(e["data"]["missed"], e["data"]["level"]) for e in result.events if e["data"]["missed"] == missed]


def test_an_overdue_case_climbs_to_its_district_office_then_the_hub_once_each(book):
    call = handle(book, event("hotline.request.received"))
    first_ms = to_ms(T0 + ACCEPT)
    assert levels(book.tick(first_ms)) == [("acceptance", "department")]
    district_ms = first_ms + int(LADDER.district_after.total_seconds() * 1000)
    assert book.tick(district_ms - 1).events == []
    [district] = book.tick(district_ms).events  # 1h30: before the resolution deadline
    assert district["id"] == derived_id(call["id"], "escalated", "acceptance", "district")
    assert district["data"]["level"] == "district" and district["targets"][0] == "district.dongcheng"
    assert CATALOG.validate(district)["data"]["level"] == "district"
    hub_ms = first_ms + int(LADDER.hub_after.total_seconds() * 1000)
    assert levels(book.tick(hub_ms - 1)) == []
    [city] = [e for e in book.tick(hub_ms).events if e["data"]["missed"] == "acceptance"]
    assert city["data"]["level"] == "city" and city["targets"][0] == "triage" and "district.dongcheng" in city["targets"]
    assert levels(book.tick(hub_ms + 10 * 3_600_000)) == []  # nothing above the city
    snapshot = case_snapshot(book.cases[call["id"]], "triage")
    assert [(s["missed"], s["level"]) for s in snapshot["data"]["escalations"]] == [
        ("acceptance", "department"), ("acceptance", "district"), ("resolution", "department"),
        ("acceptance", "city"), ("resolution", "district"), ("resolution", "city")]


def test_accepting_stops_the_climb(book):
    call = handle(book, event("hotline.request.received"))
    first_ms = to_ms(T0 + ACCEPT)
    book.tick(first_ms)
    handle(book, status(call["id"], "accepted", at=T0 + ACCEPT + timedelta(minutes=5)))
    assert levels(book.tick(first_ms + int(LADDER.hub_after.total_seconds() * 1000))) == []


def test_a_restarted_book_replays_a_ladder_step_and_schedules_the_next(book):
    call = handle(book, event("hotline.request.received"))
    first_ms = to_ms(T0 + ACCEPT)
    book.tick(first_ms)
    district_ms = first_ms + int(LADDER.district_after.total_seconds() * 1000)
    first = book.tick(district_ms).events
    restarted = CaseBook(book.rules, book.cases)
    assert [e["id"] for e in restarted.tick(district_ms).events] == [e["id"] for e in first]
    hub_ms = first_ms + int(LADDER.hub_after.total_seconds() * 1000)
    assert levels(restarted.tick(hub_ms)) == [("acceptance", "city")]


def test_the_snapshot_says_who_reported_how_who_acts_what_is_due_and_validates(book):
    call = handle(book, event("hotline.request.received"))
    camera = handle(book, event("security.video.alert", at=T0 + timedelta(minutes=2)))
    progress = status(call["id"], "in_progress", at=T0 + timedelta(minutes=3))
    progress["data"]["handler_name"] = "王师傅"
    handle(book, progress)
    case = book.cases[call["id"]]
    snapshot = CATALOG.validate(case_snapshot(case, "triage"))
    data = snapshot["data"]
    assert snapshot["type"] == "case.snapshot" and snapshot["correlation_id"] == call["id"]
    assert snapshot["classification"] == "RESTRICTED"  # the camera alert's, the highest of its reports
    assert [(r["id"], r["source"], r["type"]) for r in data["reports"]] == [
        (call["id"], "hotline12345", "hotline.request.received"), (camera["id"], "police", "security.video.alert")]
    assert data["channels"] == {"hotline12345": 1, "police": 1} and data["report_count"] == 2
    assert data["status"] == "in_progress" and data["handler"] == "王师傅" and data["overdue"] is False
    assert data["originators"] == ["hotline12345", "police"] and data["responsible"] == ["citymgmt", "police"]
    assert data["updated"] == T0 + timedelta(minutes=3) and snapshot["due"] == T0 + CITY.categories.lookup("street_vending").deadlines.resolve
    assert case_snapshot(case, "triage")["id"] == snapshot["id"]  # the same state, the same id
    book.tick(to_ms(T0 + timedelta(days=2)))
    later = case_snapshot(book.cases[call["id"]], "triage")
    assert later["id"] != snapshot["id"] and later["data"]["overdue"] is True


def test_a_mass_incident_keeps_the_count_and_a_bounded_list(book):
    first = handle(book, event("hotline.request.received"))
    for minute in range(1, 300):
        handle(book, event("hotline.request.received", at=T0 + timedelta(seconds=minute)))
    data = case_snapshot(book.cases[first["id"]], "triage")["data"]
    assert data["report_count"] == 300 and len(data["reports"]) == LISTED_REPORTS
    assert data["reports"][0]["id"] == first["id"] and data["channels"] == {"hotline12345": 300}


def test_the_store_names_each_changed_case_once_per_commit_and_a_forgotten_one_as_none(book):
    store = CaseStore(partition=0)
    book = CaseBook(book.rules, store)
    call = handle(book, event("hotline.request.received"))
    handle(book, event("security.video.alert", at=T0 + timedelta(minutes=1)))  # joins it: the same case again
    other = handle(book, event("hotline.request.received", location={"lat": 39.93, "lon": 116.36}))
    assert sorted(store.changed_cases(), key=lambda c: c[0]) == sorted(
        [(call["id"], store[call["id"]]), (other["id"], store[other["id"]])], key=lambda c: c[0])
    store.committed()
    assert list(store.changed_cases()) == []
    del store[other["id"]]
    assert list(store.changed_cases()) == [(other["id"], None)]
