"""The delivery policy: the pure decision, masking, and `policy check` naming lines."""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from civicbus.cli import app as cli
from civicbus.config import load_city
from civicbus.dispatch import Dispatch, Place
from civicbus.policy import RANK, DecisionInputs, DepartmentRules, Policy, PolicyDocument, PolicyError, below_floor, decide, dispatch_reach, load_policy, mask_text, masked_event
from civicbus.schemas import ESCALATION_TYPE, EventCatalog
from civicbus.settings import REPO_ROOT
from processors.casebook import CaseBook, CaseRules
from tests.policy_strategies import Areas, events, expected_receivers, free_text, policy_documents
from tests.support import private_config

CATALOG = EventCatalog(REPO_ROOT / "schemas")
CITY = load_city(REPO_ROOT / "config")
POLICY = load_policy(REPO_ROOT / "config" / "policy.yaml", CITY, CATALOG)


def hotline_call(**overrides) -> dict:
    event = {
        "id": str(uuid.uuid4()), "type": "hotline.request.received", "source": "hotline12345",
        "time": datetime(2026, 1, 1, tzinfo=timezone.utc), "classification": "RESTRICTED", "subject": None,
        "location": {"raw_address": "x", "lat": None, "lon": None, "address_code": None, "grid": None,
                     "street": "dongcheng.andingmen", "district": "dongcheng", "resolved": True},
        "data": {"category": "complaint", "topic": "noise", "content": "太吵", "caller_name": "王伟", "caller_phone": "13812345678"},
        "correlation_id": None, "targets": ["citymgmt"], "due": None,
    }
    event.update(overrides)
    return CATALOG.validate(event)


def test_the_sample_policy_passes_its_own_check():
    assert set(POLICY.departments) == set(CITY.department_ids())
    assert POLICY.may_publish("hotline12345", "hotline.request.received")
    assert not POLICY.may_publish("housing", "city.case.reported")


def test_sample_city_deliveries_and_masks():
    by_department = {d.department: d.masked for d in POLICY.deliveries(hotline_call())}
    # dispatched to citymgmt (phone granted), granted to petition (complaints; name and phone);
    # the street and district offices hold a grant only for city.case.reported
    assert by_department == {"citymgmt": ("caller_name",), "petition": ()}


def test_masking_is_visible_and_keeps_the_event_valid():
    event = hotline_call()
    masked, entries = masked_event(event, CATALOG["hotline.request.received"], ("caller_name", "caller_phone"))
    assert masked["data"]["caller_name"] == "***" and masked["data"]["caller_phone"] == "138****5678"
    assert entries == ("caller_name", "caller_phone")
    assert event["data"]["caller_phone"] == "13812345678"  # the original is untouched
    assert CATALOG.validate(masked) == masked


@pytest.mark.parametrize(
    "value, expected",
    [("13812345678", "138****5678"), ("138-1234-5678", "138****5678"), ("11010119900307123X", "110***********123X"),
     ("王伟", "***"), ("Zhang Wei", "***"), ("12345", "***"),
     ("6512345", "*****45"), ("+86 138 1234 5678", "138****5678"), ("１３８１２３４５６７８", "138****5678")],
)
def test_mask_text(value, expected):
    assert mask_text(value) == expected


def test_no_mask_shows_a_short_value_whole():
    for value in ("6512345", "651234", "12345678", "1234567890", "88", "王"):
        masked = mask_text(value)
        assert masked != value and "*" in masked and sum(c.isdigit() for c in masked) <= max(2, len(value) - 7)


