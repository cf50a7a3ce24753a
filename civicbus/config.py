"""The city config folder (CIVICBUS_CONFIG) as typed models: one loader for every component.

departments.yaml  departments and the event types each may publish
dispatch.yaml     the hub (triage desk) and dispatch rules for event types that form no case
categories.yaml   case categories by family: departments, deadlines, merge settings
city/             districts.yaml, grid.geojson (grid cells), gazetteer.csv (standard addresses)
master/           master data that `civicbus reference load` puts on civic.ref.* topics

Files are YAML/CSV/GeoJSON so operators can review them like code.
"""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from civicbus.topology import Topology


class Department(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[a-z0-9]+(\.[a-z0-9_]+){0,2}$")
    name_zh: str
    name_en: str
    partitions: int = Field(
        default=1, ge=1, le=64,
        description="Partitions of the department's inbound topic (civic.in.<id>), for a department that publishes "
        "more than one takes; publishers spread their records over them by key (civicbus.quirks, 2).",
    )

    @model_validator(mode="before")
    @classmethod
    def _publishes_lives_in_the_policy(cls, value):
        if isinstance(value, dict) and "publishes" in value:
            raise ValueError("`publishes` moved to config/policy.yaml (one place for who may publish what)")
        return value


class DispatchRule(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str
    to: tuple[str, ...]
    offices: bool = False  # add the street and district offices of the event's location


class CaseRule(BaseModel):
    """Owners of every case a type opens, whatever its category (petitions: the petitions bureau)."""

    model_config = ConfigDict(frozen=True)

    type: str
    to: tuple[str, ...] = Field(min_length=1)
    offices: bool = True  # dispatch the case to the street and district offices of its place too


class DispatchTable(BaseModel):
    hub: str
    rules: tuple[DispatchRule, ...] = ()
    cases: tuple[CaseRule, ...] = ()

    def case_rule(self, event_type: str) -> CaseRule | None:
        return next((rule for rule in self.cases if rule.type == event_type), None)


class Deadlines(BaseModel):
    model_config = ConfigDict(frozen=True)

    accept: timedelta
    resolve: timedelta


class Category(BaseModel):
    """A case category with everything inherited from its family already applied."""

    model_config = ConfigDict(frozen=True)

    id: str
    family: str | None
    name_zh: str
    name_en: str
    departments: tuple[str, ...]
    deadlines: Deadlines
    merge: bool = True


class _CategoryEntry(BaseModel):
    name_zh: str
    name_en: str
    departments: tuple[str, ...] | None = None
    accept: timedelta | None = None
    resolve: timedelta | None = None


class _Family(BaseModel):
    name_zh: str
    name_en: str
    departments: tuple[str, ...]
    accept: timedelta
    resolve: timedelta
    merge: bool = True
    categories: dict[str, _CategoryEntry]


class MergeSettings(BaseModel):
    distance_m: float = Field(gt=0)
    window: timedelta


class EscalationLadder(BaseModel):
    """How long after a case's first escalation for a deadline, while that deadline stays missed,
    it escalates up the levels (市-区-街道): to its district office, then to the city hub."""

    district_after: timedelta = Field(gt=timedelta(0))
    hub_after: timedelta = Field(gt=timedelta(0))

    @model_validator(mode="after")
    def _hub_last(self) -> EscalationLadder:
        if self.hub_after <= self.district_after:
            raise ValueError("escalation.hub_after must be longer than escalation.district_after")
        return self


class CategoryTable(BaseModel):
    merge: MergeSettings
    escalation: EscalationLadder
    clock: timedelta  # how often the case stage checks deadlines
    retention: timedelta  # how long resolved cases are remembered
    unknown: Deadlines
    families: dict[str, _Family]
    _categories: dict[str, Category] = PrivateAttr(default_factory=dict)
    _families: dict[str, Category] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _index(self) -> CategoryTable:
        for family_id, family in self.families.items():
            self._families[family_id] = Category(
                id=family_id, family=family_id, name_zh=family.name_zh, name_en=family.name_en,
                departments=family.departments, deadlines=Deadlines(accept=family.accept, resolve=family.resolve),
                merge=family.merge,
            )
            for category_id, entry in family.categories.items():
                if category_id in self._categories:
                    raise ValueError(f"categories.yaml: category {category_id} is listed in two families")
                self._categories[category_id] = Category(
                    id=category_id, family=family_id, name_zh=entry.name_zh, name_en=entry.name_en,
                    departments=entry.departments or family.departments,
                    deadlines=Deadlines(accept=entry.accept or family.accept, resolve=entry.resolve or family.resolve),
                    merge=family.merge,
                )
        return self

    def lookup(self, category: str | None, family: str | None = None) -> Category | None:
        """The category; else its family's defaults (a known family, an unlisted subcategory); else None."""
        return self._categories.get(category) or self._families.get(family)

    def categories(self) -> list[Category]:
        return list(self._categories.values())

    def named_departments(self) -> set[str]:
        return {d for c in [*self._categories.values(), *self._families.values()] for d in c.departments}


class District(BaseModel):
    id: str
    name_zh: str
    division: str = Field(pattern=r"^\d{6}$")
    city: str
    streets: tuple[str, ...]


class CityMap(BaseModel):
    """Districts and streets; ids are those of the district.<id> and street.<district>.<id> offices."""

    districts: tuple[District, ...]

    def street_ids(self) -> list[str]:
        return [f"{d.id}.{s}" for d in self.districts for s in d.streets]

    def street_offices(self) -> list[str]:
        return [street_office(s) for s in self.street_ids()]

    def district_offices(self) -> list[str]:
        return [district_office(d.id) for d in self.districts]


def street_office(street: str) -> str:
    return f"street.{street}"


def district_office(district: str) -> str:
    return f"district.{district}"


class CityConfig(BaseModel):
    departments: tuple[Department, ...]
    dispatch: DispatchTable
    categories: CategoryTable
    map: CityMap

    @model_validator(mode="after")
    def _names_are_departments(self) -> CityConfig:
        known = {d.id for d in self.departments}
        named = {self.dispatch.hub} | {t for r in (*self.dispatch.rules, *self.dispatch.cases) for t in r.to}
        named |= self.categories.named_departments()
        named |= {*self.map.street_offices(), *self.map.district_offices()}
        unknown = sorted(named - known)
        if unknown:
            raise ValueError(f"the city config names departments missing from departments.yaml: {', '.join(unknown)}")
        return self

    def department_ids(self) -> list[str]:
        return [d.id for d in self.departments]

    def topology(self, namespace: str = "") -> Topology:
        """The city's topics: one inbound topic and one feed per department."""
        return Topology(tuple(self.department_ids()), namespace,
                        inbound_partitions=tuple((d.id, d.partitions) for d in self.departments if d.partitions > 1))

    def department(self, department_id: str) -> Department:
        for d in self.departments:
            if d.id == department_id:
                return d
        raise KeyError(f"unknown department {department_id!r}")


class WatchedFile:
    """Tells whether a file changed since the last call (inode, mtime, size): config that
    long-running processes reload without a restart. Atomic replacement is seen too."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int, int] | None = None

    def changed(self) -> bool:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True


def _read_yaml(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def load_city(config_dir: Path) -> CityConfig:
    """Load and validate the city config; raises pydantic.ValidationError naming the bad entry."""
    return CityConfig(
        departments=_read_yaml(config_dir / "departments.yaml")["departments"],
        dispatch=_read_yaml(config_dir / "dispatch.yaml"),
        categories=_read_yaml(config_dir / "categories.yaml"),
        map=_read_yaml(config_dir / "city" / "districts.yaml"),
    )


class GazetteerEntry(BaseModel):
    """One standard address: 东城区 + 安定门内大街 + 1 -> address code and a point."""

    model_config = ConfigDict(frozen=True)

    address_code: str
    district: str  # district name as written, e.g. 东城区
    road: str
    number: int
    lat: float
    lon: float

    @property
    def text(self) -> str:
        return f"{self.district}{self.road}{self.number}号"


def load_gazetteer(config_dir: Path) -> list[GazetteerEntry]:
    with (config_dir / "city" / "gazetteer.csv").open(encoding="utf-8", newline="") as f:
        return [GazetteerEntry.model_validate(row) for row in csv.DictReader(f)]


def load_grid(config_dir: Path) -> list[dict]:
    """The grid cells (网格) as GeoJSON features: properties grid, street, district; Polygon geometry."""
    return json.loads((config_dir / "city" / "grid.geojson").read_text(encoding="utf-8"))["features"]
