"""Case logic as plain functions over event dicts and a case store: testable without a broker.

A case is a dict in a MutableMapping keyed by case id (processors.cases.CaseStore in the case
stage, a dict in unit tests). Every change is written back with `cases[id] = case`, which is what
makes the store log it. The indexes (report id -> case, and open cases by category and
place for merging) live in memory only and are rebuilt from the table after a restart.

- Merge: a report joins the open case of the same category whose first report lies within
  `merge.distance_m` and whose latest report lies within `merge.window` (nearest first); else it
  opens a case whose id is its own event id. No report is dropped: each is emitted with the
  case's correlation_id and targets.
- Dispatch (civicbus.dispatch): the responsible departments plus the place's street and district
  offices. A case that stands alone there (a petition, anything CONFIDENTIAL) is never merged.
- Classification: a case is as classified as the most classified of its reports, and its status
  updates and escalations carry that classification whatever the update claims.
- Deadlines: `tick(now)` escalates each case that missed acceptance or resolution, once per
  deadline, to the responsible departments, the district office and the originators. Due times
  sit in a heap (the deadline index), so a tick costs what falls due, not a scan of every case;
  open and overdue counts are kept as cases change, for the same reason.
- The escalation ladder (市-区-街道): a deadline still missed `escalation.district_after` after
  its first escalation escalates again at level `district` (its district office), and
  `escalation.hub_after` after it at level `city` (the hub). Each step, when it fires, schedules
  the next one in the same heap.
- Retention: a resolved case is forgotten `retention` after it was resolved, and one nobody
  resolves `retention` after its resolution deadline, so what the stage holds is bounded by
  the traffic of one retention period, however long it runs.
- Feedback: only the responsible departments (and the hub) accept, progress, resolve, reject or
  reassign a case; the others on it (reporters, dispatched offices) may add notes (`commented`);
  anything else is refused as NOT_RESPONSIBLE. An update is attached and relayed to everyone on
  the case (originators first), except its sender.
- Ids (civicbus.ids): a report or status id the case already holds is a replay only when the same
  publisher said the same under it; otherwise it is refused as ID_CONFLICT, naming both.

Replays are idempotent: the case stage is at-least-once, so after a restart it may see inputs
whose effect its restored state already holds. It then emits the same events again, with the
same ids (publisher ids, or derived_id for what it creates), and the fan-out drops them.
"""

from __future__ import annotations

import heapq
import math
import uuid
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from civicbus.config import CategoryTable, CityConfig
from civicbus.dispatch import HANDING_BACK, Dispatch, Place, highest
from civicbus.dlq import Reason
from civicbus.ids import Publication, id_conflict
from civicbus.schemas import ESCALATION_TYPE, EventType

# Namespace for ids the pipeline derives from its inputs (uuid5): the same input always
# yields the same output id, which is what lets the fan-out drop re-emitted events.
DERIVED_ID_NAMESPACE = uuid.UUID("6f1c1d52-2f0e-4b1e-9a57-1c1b6a2f1e00")
METRES_PER_DEGREE = 111_320.0
DEADLINES = (("acceptance", "accept_due_ms", "accepted_ms"), ("resolution", "resolve_due_ms", "resolved_ms"))
ACCEPTING = {"accepted", "in_progress", "resolved"}
NOTE = "commented"  # a note or feedback: changes nothing on the case, anyone on it may add one
# Escalation levels after the first (`department`), in the order a missed deadline climbs them.
LADDER = ("district", "city")
FIRST_LEVEL = "department"
# Reports a case lists with their channel; beyond these it counts them (a mass incident: thousands
# of calls about one fire), so a case's record stays small however many join it.
LISTED_REPORTS = 50