def test_free_text_is_scanned_for_a_receiver_without_a_grant_and_the_header_says_what_was_found():
    description = "市民张三(手机13812345678,身份证110101199003074514)反映路面坑洼，3号楼2单元501室"
    report = CATALOG.validate({**hotline_call(), "type": "city.case.reported", "classification": "INTERNAL", "subject": "回电 010-65123456",
                               "data": {"category": "municipal_facilities", "subcategory": "pothole", "description": description,
                                        "reporter_phone": "6512345"}, "targets": ["district.dongcheng"]})
    [delivery] = [d for d in POLICY.deliveries(report) if d.department == "district.dongcheng"]
    copy, entries = masked_event(report, CATALOG["city.case.reported"], delivery.masked, delivery.scanned)
    assert copy["data"]["description"] == "市民张三(手机138****5678,身份证110***********4514)反映路面坑洼，3号楼2单元501室"
    assert copy["data"]["reporter_phone"] == "*****45" and copy["subject"] == "回电 010****3456"
    assert entries == ("reporter_phone", "description:id_number", "description:phone", "subject:landline")
    assert CATALOG.validate(copy) == copy and report["data"]["description"] == description  # the original is untouched
    police = next(d for d in POLICY.deliveries({**report, "targets": ["police"]}) if d.department == "police")
    assert masked_event(report, CATALOG["city.case.reported"], police.masked, police.scanned) == (report, ())  # granted '*'


def test_a_grant_by_type_never_reaches_a_confidential_event_unless_it_says_so():
    update = {**hotline_call(), "type": "case.status.updated", "classification": "CONFIDENTIAL", "targets": ["petition"],
              "data": {"case_id": "c1", "status": "accepted", "note": "已联系13812345678", "handler_name": None}}
    event_type = CATALOG["case.status.updated"]
    assert [d.department for d in POLICY.deliveries(CATALOG.validate(update))] == ["petition"]  # not the hotline's grant
    triage = POLICY.rules("triage").model_dump()
    by_type = DepartmentRules.model_validate({**triage, "receives": [{"type": "case.status.updated"}]})
    assert decide("triage", by_type, DecisionInputs.of(update, event_type), event_type) is None
    explicit = DepartmentRules.model_validate({**triage, "receives": [{"type": "case.status.updated", "confidential": True}]})
    assert decide("triage", explicit, DecisionInputs.of(update, event_type), event_type) is not None


def test_an_event_below_its_types_classification_is_refused_naming_the_field():
    petition = {"type": "petition.filed", "classification": "PUBLIC"}
    assert below_floor(petition, CATALOG["petition.filed"]).startswith("classification: PUBLIC is below CONFIDENTIAL")
    assert below_floor({**petition, "classification": "CONFIDENTIAL"}, CATALOG["petition.filed"]) is None
    assert below_floor({"type": "city.case.reported", "classification": "RESTRICTED"}, CATALOG["city.case.reported"]) is None


def test_unknown_place_reaches_a_street_office_only_when_dispatched():
    rules = POLICY.rules("street.dongcheng.andingmen")
    report = CATALOG.validate({**hotline_call(), "type": "city.case.reported", "classification": "INTERNAL", "location": None,
                               "data": {"category": "landscaping", "subcategory": "fallen_tree", "description": "树倒了"}})
    event_type = CATALOG["city.case.reported"]
    seen = lambda event: DecisionInputs.of(event, event_type)  # noqa: E731
    assert decide("street.dongcheng.andingmen", rules, seen({**report, "targets": []}), event_type) is None  # granted, place unknown
    assert decide("street.dongcheng.andingmen", rules, seen({**report, "targets": ["street.dongcheng.andingmen"]}), event_type)
    elsewhere = {**report, "location": {**hotline_call()["location"], "street": "xicheng.xinjiekou", "district": "xicheng"}}
    assert decide("street.dongcheng.andingmen", rules, seen({**elsewhere, "targets": ["street.dongcheng.andingmen"]}), event_type) is None


# ---- policy check ----------------------------------------------------------------------------

