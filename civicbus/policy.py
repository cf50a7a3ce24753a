"""The delivery policy (config/policy.yaml): who may publish what, who receives what, masked how.

One file, reviewed like code, per department: the event types it may publish, its clearance
(PUBLIC < INTERNAL < RESTRICTED < CONFIDENTIAL), grants to receive further types (or some
categories of a type), grants to see personal fields unmasked, and its jurisdiction (the city,
one district or one street).

The decision is one pure function, `decide`: a department receives an event when it was
dispatched to it or holds a grant for it, AND the event's classification is within its
clearance, AND the event lies inside its jurisdiction. An event whose place is unknown (not
standardised) cannot be shown to lie inside a district or street: it reaches such a department
only when dispatched to it, never through a grant. Every personal field the department holds no
grant for is masked, visibly and schema-valid (see `mask_text`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import KeysView
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from civicbus.config import CategoryTable, CityConfig, WatchedFile
from civicbus.metrics import POLICY_RELOADS
from civicbus.schemas import CLASSIFICATIONS, ESCALATION_TYPE, EventCatalog, EventType
from civicbus.yamllines import LinedYaml, load_with_lines

log = logging.getLogger(__name__)

RANK = {level: rank for rank, level in enumerate(CLASSIFICATIONS)}
ALL_FIELDS = "*"

Classification = Literal["PUBLIC", "INTERNAL", "RESTRICTED", "CONFIDENTIAL"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Area(_Frozen):
    """A district (e.g. `dongcheng`) or a street (e.g. `dongcheng.andingmen`), as the
    standardise stage writes them into `location.district` / `location.street`."""

    district: str | None = None
    street: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Area:
        if (self.district is None) == (self.street is None):
            raise ValueError("give exactly one of `district` or `street` (or write `jurisdiction: city`)")
        return self


class ReceiveGrant(_Frozen):
    type: str
    categories: tuple[str, ...] = ()  # empty: every category of the type

    def matches(self, event: dict[str, Any]) -> bool:
        if event["type"] != self.type:
            return False
        return not self.categories or (event.get("data") or {}).get("category") in self.categories


class DepartmentRules(_Frozen):
    clearance: Classification
    jurisdiction: Literal["city"] | Area
    publishes: tuple[str, ...] = ()
    receives: tuple[ReceiveGrant, ...] = ()
    personal: dict[str, tuple[str, ...]] = {}  # event type -> personal fields seen unmasked ("*": all)

    def inside(self, location: dict[str, Any] | None) -> bool | None:
        """Whether the location lies in the jurisdiction; None when its place is unknown."""
        if self.jurisdiction == "city":
            return True
        level, name = ("street", self.jurisdiction.street) if self.jurisdiction.street else ("district", self.jurisdiction.district)
        placed = (location or {}).get(level)
        return None if placed is None else placed == name

    def sees_unmasked(self, event_type: str, field_name: str) -> bool:
        granted = self.personal.get(event_type, ())
        return ALL_FIELDS in granted or field_name in granted


class RateLimit(_Frozen):
    """What the HTTP gateway lets one department do at once (429 with Retry-After beyond it)."""

    publish_per_s: float = Field(50.0, gt=0)  # sustained publishes per second ...
    publish_burst: int = Field(100, ge=1)  # ... and how many may come at once (a token bucket)
    concurrent_reads: int = Field(32, ge=1)  # feed requests open at the same time (long-polls, streams)


class PolicyDocument(_Frozen):
    departments: dict[str, DepartmentRules]
    rate_limits: dict[str, RateLimit] = {}  # "default" and per department

    @field_validator("rate_limits")
    @classmethod
    def _known_departments(cls, limits: dict[str, RateLimit], info: ValidationInfo) -> dict[str, RateLimit]:
        unknown = set(limits) - {"default"} - set(info.data.get("departments") or ())
        if unknown:
            raise ValueError(f"rate limits for departments without a policy entry: {', '.join(sorted(unknown))}")
        return limits


@dataclass(frozen=True)
class Delivery:
    department: str
    masked: tuple[str, ...]  # personal fields of `data` masked for this department


def decide(department: str, rules: DepartmentRules, event: dict[str, Any], event_type: EventType) -> Delivery | None:
    """May `department` receive `event`, and which of its personal fields are masked? (pure)"""
    dispatched = department in (event.get("targets") or ())
    if not (dispatched or any(grant.matches(event) for grant in rules.receives)):
        return None
    if RANK[event["classification"]] > RANK[rules.clearance]:
        return None
    inside = rules.inside(event.get("location"))
    if inside is False or (inside is None and not dispatched):
        return None
    data = event.get("data") or {}
    masked = tuple(
        f for f in event_type.personal_fields if data.get(f) not in (None, "", []) and not rules.sees_unmasked(event_type.name, f)
    )
    return Delivery(department, masked)


# ---- masking ---------------------------------------------------------------------------------


def mask_text(value: str) -> str:
    """Phone and id numbers keep their first 3 and last 4 characters (138****5678), so a clerk can
    still tell two callers apart; anything else (names, addresses) becomes `***`."""
    compact = value.replace(" ", "").replace("-", "")
    if len(compact) >= 7 and compact.rstrip("Xx").isdigit():
        return compact[:3] + "*" * (len(compact) - 7) + compact[-4:]
    return "***"


def mask_value(avro_field: dict[str, Any], value: Any) -> Any:
    """A masked value that still validates against the field's Avro type."""
    if value is None:
        return None
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [mask_text(v) for v in value]
    branches = avro_field["type"] if isinstance(avro_field["type"], list) else [avro_field["type"]]
    if "null" in branches:
        return None
    if "default" in avro_field:
        return avro_field["default"]
    raise ValueError(f"personal field {avro_field['name']} cannot be masked (see maskable)")


