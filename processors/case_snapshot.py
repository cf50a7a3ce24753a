"""A case's current state as a `case.snapshot` event: what the case stage writes to civic.cases.

A pure function of the case dict the case book keeps (processors.casebook), so the read model
the gateway serves says exactly what the stage decides. Its id is derived from the state it
describes, so a replayed commit writes the same snapshot again.
"""

from __future__ import annotations

from typing import Any

from processors.casebook import DEADLINES, FIRST_LEVEL, LADDER, derived_id, from_ms

SNAPSHOT_TYPE = "case.snapshot"


def is_overdue(case: dict) -> bool:
    """Open and escalated for a deadline it has still not met."""
    return case["resolved_ms"] is None and any(
        d in case["escalations"] and case[done_key] is None for d, _, done_key in DEADLINES)


def escalations(case: dict) -> list[dict[str, Any]]:
    """Every escalation of the case, oldest first: the first per missed deadline, then the ladder."""
    levels = (FIRST_LEVEL, *LADDER)
    steps = [(at, 0, deadline) for deadline, at in case["escalations"].items()]
    steps += [(at, levels.index(level), deadline) for deadline, ladder in case.get("ladder", {}).items() for level, at in ladder.items()]
    return [{"missed": deadline, "level": levels[rank], "time": from_ms(at)} for at, rank, deadline in sorted(steps)]


def updated_ms(case: dict) -> int:
    moments = [case["last_report_ms"], *(s["time_ms"] for s in case["statuses"]), *case["escalations"].values()]
    moments += [at for ladder in case.get("ladder", {}).values() for at in ladder.values()]
    return max(moments)


def next_due_ms(case: dict) -> int | None:
    for _, due_key, done_key in DEADLINES:
        if case[done_key] is None:
            return case[due_key]
    return None


def case_snapshot(case: dict, hub: str) -> dict[str, Any]:
    """The `case.snapshot` event for `case`, as the hub (the case stage acts for it)."""
    updated = updated_ms(case)
    steps = escalations(case)
    due = next_due_ms(case)
    optional_ms = lambda ms: None if ms is None else from_ms(ms)  # noqa: E731
    return {
        "id": derived_id(case["id"], "snapshot", str(updated), str(len(case["reports"])), str(len(case["statuses"])), str(len(steps))),
        "type": SNAPSHOT_TYPE,
        "source": hub,
        "time": from_ms(updated),
        "subject": case["id"],
        "classification": case.get("classification") or "INTERNAL",
        "location": case["location"],
        "data": {
            "case_id": case["id"],
            "category": case["category"],
            "status": case["last_status"] or "open",
            "originators": list(case["originators"]),
            "responsible": list(case["responsible"]),
            "report_count": len(case["reports"]),
            "reports": [{"id": r["id"], "source": r["source"], "type": r["type"], "time": from_ms(r["time_ms"])}
                        for r in case.get("listed_reports", [])],
            "channels": dict(case.get("channels", {})),
            "statuses": [{"id": s["id"], "status": s["status"], "source": s["source"], "time": from_ms(s["time_ms"])}
                         for s in case["statuses"]],
            "handler": case.get("handler"),
            "opened": from_ms(case["opened_ms"]),
            "last_report": from_ms(case["last_report_ms"]),
            "updated": from_ms(updated),
            "accept_due": from_ms(case["accept_due_ms"]),
            "resolve_due": from_ms(case["resolve_due_ms"]),
            "accepted": optional_ms(case["accepted_ms"]),
            "resolved": optional_ms(case["resolved_ms"]),
            "escalations": steps,
            "overdue": is_overdue(case),
        },
        "correlation_id": case["id"],
        "targets": list(case["targets"]),
        "due": optional_ms(due),
    }
