"""The delivery policy: the pure decision, masking, and `policy check` naming lines."""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from civicbus.cli import app as cli
from civicbus.config import load_city
from civicbus.policy import RANK, DepartmentRules, Policy, PolicyDocument, PolicyError, decide, load_policy, mask_text, masked_event
from civicbus.schemas import CLASSIFICATIONS, EventCatalog
from civicbus.settings import REPO_ROOT

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
    # dispatched to citymgmt (phone granted), granted to petition (complaints; name and phone),
    # street/district offices are INTERNAL: a RESTRICTED call does not reach them
    assert by_department == {"citymgmt": ("caller_name",), "petition": ()}


def test_masking_is_visible_and_keeps_the_event_valid():
    event = hotline_call()
    masked = masked_event(event, CATALOG["hotline.request.received"], ("caller_name", "caller_phone"))
    assert masked["data"]["caller_name"] == "***" and masked["data"]["caller_phone"] == "138****5678"
    assert event["data"]["caller_phone"] == "13812345678"  # the original is untouched
    assert CATALOG.validate(masked) == masked


@pytest.mark.parametrize(
    "value, expected",
    [("13812345678", "138****5678"), ("138-1234-5678", "138****5678"), ("11010119900307123X", "110***********123X"),
     ("王伟", "***"), ("Zhang Wei", "***"), ("12345", "***")],
)
def test_mask_text(value, expected):
    assert mask_text(value) == expected


def test_unknown_place_reaches_a_street_office_only_when_dispatched():
    rules = POLICY.rules("street.dongcheng.andingmen")
    report = CATALOG.validate({**hotline_call(), "type": "city.case.reported", "classification": "INTERNAL", "location": None,
                               "data": {"category": "landscaping", "subcategory": "fallen_tree", "description": "树倒了"}})
    event_type = CATALOG["city.case.reported"]
    assert decide("street.dongcheng.andingmen", rules, {**report, "targets": []}, event_type) is None  # granted, place unknown
    assert decide("street.dongcheng.andingmen", rules, {**report, "targets": ["street.dongcheng.andingmen"]}, event_type)
    elsewhere = {**report, "location": {**hotline_call()["location"], "street": "xicheng.xinjiekou", "district": "xicheng"}}
    assert decide("street.dongcheng.andingmen", rules, {**elsewhere, "targets": ["street.dongcheng.andingmen"]}, event_type) is None


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
    for name in ("departments.yaml", "dispatch.yaml", "policy.yaml"):
        shutil.copy(REPO_ROOT / "config" / name, tmp_path / name)
    return tmp_path


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
        5: ["unknown event type 'city.case.invented'"],
        7: ["grant for hotline.request.received (RESTRICTED) can never apply: clearance is INTERNAL"],
        9: ["unknown category 'potholes' of city.case.reported (known: city_appearance, street_order, landscaping, municipal_facilities)"],
        11: ["'reporter_email' is not a personal field of city.case.reported (personal fields: reporter_name, reporter_phone)"],
        12: ["unknown department 'ministry' (not in departments.yaml)"],
        17: ["street.dongcheng.andingmen is a street office: its jurisdiction must be street dongcheng.andingmen"],
    }


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

DISTRICTS = ("d1", "d2")
STREETS = ("d1.s1", "d1.s2", "d2.s1")
TYPES = sorted(CATALOG.types)


def _category_symbols(type_name):
    data = next(f for f in CATALOG[type_name].wire_schema["fields"] if f["name"] == "data")["type"]
    category = next((f for f in data["fields"] if f["name"] == "category"), None)
    return category["type"]["symbols"] if category else []