BROKEN = """\
departments:
  citymgmt:
    clearance: INTERNAL
    jurisdiction: city
    publishes: [city.case.reported, city.case.invented]
    receives:
      - type: hotline.request.received
      - type: city.case.reported
        categories: [street_order, potholes]
    personal:
      city.case.reported: [reporter_email]
  ministry:
    clearance: PUBLIC
    jurisdiction: city
  street.dongcheng.andingmen:
    clearance: INTERNAL
    jurisdiction: {district: xicheng}
  police:
    clearance: TOP_SECRET
    jurisdiction: city
  citymgmt:
    clearance: INTERNAL
    jurisdiction: city
"""


@pytest.fixture
def config_dir(tmp_path):
    return private_config(tmp_path)


def problems_by_line(config_dir, text: str) -> dict[int, list[str]]:
    (config_dir / "policy.yaml").write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(config_dir / "policy.yaml", CITY, CATALOG)
    by_line: dict[int, list[str]] = {}
    for problem in info.value.problems:
        file, line, message = problem.split(":", 2)
        assert file == str(config_dir / "policy.yaml")
        by_line.setdefault(int(line), []).append(message.strip())
    return by_line


def test_policy_check_names_the_line_of_every_problem(config_dir):
    schema_errors = problems_by_line(config_dir, BROKEN)
    assert schema_errors[21] == ["duplicate key 'citymgmt' (first on line 2)"]
    assert schema_errors[19][0].startswith("departments.police.clearance: Input should be 'PUBLIC', 'INTERNAL'")
    without_schema_errors = "\n".join(BROKEN.replace("TOP_SECRET", "CONFIDENTIAL").splitlines()[:20]) + "\n"
    assert problems_by_line(config_dir, without_schema_errors) == {
        1: [f"department {d} (departments.yaml) has no entry in the policy" for d in sorted(set(CITY.department_ids()) - {"citymgmt", "police", "street.dongcheng.andingmen"})],
        # a case's updates and escalations carry its classification: a hotline call makes it RESTRICTED
        3: [never_receives("citymgmt", t, "INTERNAL", "RESTRICTED")
            for t in ("case.escalated", "case.status.updated", "hotline.request.received", "security.video.alert")],
        5: ["unknown event type 'city.case.invented'"],
        7: ["grant for hotline.request.received (RESTRICTED) can never apply: clearance is INTERNAL"],
        9: ["unknown category 'potholes' of city.case.reported (known: city_appearance, street_order, landscaping, municipal_facilities)"],
        11: ["'reporter_email' is not a personal or free-text field of city.case.reported "
             "(those are: reporter_name, reporter_phone, description, subject, location.raw_address)"],
        12: ["unknown department 'ministry' (not in departments.yaml)"],
        16: [never_receives("street.dongcheng.andingmen", t, "INTERNAL", "RESTRICTED")  # no petition: the bureau's alone
             for t in ("case.status.updated", "hotline.request.received", "housing.rental.registered", "security.video.alert")],
        17: ["street.dongcheng.andingmen is a street office: its jurisdiction must be street dongcheng.andingmen"],
    }


def never_receives(department: str, type_name: str, clearance: str, classification: str | None = None) -> str:
    classification = classification or CATALOG[type_name].classification
    return f"{department} is dispatched {type_name} ({classification}) but cleared only for {clearance}: it would never receive it"


@pytest.mark.parametrize(
    "department, clearance, types",
    [
        # an office: calls and cases of its street (a case a hotline call joined is RESTRICTED), rentals
        # (and escalations of the cases its grid workers reported)
        ("street.xicheng.shichahai", "INTERNAL",
         ["case.escalated", "case.status.updated", "hotline.request.received", "housing.rental.registered", "security.video.alert"]),
        ("market", "INTERNAL", ["case.escalated", "case.status.updated", "hotline.request.received"]),  # food safety calls
        ("housing", "INTERNAL", ["case.escalated", "case.status.updated", "hotline.request.received", "housing.rental.registered"]),  # a dispatch.yaml rule
        # petitions and their cases (CONFIDENTIAL): the owner, and the hub for unplaced and handed-back ones
        ("triage", "RESTRICTED", ["case.escalated", "case.status.updated", "petition.filed"]),
    ],
)
def test_a_department_dispatched_what_it_is_not_cleared_for_is_named_at_its_clearance_line(config_dir, department, clearance, types):
    lines = (config_dir / "policy.yaml").read_text().splitlines()
    line = lines.index(f"  {department}:") + 2  # its clearance comes first
    assert lines[line - 1].startswith("    clearance: ")
    lines[line - 1] = f"    clearance: {clearance}"
    travels_at = "CONFIDENTIAL" if clearance == "RESTRICTED" else "RESTRICTED"
    assert problems_by_line(config_dir, "\n".join(lines) + "\n") == {line: [never_receives(department, t, clearance, travels_at) for t in types]}


