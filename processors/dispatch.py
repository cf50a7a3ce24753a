"""Dispatch rules: which departments are responsible for an event (pure, unit-testable)."""

from __future__ import annotations

from typing import Any

from civicbus.config import DispatchTable


def responsible_departments(table: DispatchTable, event: dict[str, Any]) -> list[str]:
    """Departments named by every rule matching the event's type and category, in rule order;
    the fallback (triage) when none matches, so no event is left without an owner."""
    category = (event.get("data") or {}).get("category")
    targets: list[str] = []
    for rule in table.rules:
        if rule.type == event["type"] and rule.category in (None, category):
            targets += [t for t in rule.to if t not in targets]
    return targets or [table.fallback]