@st.composite
def department_rules(draw, department: str):
    kind, _, name = department.partition(".")
    any_area = st.one_of(st.just("city"), st.builds(lambda d: {"district": d}, st.sampled_from(DISTRICTS)),
                         st.builds(lambda s: {"street": s}, st.sampled_from(STREETS)))
    area = {"district": {"district": name}, "street": {"street": name}}.get(kind) or draw(any_area)
    grants = []
    for type_name in draw(st.lists(st.sampled_from(TYPES), unique=True, max_size=3)):
        symbols = _category_symbols(type_name)
        categories = draw(st.lists(st.sampled_from(symbols), unique=True, max_size=2)) if symbols else []
        grants.append({"type": type_name, "categories": categories})
    personal = {}
    for type_name in draw(st.lists(st.sampled_from(TYPES), unique=True, max_size=2)):
        fields = list(CATALOG[type_name].personal_fields) + ["*"]
        personal[type_name] = draw(st.lists(st.sampled_from(fields), unique=True, min_size=1))
    return {"clearance": draw(st.sampled_from(CLASSIFICATIONS)), "jurisdiction": area, "receives": grants, "personal": personal}


DEPARTMENTS = ("a", "b", "c", "district.d1", "district.d2", "street.d1.s1", "street.d1.s2", "street.d2.s1")


@st.composite
def policies(draw) -> Policy:
    chosen = draw(st.lists(st.sampled_from(DEPARTMENTS), unique=True, min_size=1))
    document = PolicyDocument.model_validate({"departments": {d: draw(department_rules(d)) for d in chosen}})
    return Policy(document, CATALOG)


@st.composite
def events(draw) -> dict:
    type_name = draw(st.sampled_from(TYPES))
    event_type = CATALOG[type_name]
    data_schema = next(f for f in event_type.wire_schema["fields"] if f["name"] == "data")["type"]
    data = {}
    for field in data_schema["fields"]:
        kind = field["type"]
        if isinstance(kind, dict) and kind["type"] == "enum":
            data[field["name"]] = draw(st.sampled_from(kind["symbols"]))
        elif field["name"] in event_type.personal_fields:
            data[field["name"]] = draw(st.one_of(st.none(), st.just("13812345678"), st.text(min_size=1, max_size=8)))
        elif "default" in field:
            data[field["name"]] = field["default"]
        else:
            data[field["name"]] = "x"
    street = draw(st.one_of(st.none(), st.sampled_from(STREETS)))
    location = None if street is None and draw(st.booleans()) else {
        "street": street, "district": street.split(".")[0] if street else draw(st.one_of(st.none(), st.sampled_from(DISTRICTS)))}
    return CATALOG.validate({
        "id": str(uuid.uuid4()), "type": type_name, "source": "a", "time": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "classification": draw(st.sampled_from(CLASSIFICATIONS)), "location": location, "data": data,
        "targets": draw(st.lists(st.sampled_from(DEPARTMENTS), unique=True, max_size=3)),
    })


def expected_receivers(policy: Policy, event: dict) -> dict[str, set[str]]:
    """The policy's promise, stated as sets: department -> personal fields it must see masked."""
    out = {}
    location = event["location"] or {}
    for department, rules in policy.document.departments.items():
        dispatched = department in event["targets"]
        granted = [g for g in rules.receives if g.type == event["type"] and (not g.categories or event["data"].get("category") in g.categories)]
        if not (dispatched or granted) or RANK[event["classification"]] > RANK[rules.clearance]:
            continue
        area = rules.jurisdiction
        if area != "city":
            placed = location.get("street") if area.street else location.get("district")
            if (placed is None and not dispatched) or (placed is not None and placed != (area.street or area.district)):
                continue
        personal = CATALOG[event["type"]].personal_fields
        allowed = set(rules.personal.get(event["type"], ()))
        out[department] = {f for f in personal if event["data"].get(f) is not None and event["data"].get(f) != "" and "*" not in allowed and f not in allowed}
    return out


@settings(max_examples=400, deadline=None)
@given(policies(), events())
def test_every_feed_is_exactly_what_the_policy_says(policy, event):
    deliveries = policy.deliveries(event)
    assert {d.department: set(d.masked) for d in deliveries} == expected_receivers(policy, event)
    event_type = CATALOG[event["type"]]
    for delivery in deliveries:
        copy = masked_event(event, event_type, delivery.masked)
        assert CATALOG.validate(copy) == copy  # still valid against its schema
        for name in event_type.personal_fields:
            if name in delivery.masked:
                assert copy["data"][name] != event["data"][name] and "*" in copy["data"][name]
            else:
                assert copy["data"][name] == event["data"][name]