def observed_targets() -> dict[tuple[str, str], set[str]]:
    """What dispatch and the case stage actually target, at which classification, over events of
    every type, category and place."""
    unplaced = {"raw_address": "火星大道1号", "lat": None, "lon": None, "resolved": False}
    places = [None, unplaced] + [{"lat": None, "lon": None, "street": s, "district": s.split(".")[0], "resolved": True}
                                 for s in CITY.map.street_ids()]
    any_text = [c.id for c in CITY.categories.categories()] + list(CITY.categories.families) + ["unlisted"]
    book = CaseBook(CaseRules.from_city(CITY, CATALOG[ESCALATION_TYPE]), {})
    dispatch = Dispatch(CITY)
    observed: dict[tuple[str, str], set[str]] = defaultdict(set)
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for event_type in CATALOG:
        def values(field_name: str | None) -> list[str | None]:
            kind = event_type.data_fields[field_name]["type"] if field_name else None
            return kind["symbols"] if isinstance(kind, dict) and kind["type"] == "enum" else any_text if kind else [None]

        category_field, family_field = event_type.case_category_field, event_type.case_family_field
        sources = itertools.cycle(POLICY.publishers(event_type.name) or ["citymgmt"])
        for category, family, place in itertools.product(values(category_field), values(family_field), places):
            event = {"id": str(uuid.uuid4()), "type": event_type.name, "source": next(sources), "time": at, "classification": event_type.classification,
                     "location": place, "data": {k: v for k, v in ((category_field, category), (family_field, family)) if k}}
            if event_type.forms_case:
                [event] = book.handle(event, event_type)
            elif not event_type.updates_case:
                event["targets"] = dispatch.event_targets(event["type"], Place.of(place))
            observed[(event_type.name, event["classification"])] |= set(event.get("targets", ()))
    for case_id, case in list(book.cases.items()):
        for sender, status in ((CITY.dispatch.hub, "rejected"), (case["responsible"][0], "accepted")):
            update = {"id": str(uuid.uuid4()), "type": "case.status.updated", "source": sender, "time": at, "classification": "INTERNAL",
                      "data": {"case_id": case_id, "status": status}}
            [relayed] = book.handle(update, CATALOG["case.status.updated"])
            observed[(relayed["type"], relayed["classification"])] |= set(relayed["targets"])
    for escalation in book.tick(int(datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)).events:
        observed[(escalation["type"], escalation["classification"])] |= set(escalation["targets"])
    return observed


def by_type(reach: dict[tuple[str, str], set[str]]) -> dict[str, set[str]]:
    merged: dict[str, set[str]] = defaultdict(set)
    for (type_name, _), departments in reach.items():
        merged[type_name] |= departments
    return merged


def test_dispatch_reach_is_exactly_what_dispatch_and_the_case_stage_target():
    """The same departments per type; and none reached at a classification above the one `policy
    check` assumes (merged cases, which this drive does not form, can take the highest of their types')."""
    reach, observed = dispatch_reach(POLICY.document, CITY, CATALOG), observed_targets()
    assert by_type(reach) == by_type(observed)
    for (type_name, classification), departments in observed.items():
        for department in departments:
            assert any(t == type_name and RANK[c] >= RANK[classification] and department in d for (t, c), d in reach.items()), (type_name, department)
    assert reach[("case.status.updated", "CONFIDENTIAL")] == reach[("case.escalated", "CONFIDENTIAL")] == {"petition", "triage"}