def maskable(avro_field: dict[str, Any]) -> bool:
    """Whether mask_value can mask every value of this field (checked once, at policy load)."""
    branches = avro_field["type"] if isinstance(avro_field["type"], list) else [avro_field["type"]]
    names = [b.get("type") if isinstance(b, dict) else b for b in branches]
    strings = "string" in names or any(isinstance(b, dict) and b.get("type") == "array" and b.get("items") == "string" for b in branches)
    return strings or "null" in names or "default" in avro_field


def data_fields(event_type: EventType) -> dict[str, dict[str, Any]]:
    data = next(f for f in event_type.wire_schema["fields"] if f["name"] == "data")
    return {f["name"]: f for f in data["type"]["fields"]}


def masked_event(event: dict[str, Any], event_type: EventType, masked: tuple[str, ...]) -> dict[str, Any]:
    """A copy of `event` with the named personal fields of `data` masked."""
    if not masked:
        return event
    fields = data_fields(event_type)
    data = dict(event["data"])
    for name in masked:
        data[name] = mask_value(fields[name], data[name])
    return {**event, "data": data}


# ---- the policy as loaded --------------------------------------------------------------------


class Policy:
    """The checked policy of one city, with the catalog it was checked against."""

    def __init__(self, document: PolicyDocument, catalog: EventCatalog):
        self.document = document
        self.catalog = catalog

    @property
    def departments(self) -> KeysView[str]:
        return self.document.departments.keys()

    def rules(self, department: str) -> DepartmentRules:
        try:
            return self.document.departments[department]
        except KeyError:
            raise KeyError(f"unknown department {department!r}") from None

    def may_publish(self, department: str, event_type: str) -> bool:
        rules = self.document.departments.get(department)
        return rules is not None and event_type in rules.publishes

    def deliveries(self, event: dict[str, Any]) -> list[Delivery]:
        """Every department that receives `event`, in policy order."""
        event_type = self.catalog[event["type"]]
        decided = (decide(d, rules, event, event_type) for d, rules in self.document.departments.items())
        return [delivery for delivery in decided if delivery is not None]

    def rate_limit(self, department: str) -> RateLimit:
        limits = self.document.rate_limits
        return limits.get(department) or limits.get("default") or RateLimit()

    def publishers(self, event_type: str) -> list[str]:
        return [d for d, rules in self.document.departments.items() if event_type in rules.publishes]

    def receivers(self, event_type: EventType) -> dict[str, list[str]]:
        """Who may receive a type at its default classification: by grant, or when dispatched."""
        cleared = [d for d, r in self.document.departments.items() if RANK[r.clearance] >= RANK[event_type.classification]]
        granted = [d for d in cleared if any(g.type == event_type.name for g in self.rules(d).receives)]
        return {"by_grant": granted, "when_dispatched": cleared}


# ---- loading and checking (`civicbus policy check`) ------------------------------------------


