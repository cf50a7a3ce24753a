"""Hypothesis strategies for random policies and events, and the policy's promise as sets.

Used by the pure property test (tests/unit/test_policy.py) and by the run through the real
fan-out on the broker (tests/integration/test_fanout_policy.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from hypothesis import strategies as st

from civicbus.config import load_city
from civicbus.policy import RANK, PolicyDocument, dispatch_reach
from civicbus.schemas import CLASSIFICATIONS, EventCatalog
from civicbus.settings import REPO_ROOT

CATALOG = EventCatalog(REPO_ROOT / "schemas")
TYPES = sorted(CATALOG.types)
# Who the sample city's dispatch can send each type to, at which classification (the drawn
# policies publish nothing).
REACH = dispatch_reach(PolicyDocument(departments={}), load_city(REPO_ROOT / "config"), CATALOG)
# Free text as people write it, with what identifies a person in it (what masking must find).
FREE_TEXTS = {
    "路面坑洼，3号楼2单元501室门口": (),
    "市民来电，请回电13812345678": ("phone",),
    "身份证110101199003074514，座机010-65123456": ("id_number", "landline"),
    "肇事车辆京A12345已驶离": ("plate",),
    "2026年12月1日第3次反映，工单号2026120100123": (),
}


@dataclass(frozen=True)
class Areas:
    districts: tuple[str, ...]
    streets: tuple[str, ...]  # district.street


def data_fields(type_name: str) -> list[dict]:
    return next(f for f in CATALOG[type_name].wire_schema["fields"] if f["name"] == "data")["type"]["fields"]


def category_symbols(type_name: str) -> list[str]:
    category = next((f for f in data_fields(type_name) if f["name"] == "category"), None)
    kind = category["type"] if category else None
    return list(kind["symbols"]) if isinstance(kind, dict) and kind.get("type") == "enum" else []


def plain_value(draw, avro_type):
    """Some valid value of an Avro type (enums drawn, the rest fixed): the data the policy ignores."""
    if isinstance(avro_type, list):
        return None if "null" in avro_type else plain_value(draw, avro_type[0])
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if kind == "enum":
            return draw(st.sampled_from(avro_type["symbols"]))
        if kind == "record":
            return {f["name"]: plain_value(draw, f["type"]) for f in avro_type["fields"]}
        if kind in ("array", "map"):
            return [] if kind == "array" else {}
        if avro_type.get("logicalType") == "timestamp-millis":
            return datetime(2026, 1, 1, tzinfo=timezone.utc)
        return plain_value(draw, kind)
    return {"string": "x", "int": 0, "long": 0, "float": 0.0, "double": 0.0, "boolean": False, "bytes": b"", "null": None}[avro_type]


@st.composite
def department_rules(draw, department: str, areas: Areas, consistent: bool) -> dict:
    """consistent: only what `policy check` accepts: a clearance covering what the sample city's
    dispatch can send the department, no grants above it."""
    kind, _, name = department.partition(".")
    any_area = st.one_of(
        st.just("city"),
        st.builds(lambda d: {"district": d}, st.sampled_from(areas.districts)),
        st.builds(lambda s: {"street": s}, st.sampled_from(areas.streets)),
    )
    area = {"district": {"district": name}, "street": {"street": name}}.get(kind) or draw(any_area)
    dispatched = [RANK[classification] for (_, classification), departments in REACH.items() if department in departments]
    clearance = draw(st.sampled_from(CLASSIFICATIONS[max(dispatched, default=0) if consistent else 0:]))
    grantable = [t for t in TYPES if not consistent or RANK[CATALOG[t].classification] <= RANK[clearance]]
    grants = []
    for type_name in draw(st.lists(st.sampled_from(grantable), unique=True, max_size=3)) if grantable else []:
        symbols = category_symbols(type_name)
        categories = draw(st.lists(st.sampled_from(symbols), unique=True, max_size=2)) if symbols else []
        confidential = draw(st.booleans()) and (clearance == "CONFIDENTIAL" or not consistent)
        grants.append({"type": type_name, "categories": categories, "confidential": confidential})
    personal = {}
    for type_name in draw(st.lists(st.sampled_from(grantable), unique=True, max_size=2)) if grantable else []:
        event_type = CATALOG[type_name]
        fields = [*event_type.personal_fields, *event_type.free_text_fields, *event_type.envelope_free_text, "*"]
        personal[type_name] = draw(st.lists(st.sampled_from(fields), unique=True, min_size=1))
    return {"clearance": clearance, "jurisdiction": area, "receives": grants, "personal": personal}


@st.composite
def policy_documents(draw, departments: tuple[str, ...], areas: Areas, every_department: bool = False, consistent: bool = False) -> dict:
    chosen = departments if every_department else draw(st.lists(st.sampled_from(departments), unique=True, min_size=1))
    return {"departments": {d: draw(department_rules(d, areas, consistent)) for d in chosen}}


@st.composite
def events(draw, departments: tuple[str, ...], areas: Areas, source: str = "citymgmt") -> dict:
    """A valid event of any catalog type, as the pipeline hands it to the fan-out."""
    type_name = draw(st.sampled_from(TYPES))
    event_type = CATALOG[type_name]
    data = {}
    free_texts = st.sampled_from(sorted(FREE_TEXTS))
    for field in data_fields(type_name):
        if field["name"] in event_type.free_text_fields:
            nullable = isinstance(field["type"], list) and "null" in field["type"]
            data[field["name"]] = draw(st.one_of(st.none(), free_texts) if nullable else free_texts)
        elif field["name"] in event_type.personal_fields:
            texts = st.one_of(st.just("13812345678"), st.text(min_size=1, max_size=8))
            nullable = isinstance(field["type"], list) and "null" in field["type"]
            data[field["name"]] = draw(st.one_of(st.none(), texts) if nullable else texts)
        else:
            data[field["name"]] = plain_value(draw, field["type"])
    street = draw(st.one_of(st.none(), st.sampled_from(areas.streets)))
    district = street.split(".")[0] if street else draw(st.one_of(st.none(), st.sampled_from(areas.districts)))
    raw_address = draw(st.one_of(st.none(), free_texts))
    location = None if street is None and draw(st.booleans()) else {"street": street, "district": district, "raw_address": raw_address}
    return CATALOG.validate({
        "id": str(uuid.uuid4()), "type": type_name, "source": source, "time": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "subject": draw(st.one_of(st.none(), free_texts)),
        "classification": draw(st.sampled_from(CLASSIFICATIONS)), "location": location, "data": data,
        "targets": draw(st.lists(st.sampled_from(departments), unique=True, max_size=3)),
    })


def free_text(event: dict, field: str) -> str | None:
    if field == "subject":
        return event["subject"]
    if field == "location.raw_address":
        return (event["location"] or {}).get("raw_address")
    return event["data"][field]


def expected_receivers(document: PolicyDocument, event: dict) -> dict[str, set[str]]:
    """The policy's promise, restated as sets: receiving department -> what it sees masked (the
    personal fields, and `field:kind` for what free text it holds no grant for identifies)."""
    out = {}
    location = event["location"] or {}
    event_type = CATALOG[event["type"]]
    for department, rules in document.departments.items():
        dispatched = department in event["targets"]
        category = event["data"].get("category")
        granted = any(
            g.type == event["type"] and (not g.categories or category in g.categories) and (g.confidential or event["classification"] != "CONFIDENTIAL")
            for g in rules.receives
        )
        if not (dispatched or granted) or RANK[event["classification"]] > RANK[rules.clearance]:
            continue
        area = rules.jurisdiction
        if area != "city":
            placed = location.get("street") if area.street else location.get("district")
            if (placed is None and not dispatched) or (placed is not None and placed != (area.street or area.district)):
                continue
        allowed = set(rules.personal.get(event["type"], ()))
        hidden = {f for f in (*event_type.personal_fields, *event_type.free_text_fields, *event_type.envelope_free_text)
                  if "*" not in allowed and f not in allowed}
        out[department] = {f for f in event_type.personal_fields if event["data"].get(f) not in (None, "") and f in hidden} | {
            f"{f}:{kind}" for f in (*event_type.free_text_fields, *event_type.envelope_free_text) if f in hidden
            for kind in FREE_TEXTS.get(free_text(event, f), ())
        }
    return out