def test_a_bad_yaml_file_names_its_line(config_dir):
    assert list(problems_by_line(config_dir, "departments:\n  citymgmt: [\n")) == [3]


def test_policy_check_command(config_dir):
    runner = CliRunner()
    ok = runner.invoke(cli, ["policy", "check"], env={"CIVICBUS_CONFIG": str(config_dir)})
    assert ok.exit_code == 0 and "policy ok: 23 departments" in ok.output
    text = (config_dir / "policy.yaml").read_text().replace("clearance: RESTRICTED", "clearance: SECRET", 1)
    (config_dir / "policy.yaml").write_text(text)
    bad = runner.invoke(cli, ["policy", "check"], env={"CIVICBUS_CONFIG": str(config_dir)})
    line = text.splitlines().index("    clearance: SECRET") + 1
    assert bad.exit_code == 1 and f"policy.yaml:{line}: departments.hotline12345.clearance: Input should be" in bad.output


def test_publishes_in_departments_yaml_is_refused_with_a_pointer(config_dir):
    text = (config_dir / "departments.yaml").read_text().replace("    name_en: City Management Bureau\n", "    name_en: City Management Bureau\n    publishes: [x]\n")
    (config_dir / "departments.yaml").write_text(text)
    with pytest.raises(ValueError, match="moved to config/policy.yaml"):
        load_city(config_dir)


# ---- the property: every feed is exactly what the policy says ---------------------------------

DEPARTMENTS = ("a", "b", "c", "district.d1", "district.d2", "street.d1.s1", "street.d1.s2", "street.d2.s1")
AREAS = Areas(districts=("d1", "d2"), streets=("d1.s1", "d1.s2", "d2.s1"))


@settings(max_examples=400, deadline=None)
@given(policy_documents(DEPARTMENTS, AREAS), events(DEPARTMENTS, AREAS))
def test_every_feed_is_exactly_what_the_policy_says(document, event):
    policy = Policy(PolicyDocument.model_validate(document), CATALOG)
    event_type = CATALOG[event["type"]]
    shown = {}
    for delivery in policy.deliveries(event):
        copy, masked = masked_event(event, event_type, delivery.masked, delivery.scanned)
        shown[delivery.department] = set(masked)
        assert CATALOG.validate(copy) == copy  # still valid against its schema
        for name in event_type.personal_fields:
            if name in masked:
                original = event["data"][name]  # a value that is its own mask ("***") stays what it was
                assert "*" in copy["data"][name] and (copy["data"][name] != original or mask_text(original) == original)
            else:
                assert copy["data"][name] == event["data"][name]
        for name in (*event_type.free_text_fields, *event_type.envelope_free_text):
            if any(entry.startswith(name + ":") for entry in masked):
                assert free_text(copy, name) != free_text(event, name) and "*" in free_text(copy, name)
            else:
                assert free_text(copy, name) == free_text(event, name)
    assert shown == expected_receivers(policy.document, event)


@settings(max_examples=100, deadline=None)
@given(policy_documents(DEPARTMENTS, AREAS), st.lists(events(DEPARTMENTS, AREAS), min_size=2, max_size=12))
def test_a_decision_remembered_is_the_one_made_afresh(document, batch):
    """Policy.deliveries decides once per DecisionInputs: after a batch has filled its memory,
    each event gets what a policy deciding it for the first time gives."""
    policy = Policy(PolicyDocument.model_validate(document), CATALOG)
    for event in batch:
        policy.deliveries(event)
    for event in batch + [{**event, "id": str(uuid.uuid4()), "subject": None} for event in batch]:
        assert policy.deliveries(event) == Policy(policy.document, CATALOG).deliveries(event)