class PolicyError(ValueError):
    """The policy file is invalid; `problems` are `file:line: message` strings."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Problem:
    path: tuple[Any, ...]
    message: str
    line: int | None = None  # when the path alone does not tell (a duplicate key)


def _enum_symbols(event_type: EventType, field_name: str | None) -> tuple[str, ...] | None:
    """The symbols of an enum field of `data`; None when the field is free text (or absent)."""
    field = data_fields(event_type).get(field_name)
    kind = field["type"] if field else None
    return tuple(kind["symbols"]) if isinstance(kind, dict) and kind.get("type") == "enum" else None


def _field_values(event_type: EventType, field_name: str | None, any_text: list[str]) -> list[str | None]:
    """What a data field naming a category or family can hold: its enum symbols, else any text."""
    if field_name is None:
        return [None]
    symbols = _enum_symbols(event_type, field_name)
    return list(symbols) if symbols is not None else any_text


def _case_departments(event_type: EventType, categories: CategoryTable) -> set[str]:
    """The departments of every category a case of this type can fall in, as CategoryTable.lookup
    finds it: its category field's category, else its family field's family (else the hub's)."""
    listed, families = [c.id for c in categories.categories()], list(categories.families)
    found = [categories.lookup(c) for c in _field_values(event_type, event_type.case_category_field, [*listed, "unlisted"])]
    if None in found:  # a category categories.yaml does not list: its family's departments
        found += [categories.lookup(None, f) for f in _field_values(event_type, event_type.case_family_field, families)]
    return {d for category in found if category is not None for d in category.departments}


def dispatch_reach(document: PolicyDocument, city: CityConfig, catalog: EventCatalog) -> dict[str, set[str]]:
    """Every department dispatch can name in the `targets` of each event type, over all events (pure).

    The same rules as processors/dispatch.py and processors/casebook.py, for any event rather than one:
    - a type that forms no case: the `to` of its dispatch.yaml rules, and every street and
      district office when a rule adds the location's offices;
    - a case-forming type: the departments of every category its category field can name (of its
      family when categories.yaml does not list it), and every street and district office;
    - a case update (case.status.updated), relayed to everyone on the case: all of the above for
      every case-forming type, and the originators (departments that may publish one);
    - the case stage's escalation: responsible departments, district offices and originators.
    The hub is in every set: it takes what no rule claims, every event whose place is unknown,
    cases of unlisted categories, and every case a department hands back.
    """
    hub, offices = city.dispatch.hub, {*city.map.street_offices(), *city.map.district_offices()}
    case_types = [t for t in catalog if t.forms_case]
    responsible = {hub}.union(*(_case_departments(t, city.categories) for t in case_types))
    originators = {d for d, rules in document.departments.items() if any(t.name in rules.publishes for t in case_types)}
    reach: dict[str, set[str]] = {}
    for event_type in catalog:
        targets = {hub}
        if event_type.forms_case:
            targets |= _case_departments(event_type, city.categories) | offices
        elif event_type.updates_case:
            targets |= responsible | offices | originators
        else:
            for rule in city.dispatch.rules:
                if rule.type == event_type.name:
                    targets |= set(rule.to) | (offices if rule.offices else set())
        if event_type.name == ESCALATION_TYPE:
            targets |= responsible | set(city.map.district_offices()) | originators
        reach[event_type.name] = targets
    return reach


def check_document(document: PolicyDocument, city: CityConfig, catalog: EventCatalog) -> list[Problem]:
    """Unknown departments and types, rules that contradict each other or can never apply, and
    departments dispatch sends a type they are not cleared for (the fan-out would drop it there)."""
    problems: list[Problem] = []
    known = set(city.department_ids())
    for missing in sorted(known - set(document.departments)):
        problems.append(Problem(("departments",), f"department {missing} (departments.yaml) has no entry in the policy"))
    for department, rules in document.departments.items():
        here = ("departments", department)
        if department not in known:
            problems.append(Problem(here, f"unknown department {department!r} (not in departments.yaml)"))
        problems += _jurisdiction_problems(department, rules, here)
        for i, type_name in enumerate(rules.publishes):
            if type_name not in catalog:
                problems.append(Problem(here + ("publishes", i), f"unknown event type {type_name!r}"))
        for i, grant in enumerate(rules.receives):
            problems += _grant_problems(rules, grant, catalog, here + ("receives", i))
        for type_name, fields in rules.personal.items():
            problems += _personal_problems(rules, type_name, fields, catalog, here + ("personal", type_name))
    for event_type in catalog:
        fields = data_fields(event_type)
        for name in event_type.personal_fields:
            if not maskable(fields[name]):
                problems.append(Problem((), f"{event_type.name}: personal field {name} cannot be masked: make it a string, nullable, or give it a default"))
    return problems + _dispatched_above_clearance(document, city, catalog)


def _dispatched_above_clearance(document: PolicyDocument, city: CityConfig, catalog: EventCatalog) -> list[Problem]:
    reach = dispatch_reach(document, city, catalog)
    problems = []
    for department, rules in document.departments.items():
        for event_type in catalog:
            if department in reach[event_type.name] and RANK[event_type.classification] > RANK[rules.clearance]:
                problems.append(Problem(
                    ("departments", department, "clearance"),
                    f"{department} is dispatched {event_type.name} ({event_type.classification}) but cleared only for "
                    f"{rules.clearance}: it would never receive it",
                ))
    return problems


def _jurisdiction_problems(department: str, rules: DepartmentRules, here: tuple) -> list[Problem]:
    kind, _, name = department.partition(".")
    area = rules.jurisdiction
    if kind == "district" and (area == "city" or area.district != name):
        return [Problem(here + ("jurisdiction",), f"{department} is a district office: its jurisdiction must be district {name}")]
    if kind == "street" and (area == "city" or area.street != name):
        return [Problem(here + ("jurisdiction",), f"{department} is a street office: its jurisdiction must be street {name}")]
    return []


def _grant_problems(rules: DepartmentRules, grant: ReceiveGrant, catalog: EventCatalog, here: tuple) -> list[Problem]:
    if grant.type not in catalog:
        return [Problem(here + ("type",), f"unknown event type {grant.type!r}")]
    event_type = catalog[grant.type]
    problems = []
    if RANK[event_type.classification] > RANK[rules.clearance]:
        problems.append(Problem(here, f"grant for {grant.type} ({event_type.classification}) can never apply: clearance is {rules.clearance}"))
    symbols = _enum_symbols(event_type, "category")
    for j, category in enumerate(grant.categories):
        if symbols is None:
            problems.append(Problem(here + ("categories", j), f"{grant.type} has no categories"))
        elif category not in symbols:
            problems.append(Problem(here + ("categories", j), f"unknown category {category!r} of {grant.type} (known: {', '.join(symbols)})"))
    return problems


def _personal_problems(rules: DepartmentRules, type_name: str, fields: tuple[str, ...], catalog: EventCatalog, here: tuple) -> list[Problem]:
    if type_name not in catalog:
        return [Problem(here, f"unknown event type {type_name!r}")]
    event_type = catalog[type_name]
    problems = []
    if RANK[event_type.classification] > RANK[rules.clearance]:
        problems.append(Problem(here, f"personal-field grant for {type_name} ({event_type.classification}) can never apply: clearance is {rules.clearance}"))
    for j, name in enumerate(fields):
        if name != ALL_FIELDS and name not in event_type.personal_fields:
            known = ", ".join(event_type.personal_fields) or "none"
            problems.append(Problem(here + (j,), f"{name!r} is not a personal field of {type_name} (personal fields: {known})"))
    return problems


def _problems_of(lined: LinedYaml, city: CityConfig, catalog: EventCatalog) -> tuple[PolicyDocument | None, list[Problem]]:
    problems = [Problem(p, f"duplicate key {p[-1]!r} (first on line {first})", second) for p, first, second in lined.duplicates]
    try:
        document = PolicyDocument.model_validate(lined.data)
    except ValidationError as e:
        for error in e.errors():
            where = ".".join(str(p) for p in error["loc"])
            problems.append(Problem(tuple(error["loc"]), f"{where}: {error['msg']}" if where else error["msg"]))
        return None, problems
    return document, problems + check_document(document, city, catalog)


def load_policy(path: Path, city: CityConfig, catalog: EventCatalog) -> Policy:
    """Load and check the policy file; raise PolicyError naming the file and line of each problem."""
    try:
        lined = load_with_lines(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise PolicyError([f"{path}:{mark.line + 1 if mark else 1}: not valid YAML: {e}"]) from None
    except OSError as e:
        raise PolicyError([f"{path}: {e.strerror}"]) from None
    document, problems = _problems_of(lined, city, catalog)
    if problems:
        raise PolicyError([f"{path}:{p.line or lined.line_of(p.path)}: {p.message}" for p in problems])
    return Policy(document, catalog)


class PolicySource:
    """The current policy, reloaded when the file changes: a change applies to the next event.

    An edit that fails the check is refused (logged, counted), and the last good policy stays
    in force, so a typo in review never opens or closes every feed at once.
    """

    def __init__(self, path: Path, city: CityConfig, catalog: EventCatalog):
        self.path = path
        self.city = city
        self.catalog = catalog
        self._watch = WatchedFile(path)
        self._lock = threading.Lock()
        self._watch.changed()
        self._policy = load_policy(path, city, catalog)

    def get(self) -> Policy:
        if self._watch.changed():
            with self._lock:
                try:
                    self._policy = load_policy(self.path, self.city, self.catalog)
                    POLICY_RELOADS.labels("applied").inc()
                    log.info("policy reloaded from %s", self.path)
                except PolicyError as e:
                    POLICY_RELOADS.labels("refused").inc()
                    log.error("policy change refused, the previous policy stays in force:\n%s", e)
        return self._policy