def derived_id(*parts: str) -> str:
    return str(uuid.uuid5(DERIVED_ID_NAMESPACE, "/".join(parts)))


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class CaseError(ValueError):
    """An input the case stage refuses; it goes to the dead-letter topic with `reason`."""

    def __init__(self, reason: Reason, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


@dataclass(frozen=True)
class CaseRules:
    categories: CategoryTable
    hub: str
    escalation_classification: str
    dispatch: Dispatch

    @classmethod
    def from_city(cls, city: CityConfig, escalation_type: EventType) -> CaseRules:
        return cls(city.categories, city.dispatch.hub, escalation_type.classification, Dispatch(city))


@dataclass
class TickResult:
    events: list[dict[str, Any]] = field(default_factory=list)
    escalated: list[tuple[str, str]] = field(default_factory=list)  # (department, category), new ones only
    open: Counter = field(default_factory=Counter)  # (department, category) -> open cases
    overdue: Counter = field(default_factory=Counter)  # (department, category) -> open cases past a deadline


def _bucket(lat: float, lon: float, size_m: float) -> tuple[int, int]:
    y = lat * METRES_PER_DEGREE / size_m
    x = lon * METRES_PER_DEGREE * math.cos(math.radians(lat)) / size_m
    return math.floor(x), math.floor(y)


def _note_channel(case: dict, event: dict[str, Any], event_type: EventType, reported_ms: int) -> None:
    """What the case keeps of a report beside its id: the channel it came through, and the first
    LISTED_REPORTS of them in full."""
    listed = case.setdefault("listed_reports", [])
    if len(listed) < LISTED_REPORTS:
        listed.append({"id": event["id"], "source": event["source"], "type": event_type.name, "time_ms": reported_ms})
    channels = case.setdefault("channels", {})
    channels[event["source"]] = channels.get(event["source"], 0) + 1


def _escalated_at(case: dict, deadline: str, level: str) -> int | None:
    if level == FIRST_LEVEL:
        return case["escalations"].get(deadline)
    return case.get("ladder", {}).get(deadline, {}).get(level)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Equirectangular distance: exact enough at the scale of a merge radius."""
    x = math.radians(lon2 - lon1) * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(x, math.radians(lat2 - lat1)) * 6_371_000


class CaseBook:
    def __init__(self, rules: CaseRules, cases: MutableMapping[str, dict]):
        self.rules = rules
        self.cases = cases
        self._reports: dict[str, str] | None = None  # report id -> case id; built on first use
        self._nearby: dict[tuple[str, int, int], set[str]] | None = None  # open mergeable cases by place
        # (due ms, case id, what falls due): deadlines, forgetting, and escalations to re-emit
        # when a restarted stage replays the tick that made them. Stale entries are skipped.
        self._due: list[tuple[int, str, str]] | None = None
        self._open_counts: Counter = Counter()  # (department, category) -> open cases
        self._overdue_counts: Counter = Counter()  # (department, category) -> open cases past a deadline

    # ---- inputs ------------------------------------------------------------------------

    def handle(self, event: dict[str, Any], event_type: EventType) -> list[dict[str, Any]]:
        """The events to distribute for one case event; raises CaseError for a refused one."""
        if event_type.updates_case:
            return [self.update_status(event, event_type)]
        return [self.report(event, event_type)]

    def report(self, event: dict[str, Any], event_type: EventType) -> dict[str, Any]:
        publication = Publication.of(event, event_type)
        known = self.reports().get(event["id"])
        if known is not None:
            self._refuse_conflict(event["id"], self._report_publication(self.cases[known], event["id"]), publication)
            return self._as_case_event(event, self.cases[known], self.cases[known]["targets"])  # a replay
        data = event["data"]
        category_id = data.get(event_type.case_category_field) if event_type.case_category_field else None
        family = data.get(event_type.case_family_field) if event_type.case_family_field else None
        reported_ms = to_ms(event["time"])
        location = event.get("location")
        alone = self.rules.dispatch.stands_alone(event_type.name, event["classification"])
        case = None if alone else self._mergeable_case(category_id, location, reported_ms)
        if case is None:
            case = self._open(event, event_type, category_id or "unknown", family, reported_ms)
        else:
            case["reports"].append(event["id"])
            if event["source"] not in case["originators"]:
                case["originators"].append(event["source"])
            case["last_report_ms"] = max(case["last_report_ms"], reported_ms)
            case["classification"] = highest(case["classification"], event["classification"])
            _note_channel(case, event, event_type, reported_ms)
        case["report_origins"][event["id"]] = {"source": publication.source, "digest": publication.digest}
        self.cases[case["id"]] = case
        self.reports()[event["id"]] = case["id"]
        return self._as_case_event(event, case, case["targets"])

    def update_status(self, event: dict[str, Any], event_type: EventType) -> dict[str, Any]:
        reference = event["data"]["case_id"]
        case_id = reference if reference in self.cases else self.reports().get(reference)
        if case_id is None:
            raise CaseError(Reason.UNKNOWN_CASE, f"no case {reference!r} is open or remembered")
        publication = Publication.of(event, event_type)
        report_case = self.reports().get(event["id"])
        if report_case is not None:  # the id of a report: never a status update as well
            self._refuse_conflict(event["id"], self._report_publication(self.cases[report_case], event["id"]), publication)
        case = self.cases[case_id]
        earlier = next((s for s in case["statuses"] if s["id"] == event["id"]), None)
        if earlier is not None:
            self._refuse_conflict(event["id"], Publication(earlier["source"], earlier["digest"]), publication)
        refused = self._refused_role(case, event["source"], event["data"]["status"])
        if refused:
            raise CaseError(Reason.NOT_RESPONSIBLE, refused)
        if earlier is None:
            self._apply_status(case, event, publication.digest)
            self.cases[case_id] = case
        relayed = self._as_case_event(event, case, self.rules.dispatch.relay_targets(case["originators"], case["targets"], event["source"]))
        relayed["classification"] = highest(event["classification"], case["classification"])
        return relayed

    def _refused_role(self, case: dict, sender: str, status: str) -> str | None:
        """Why `sender` may not set `status` on `case`; None when it may."""
        if sender in case["responsible"] or sender == self.rules.hub:
            return None
        on_case = sender in case["originators"] or sender in case["targets"]
        if on_case and status == NOTE:
            return None
        if on_case:
            role = "a reporter of" if sender in case["originators"] else "dispatched to"
            return (f"{sender} is {role} case {case['id']} but not responsible for it: only "
                    f"{', '.join(case['responsible'])} or {self.rules.hub} may mark it {status}; {sender} may add a note ({NOTE})")
        return f"{sender} is neither dispatched to nor a reporter of case {case['id']}"

    @staticmethod
    def _report_publication(case: dict, report_id: str) -> Publication:
        return Publication(**case["report_origins"][report_id])

    @staticmethod
    def _refuse_conflict(event_id: str, first: Publication, again: Publication) -> None:
        conflict = id_conflict(event_id, first, again)
        if conflict:
            raise CaseError(Reason.ID_CONFLICT, conflict)

    def tick(self, now_ms: int) -> TickResult:
        """Escalate missed deadlines as of `now_ms`, forget cases past retention, count open ones.

        `now_ms` comes from the clock record being processed, so a replayed tick decides the same:
        a restarted book (indexes rebuilt from the restored cases) re-emits the escalations the
        tick at exactly `now_ms` made, with the same ids."""
        result = TickResult()
        due = self._deadlines()
        while due and due[0][0] <= now_ms:
            due_ms, case_id, what = heapq.heappop(due)
            case = self.cases.get(case_id)
            if case is None:
                continue
            if what == "forget":
                if self._forget_at(case) == due_ms:
                    self._forget(case)
                continue
            replay = what.startswith("replay:")
            deadline, _, level = what.removeprefix("replay:").partition(":")
            level = level or FIRST_LEVEL
            _, due_key, done_key = next(d for d in DEADLINES if d[0] == deadline)
            if case[done_key] is not None or case["resolved_ms"] is not None:
                continue
            if replay:
                if due_ms == now_ms and _escalated_at(case, deadline, level) == now_ms:
                    result.events.append(self._escalation(case, deadline, level, now_ms))
                continue
            if _escalated_at(case, deadline, level) is not None:
                continue
            if level == FIRST_LEVEL:
                if case[due_key] != due_ms:
                    continue
                self._count(case, -1)
                case["escalations"][deadline] = now_ms
                self._count(case, +1)
            else:
                if self._ladder_due(case, deadline, level) != due_ms:
                    continue
                case.setdefault("ladder", {}).setdefault(deadline, {})[level] = now_ms
            self._schedule_ladder(case, deadline)
            self.cases[case_id] = case
            result.escalated += [(d, case["category"]) for d in case["responsible"]]
            result.events.append(self._escalation(case, deadline, level, now_ms))
        result.open = +self._open_counts
        result.overdue = +self._overdue_counts
        return result

    def counts(self) -> tuple[Counter, Counter]:
        """Open cases and those past a deadline, per (department, category)."""
        self._deadlines()
        return +self._open_counts, +self._overdue_counts

    # ---- case state --------------------------------------------------------------------

    def _open(self, event: dict[str, Any], event_type: EventType, category_id: str, family: str | None, reported_ms: int) -> dict:
        category = self.rules.categories.lookup(category_id, family)
        deadlines = category.deadlines if category is not None else self.rules.categories.unknown
        responsible = self.rules.dispatch.responsible(event_type.name, category)
        location = event.get("location")
        alone = self.rules.dispatch.stands_alone(event_type.name, event["classification"])
        case = {
            "id": event["id"],
            "type": event_type.name,
            "category": category_id,
            "classification": event["classification"],
            "responsible": responsible,
            "targets": self.rules.dispatch.case_targets(event_type.name, responsible, Place.of(location)),
            "originators": [event["source"]],
            "reports": [event["id"]],
            "report_origins": {},  # report id -> its publisher and content digest (civicbus.ids)
            "statuses": [],
            "last_status": None,
            "location": location,
            "mergeable": not alone and category is not None and category.merge and location is not None and location.get("lat") is not None,
            "opened_ms": reported_ms,
            "last_report_ms": reported_ms,
            "accept_due_ms": reported_ms + int(deadlines.accept.total_seconds() * 1000),
            "resolve_due_ms": reported_ms + int(deadlines.resolve.total_seconds() * 1000),
            "accepted_ms": None,
            "resolved_ms": None,
            "escalations": {},
            "ladder": {},  # deadline -> {level: escalated ms}, the steps after the first
            "listed_reports": [],
            "channels": {},
        }
        _note_channel(case, event, event_type, reported_ms)
        if case["mergeable"]:
            self._merge_index().setdefault(self._key(case), set()).add(case["id"])
        self._deadlines()  # built from the cases before this one joins them
        self._schedule(case)
        self._count(case, +1)
        return case

    def _apply_status(self, case: dict, event: dict[str, Any], digest: str) -> None:
        self._count(case, -1)
        self._apply(case, event, digest)
        self._count(case, +1)
        self._schedule(case)

    def _apply(self, case: dict, event: dict[str, Any], digest: str) -> None:
        status, at_ms = event["data"]["status"], to_ms(event["time"])
        case["statuses"].append({"id": event["id"], "status": status, "source": event["source"], "time_ms": at_ms, "digest": digest})
        if status == NOTE:
            return
        case["last_status"] = status
        if event["data"].get("handler_name"):
            case["handler"] = event["data"]["handler_name"]
        if status in ACCEPTING and case["accepted_ms"] is None:
            case["accepted_ms"] = at_ms
        if status == "resolved":
            case["resolved_ms"] = at_ms
            if case["mergeable"]:
                self._merge_index().get(self._key(case), set()).discard(case["id"])
        if status in HANDING_BACK:
            case["responsible"], case["targets"] = self.rules.dispatch.handed_back(case["responsible"], case["targets"])

    def _forget_at(self, case: dict) -> int:
        """When a case is dropped: `retention` after its resolution, or after its resolution
        deadline if it is never resolved."""
        retention_ms = int(self.rules.categories.retention.total_seconds() * 1000)
        return (case["resolved_ms"] if case["resolved_ms"] is not None else case["resolve_due_ms"]) + retention_ms

    def _forget(self, case: dict) -> None:
        self._count(case, -1)
        if case["mergeable"]:
            self._merge_index().get(self._key(case), set()).discard(case["id"])
        reports = self.reports()
        for report_id in case["reports"]:
            reports.pop(report_id, None)
        del self.cases[case["id"]]

    # ---- indexes (after a restart: rebuilt from the restored table) ----------------------

    def reports(self) -> dict[str, str]:
        """Report id -> case id, for every case held."""
        if self._reports is None:
            self._reports = {r: case["id"] for case in self.cases.values() for r in case["reports"]}
        return self._reports

    def _deadlines(self) -> list[tuple[int, str, str]]:
        """The deadline index; after a restart, rebuilt from the restored cases (with their counts)."""
        if self._due is None:
            self._due = []
            self._open_counts.clear()
            self._overdue_counts.clear()
            for case in self.cases.values():
                self._schedule(case)
                self._count(case, +1)
                for deadline, escalated_at in case["escalations"].items():
                    self._due.append((escalated_at, case["id"], f"replay:{deadline}"))
                for deadline, steps in case.get("ladder", {}).items():
                    self._due += [(at, case["id"], f"replay:{deadline}:{level}") for level, at in steps.items()]
            heapq.heapify(self._due)
        return self._due

    def _schedule(self, case: dict) -> None:
        """Put what falls due next for `case` in the deadline index (older entries go stale)."""
        due = self._deadlines()
        for deadline, due_key, done_key in DEADLINES:
            if case[done_key] is None and case["resolved_ms"] is None and deadline not in case["escalations"]:
                heapq.heappush(due, (case[due_key], case["id"], deadline))
            self._schedule_ladder(case, deadline)
        heapq.heappush(due, (self._forget_at(case), case["id"], "forget"))

    def _ladder_due(self, case: dict, deadline: str, level: str) -> int:
        ladder = self.rules.categories.escalation
        after = ladder.district_after if level == "district" else ladder.hub_after
        return case["escalations"][deadline] + int(after.total_seconds() * 1000)

    def _schedule_ladder(self, case: dict, deadline: str) -> None:
        """Put the next step up the ladder of a missed deadline in the deadline index."""
        _, _, done_key = next(d for d in DEADLINES if d[0] == deadline)
        if deadline not in case["escalations"] or case[done_key] is not None or case["resolved_ms"] is not None:
            return
        steps = case.get("ladder", {}).get(deadline, {})
        level = next((level for level in LADDER if level not in steps), None)
        if level is not None:
            heapq.heappush(self._deadlines(), (self._ladder_due(case, deadline, level), case["id"], f"{deadline}:{level}"))

    def _count(self, case: dict, sign: int) -> None:
        """Add (+1) or take back (-1) what an open case contributes to the open and overdue counts."""
        self._deadlines()  # the counts start from the restored cases
        if case["resolved_ms"] is not None:
            return
        overdue = any(d in case["escalations"] and case[done_key] is None for d, _, done_key in DEADLINES)
        for department in case["responsible"]:
            self._open_counts[(department, case["category"])] += sign
            self._overdue_counts[(department, case["category"])] += sign * overdue

    # ---- merging -----------------------------------------------------------------------

    def _key(self, case: dict) -> tuple[str, int, int]:
        location = case["location"]
        return (case["category"], *_bucket(location["lat"], location["lon"], self.rules.categories.merge.distance_m))

    def _merge_index(self) -> dict[tuple[str, int, int], set[str]]:
        if self._nearby is None:
            self._nearby = {}
            for case in self.cases.values():
                if case["mergeable"] and case["resolved_ms"] is None:
                    self._nearby.setdefault(self._key(case), set()).add(case["id"])
        return self._nearby

    def _mergeable_case(self, category_id: str | None, location: dict | None, reported_ms: int) -> dict | None:
        if category_id is None or location is None or location.get("lat") is None:
            return None
        category = self.rules.categories.lookup(category_id)
        if category is None or not category.merge:
            return None
        merge = self.rules.categories.merge
        window_ms = merge.window.total_seconds() * 1000
        lat, lon = location["lat"], location["lon"]
        x, y = _bucket(lat, lon, merge.distance_m)
        best, best_distance = None, merge.distance_m
        index = self._merge_index()
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for case_id in index.get((category_id, x + dx, y + dy), ()):
                    case = self.cases[case_id]
                    if not case["opened_ms"] - window_ms <= reported_ms <= case["last_report_ms"] + window_ms:
                        continue
                    d = distance_m(lat, lon, case["location"]["lat"], case["location"]["lon"])
                    if d <= best_distance and (best is None or d < best_distance or case_id < best["id"]):
                        best, best_distance = case, d
        return best

    # ---- outputs -----------------------------------------------------------------------

    @staticmethod
    def _next_due(case: dict) -> datetime | None:
        for _, due_key, done_key in DEADLINES:
            if case[done_key] is None:
                return from_ms(case[due_key])
        return None

    def _as_case_event(self, event: dict[str, Any], case: dict, targets: list[str]) -> dict[str, Any]:
        return {**event, "correlation_id": case["id"], "targets": list(targets), "due": self._next_due(case)}

    def _escalation(self, case: dict, deadline: str, level: str, now_ms: int) -> dict[str, Any]:
        location = case["location"]
        due_key = "accept_due_ms" if deadline == "acceptance" else "resolve_due_ms"
        offices = list(Place.of(location).districts)  # the district office owning the place, if it is placed
        above = {FIRST_LEVEL: [], "district": offices or [self.rules.hub], "city": [self.rules.hub] + offices}[level]
        ids = (case["id"], "escalated", deadline) + (() if level == FIRST_LEVEL else (level,))
        return {
            "id": derived_id(*ids),
            "type": ESCALATION_TYPE,
            "source": self.rules.hub,
            "time": from_ms(now_ms),
            "subject": case["id"],
            "classification": highest(self.rules.escalation_classification, case["classification"]),
            "location": location,
            "data": {
                "case_id": case["id"],
                "category": case["category"],
                "missed": deadline,
                "deadline": from_ms(case[due_key]),
                "responsible": list(case["responsible"]),
                "reports": list(case["reports"]),
                "last_status": case["last_status"],
                "level": level,
            },
            "correlation_id": case["id"],
            "targets": list(dict.fromkeys(above + self.rules.dispatch.escalation_targets(
                case["type"], case["responsible"], case["originators"], Place.of(location)))),
            "due": self._next_due(case),
        }
