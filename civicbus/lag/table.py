"""A LagReport as a plain-text table (`civicbus lag`)."""

from __future__ import annotations

import math

from civicbus.lag.exporter import LagReport

COLUMNS = ("GROUP", "STATE", "STATUS", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG_SECONDS")


def _number(value: float | int | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def lag_rows(report: LagReport) -> list[tuple[str, ...]]:
    rows = []
    for group in report.groups:
        head = (group.group, group.state, group.status.value)
        if not group.partitions:
            rows.append(head + ("-",) * 6)
        for p in group.partitions:
            rows.append(head + (p.topic, str(p.partition), _number(p.committed), str(p.latest),
                                _number(p.lag), _number(p.lag_seconds, 1)))
    return rows


def format_table(report: LagReport) -> str:
    if not report.up:
        return f"Kafka unreachable: {report.error}"
    rows = [COLUMNS, *lag_rows(report)]
    if len(rows) == 1:
        return "no consumer groups"
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
