"""Dispatch: which departments an event goes to, and who answers for a case (pure). The one rule.

- An event that forms no case: the `to` of every dispatch.yaml rule for its type, and the street
  and district offices of its place when the rule says `offices: true`.
- A case: its responsible departments (the `to` of a dispatch.yaml `cases` rule for its type, else
  its category's departments, else the hub) and the street and district offices of its place
  (市—区—街道), unless the case rule says `offices: false`.
- Whatever no rule claims, and every event whose place could not be determined, also goes to the hub.
- A status update is relayed to everyone on the case but its sender (to the sender when it is
  alone on it); a department handing a case back (HANDING_BACK) makes the hub responsible as well.
- An escalation goes to the responsible departments, the district office (when the case has
  offices) and the reporting departments.
- A case of a type with a case rule, or opened by a CONFIDENTIAL report, stands alone: no other
  report joins it and its reports join no other case, so its events reach only its own departments.

Each rule is written once over a `Place` (the offices of a location, and whether it is unknown).
`reach` applies the same rules to every place at once, which is how `policy check` knows every
department dispatch can name, at which classification, without a second copy of the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from civicbus.config import Category, CityConfig, district_office, street_office
from civicbus.schemas import CLASSIFICATIONS, ESCALATION_TYPE, EventCatalog, EventType

HANDING_BACK = frozenset({"rejected", "reassigned"})  # "not ours": the hub re-dispatches


def highest(*classifications: str) -> str:
    return max(classifications, key=CLASSIFICATIONS.index)


def _unique(departments: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(departments))


@dataclass(frozen=True)
class Place:
    """The offices owning a location, and whether the location could not be placed."""

    streets: tuple[str, ...] = ()
    districts: tuple[str, ...] = ()
    unknown: bool = False

    @classmethod
    def of(cls, location: dict[str, Any] | None) -> Place:
        if location is None:
            return cls()
        if not location.get("resolved"):
            return cls(unknown=True)
        return cls((street_office(location["street"]),), (district_office(location["district"]),))

    @property
    def offices(self) -> list[str]:
        return [*self.streets, *self.districts]


class Dispatch:
    def __init__(self, city: CityConfig):
        self.table = city.dispatch
        self.categories = city.categories
        self.hub = city.dispatch.hub
        self.anywhere = Place(tuple(city.map.street_offices()), tuple(city.map.district_offices()), unknown=True)

    # ---- one event ---------------------------------------------------------------------

    def event_targets(self, event_type: str, place: Place) -> list[str]:
        """Departments for an event that forms no case: every rule matching its type, in rule order."""
        targets: list[str] = []
        for rule in self.table.rules:
            if rule.type == event_type:
                targets += [*rule.to, *(place.offices if rule.offices else ())]
        return self._with_hub(targets, place)

    def responsible(self, event_type: str, category: Category | None) -> list[str]:
        """The departments answerable for a case's deadlines."""
        rule = self.table.case_rule(event_type)
        if rule is not None:
            return list(rule.to)
        return list(category.departments) if category is not None else [self.hub]

    def stands_alone(self, event_type: str, classification: str) -> bool:
        """Whether a case opened by such a report is kept apart from every other (no merging)."""
        return self.table.case_rule(event_type) is not None or classification == "CONFIDENTIAL"

    def case_targets(self, event_type: str, responsible: list[str], place: Place) -> list[str]:
        """Everyone a case is dispatched to: the responsible departments and its place's offices."""
        return self._with_hub(responsible + self._case_offices(event_type, place.offices), place)

    def handed_back(self, responsible: list[str], targets: list[str]) -> tuple[list[str], list[str]]:
        """Responsible departments and targets once a department hands the case back."""
        return _unique([*responsible, self.hub]), _unique([*targets, self.hub])

    @staticmethod
    def relay_targets(originators: list[str], targets: list[str], sender: str | None) -> list[str]:
        """Who hears of a status update: the reporters first, then everyone dispatched, not its
        sender; the sender itself when it is alone on the case (a petitions bureau on its own
        petition), so the update is delivered and audited rather than undeliverable."""
        others = [d for d in _unique(originators + targets) if d != sender]
        return others or [d for d in (sender,) if d is not None]

    def escalation_targets(self, event_type: str, responsible: list[str], originators: list[str], place: Place) -> list[str]:
        return _unique(responsible + self._case_offices(event_type, list(place.districts)) + originators)

    def _case_offices(self, event_type: str, offices: list[str]) -> list[str]:
        rule = self.table.case_rule(event_type)
        return offices if rule is None or rule.offices else []

    def _with_hub(self, targets: list[str], place: Place) -> list[str]:
        return _unique([*targets, self.hub] if not targets or place.unknown else targets)

    # ---- every event (`policy check`) ---------------------------------------------------

    def reach(self, catalog: EventCatalog, publishers: Callable[[str], Iterable[str]]) -> dict[tuple[str, str], set[str]]:
        """(event type, classification) -> every department dispatch can send it at that classification.

        Reports and other events travel at their type's default classification. A case's status
        updates and escalations carry the case's classification: for a case that stands alone,
        that of its own type; cases of the other types merge by category, so theirs can be the
        highest of those types. `publishers(type)`: the departments that may publish a type."""
        reach: dict[tuple[str, str], set[str]] = {}

        def add(event_type: str, classification: str, departments: Iterable[str]) -> None:
            reach.setdefault((event_type, classification), set()).update(departments)

        case_types = [t for t in catalog if t.forms_case]
        for event_type in catalog:
            if event_type.forms_case:
                add(event_type.name, event_type.classification, self._any_case_targets(event_type))
            elif not event_type.updates_case and event_type.name != ESCALATION_TYPE:
                add(event_type.name, event_type.classification, self.event_targets(event_type.name, self.anywhere))
        merging = [t for t in case_types if not self.stands_alone(t.name, t.classification)]
        alone = [[t] for t in case_types if self.stands_alone(t.name, t.classification)]
        for kind in ([merging] if merging else []) + alone:
            classification = highest(*(t.classification for t in kind))
            responsible, targets = self.handed_back(
                _unique(d for t in kind for d in self._any_responsible(t)), _unique(d for t in kind for d in self._any_case_targets(t))
            )
            originators = _unique(d for t in kind for d in publishers(t.name))
            for update in (t for t in catalog if t.updates_case):
                add(update.name, highest(update.classification, classification), self.relay_targets(originators, targets, None))
            if ESCALATION_TYPE in catalog:
                escalation = catalog[ESCALATION_TYPE]
                offices = _unique(d for t in kind for d in self.escalation_targets(t.name, responsible, originators, self.anywhere))
                add(ESCALATION_TYPE, highest(escalation.classification, classification), offices)
        return reach

    def _any_case_targets(self, event_type: EventType) -> list[str]:
        return self.case_targets(event_type.name, self._any_responsible(event_type), self.anywhere)

    def _any_responsible(self, event_type: EventType) -> list[str]:
        """The responsible departments of every category a case of this type can fall in, as
        CategoryTable.lookup finds it: its category field's category, else its family's."""
        listed, families = [c.id for c in self.categories.categories()], list(self.categories.families)
        found = [self.categories.lookup(c) for c in _field_values(event_type, event_type.case_category_field, [*listed, "unlisted"])]
        if None in found:  # a category categories.yaml does not list: its family's, else the hub's
            found += [self.categories.lookup(None, f) for f in _field_values(event_type, event_type.case_family_field, families)]
        return _unique(d for category in found for d in self.responsible(event_type.name, category))


def _field_values(event_type: EventType, field_name: str | None, any_text: list[str]) -> list[str | None]:
    """What a data field naming a category or family can hold: its enum symbols, else any text."""
    if field_name is None:
        return [None]
    kind = event_type.data_fields[field_name]["type"]
    return list(kind["symbols"]) if isinstance(kind, dict) and kind.get("type") == "enum" else any_text
