"""Loading and checking the policy file (`civicbus policy check`), and following its changes.

`load_policy` refuses a file with unknown departments, types, categories or fields, grants that
can never apply, and departments dispatch sends an event they are not cleared for (at the
classification it travels with: a case's updates carry the case's): `policy check` names the
file and line of each. `PolicySource` reloads the file when it changes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from civicbus.config import CityConfig, WatchedFile
from civicbus.dispatch import Dispatch
from civicbus.metrics import POLICY_RELOADS
from civicbus.policy.decision import ALL_FIELDS, RANK, DepartmentRules, Policy, PolicyDocument, ReceiveGrant
from civicbus.policy.masking import maskable
from civicbus.schemas import EventCatalog, EventType
from civicbus.yamllines import LinedYaml, load_with_lines

log = logging.getLogger(__name__)

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


def _enum_symbols(event_type: EventType, field_name: str) -> tuple[str, ...] | None:
    """The symbols of an enum field of `data`; None when the field is free text (or absent)."""
    field = event_type.data_fields.get(field_name)
    kind = field["type"] if field else None
    return tuple(kind["symbols"]) if isinstance(kind, dict) and kind.get("type") == "enum" else None


def dispatch_reach(document: PolicyDocument, city: CityConfig, catalog: EventCatalog) -> dict[tuple[str, str], set[str]]:
    """(event type, classification) -> every department dispatch can name in its `targets` (pure):
    civicbus.dispatch's rules applied to every place, category and publisher at once."""
    def publishers(type_name: str) -> list[str]:
        return [d for d, rules in document.departments.items() if type_name in rules.publishes]

    return Dispatch(city).reach(catalog, publishers)


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
        fields = event_type.data_fields
        for name in event_type.personal_fields:
            if not maskable(fields[name]):
                problems.append(Problem((), f"{event_type.name}: personal field {name} cannot be masked: make it a string, nullable, or give it a default"))
    return problems + _dispatched_above_clearance(document, city, catalog)


def _dispatched_above_clearance(document: PolicyDocument, city: CityConfig, catalog: EventCatalog) -> list[Problem]:
    reach = dispatch_reach(document, city, catalog)
    problems = []
    for department, rules in document.departments.items():
        for (type_name, classification), departments in sorted(reach.items()):
            if department in departments and RANK[classification] > RANK[rules.clearance]:
                problems.append(Problem(
                    ("departments", department, "clearance"),
                    f"{department} is dispatched {type_name} ({classification}) but cleared only for "
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
    elif grant.confidential and rules.clearance != "CONFIDENTIAL":
        problems.append(Problem(here + ("confidential",), f"confidential grant for {grant.type} can never apply: clearance is {rules.clearance}"))
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
    grantable = (*event_type.personal_fields, *event_type.free_text_fields, *event_type.envelope_free_text)
    for j, name in enumerate(fields):
        if name != ALL_FIELDS and name not in grantable:
            known = ", ".join(grantable)
            problems.append(Problem(here + (j,), f"{name!r} is not a personal or free-text field of {type_name} (those are: {known})"))
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
