"""Dispatch: which departments receive an event (pure, unit-testable).

Cases go to the departments of their category and to the street and district offices owning
their location (市—区—街道). Other events follow the type rules of dispatch.yaml. Whatever no
rule claims, or whose location could not be placed, also goes to the hub (the triage desk),
so nothing is left without an owner.
"""

from __future__ import annotations

from typing import Any

from civicbus.config import Category, DispatchTable, district_office, street_office


def _unique(departments: list[str]) -> list[str]:
    return list(dict.fromkeys(departments))


def location_offices(location: dict[str, Any] | None) -> list[str]:
    """The street and district offices of a standardised location; none if it is unplaced."""
    if not location or not location.get("resolved"):
        return []
    return [street_office(location["street"]), district_office(location["district"])]


def unplaced(location: dict[str, Any] | None) -> bool:
    return location is not None and not location.get("resolved")


def event_targets(table: DispatchTable, event: dict[str, Any]) -> list[str]:
    """Departments for an event that forms no case: every rule matching its type, in rule order."""
    location = event.get("location")
    targets: list[str] = []
    for rule in table.rules:
        if rule.type == event["type"]:
            targets += rule.to
            if rule.offices:
                targets += location_offices(location)
    if not targets or unplaced(location):
        targets.append(table.hub)
    return _unique(targets)


def responsible_departments(category: Category | None, hub: str) -> list[str]:
    """The departments answerable for a case's deadlines: its category's, or the hub's."""
    return list(category.departments) if category is not None else [hub]


def case_targets(responsible: list[str], hub: str, location: dict[str, Any] | None) -> list[str]:
    """Everyone a case is dispatched to: the responsible departments and the location's offices."""
    targets = responsible + location_offices(location)
    if unplaced(location):
        targets.append(hub)
    return _unique(targets)
