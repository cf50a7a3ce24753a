"""The case API: a case's current state for the departments on it, their case lists, and the
citizen's status for the department that took the call.

The views come from memory: `CaseViews` follows civic.cases (the case.snapshot the case stage
writes once per commit per changed case) and the report index of civic.state.cases (one small
`report/<id>` record per report, naming its case), so a case is found by its id or by any of
its reports' ids, however many joined it. Who may read a case: its originators, responsible
departments and targets, and the hub, each within its clearance, with the personal fields its
policy does not grant masked (the policy's masking, as in its feed). Every case handed out is
recorded in civic.audit (path "gateway") before the answer is sent, as a feed read is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from confluent_kafka import KafkaException, Message
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel

from civicbus.audit import GatewayAudit
from civicbus.context import BusContext
from civicbus.kafka import TopicFollower
from civicbus.policy import RANK, masked_event, masked_fields, present_personal
from civicbus.serde import DecodeError
from civicbus.topology import CASES
from civicbus.wire import to_json
from consumers.gateway.console import console_router

log = logging.getLogger(__name__)

SNAPSHOT_TYPE = "case.snapshot"
STATUSES = ("open", "accepted", "in_progress", "resolved", "rejected", "reassigned")
# As a 12345 operator reads it out to the caller.
STATUS_ZH = {
    "open": "已登记，等待承办部门受理", "accepted": "承办部门已受理", "in_progress": "正在处置",
    "resolved": "已办结", "rejected": "已退回，正在重新派遣", "reassigned": "正在重新派遣",
}
MAX_LIMIT = 500


class CaseViews:
    """Every case's latest snapshot, in memory, and report id -> case id.

    Written by the follower thread only; a request reads whole dict entries, which CPython
    replaces atomically, so readers need no lock.
    """

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        self.cases_topic = ctx.topology.name(CASES)
        self.cases: dict[str, dict[str, Any]] = {}
        self.reports: dict[str, str] = {}
        self._follower: TopicFollower | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        """Read what civic.cases holds, then follow it on a thread."""
        topics = [self.cases_topic, self.ctx.topology.cases_changelog]
        self._follower = TopicFollower(self.ctx.settings, self.ctx.bootstrap, self.ctx.topology.group("civicbus-gateway-cases"),
                                       topics, self.apply, name="case-views")
        self._follower.catch_up(timeout_s)
        self._follower.start()

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()

    def apply(self, message: Message) -> None:
        key = message.key().decode()
        if message.topic() == self.cases_topic:
            self._apply_snapshot(key, message)
        elif key.startswith("report/"):  # the state log's other keys (case cores, parked updates) are not read
            value = message.value()
            if value:
                self.reports[key.removeprefix("report/")] = json.loads(value)["case"]
            else:
                self.reports.pop(key.removeprefix("report/"), None)

    def _apply_snapshot(self, case_id: str, message: Message) -> None:
        if not message.value():
            self.cases.pop(case_id, None)
            return
        try:
            # civic.cases has one writer, the case stage, which wrote what it validated
            self.cases[case_id] = self.ctx.serde.decode(message.value(), message.topic(), validate=False)
        except DecodeError as e:  # cannot happen for what the case stage wrote; never stop following on it
            log.error("unreadable case snapshot %s skipped: %s", case_id, e)

    def find(self, case_or_report_id: str) -> dict[str, Any] | None:
        found = self.cases.get(case_or_report_id)
        if found is None and case_or_report_id in self.reports:
            found = self.cases.get(self.reports[case_or_report_id])
        return found

    def all(self) -> list[dict[str, Any]]:
        return list(self.cases.values())


@dataclass(frozen=True)
class CaseView:
    event: dict[str, Any]  # the snapshot, masked for the reader
    masked: tuple[str, ...]


def parties(snapshot: dict[str, Any], hub: str) -> set[str]:
    """The departments on a case: who reported it, who acts on it, who it was sent to, the hub."""
    data = snapshot["data"]
    return {*data["originators"], *data["responsible"], *snapshot["targets"], hub}


def _sort_key(snapshot: dict[str, Any]) -> str:
    return f"{int(snapshot['data']['opened'].timestamp() * 1000):015d}:{snapshot['data']['case_id']}"


@dataclass
class CaseAccess:
    ctx: BusContext
    views: CaseViews
    audit: GatewayAudit  # the gateway's one audit chain, shared with the feeds

    def on_case(self, department: str, snapshot: dict[str, Any]) -> bool:
        return department in parties(snapshot, self.ctx.city.dispatch.hub)

    def cleared(self, department: str, snapshot: dict[str, Any]) -> bool:
        return RANK[snapshot["classification"]] <= RANK[self.ctx.policy.get().rules(department).clearance]

    def masked_view(self, department: str, snapshot: dict[str, Any]) -> CaseView:
        """The snapshot with the personal fields the department's policy does not grant masked."""
        event_type = self.ctx.catalog[SNAPSHOT_TYPE]
        masked, scanned = masked_fields(self.ctx.policy.get().rules(department), present_personal(snapshot, event_type), event_type)
        copy, entries = masked_event(snapshot, event_type, masked, scanned)
        return CaseView(copy, entries)

    def case(self, department: str, case_or_report_id: str) -> CaseView:
        """One case for a department on it; 404 unknown, 403 not on it or above its clearance."""
        snapshot = self.views.find(case_or_report_id)
        if snapshot is None:
            raise HTTPException(404, f"no case or report {case_or_report_id!r} is known")
        if not self.on_case(department, snapshot):
            raise HTTPException(403, f"{department} is not on this case")
        if not self.cleared(department, snapshot):
            raise HTTPException(403, f"case {snapshot['data']['case_id']} is {snapshot['classification']}, above the clearance of {department}")
        return self.masked_view(department, snapshot)

    def own_cases(self, department: str) -> list[dict[str, Any]]:
        """The department's cases within its clearance, newest first."""
        mine = [s for s in self.views.all() if self.on_case(department, s) and self.cleared(department, s)]
        return sorted(mine, key=_sort_key, reverse=True)

    async def audited(self, department: str, views: list[CaseView]) -> None:
        """Record every case handed out; raises (and nothing is handed out) unless all acknowledged."""
        try:
            await self.audit.record(department, [(v.event["id"], v.event["type"], v.masked) for v in views])
        except KafkaException as e:
            raise HTTPException(503, f"the audit record was not acknowledged, so nothing is delivered: {e.args[0].str()}") from None


class ResponsibleDepartment(BaseModel):
    id: str
    name_zh: str
    name_en: str


class CitizenStatus(BaseModel):
    """What the department that took a citizen's call may tell them: no personal data, no notes."""

    case_id: str
    report_id: str
    status: str
    status_zh: str
    responsible: list[ResponsibleDepartment]
    due: datetime | None
    overdue: bool
    last_update: datetime


def citizen_status(ctx: BusContext, snapshot: dict[str, Any], report_id: str) -> CitizenStatus:
    data = snapshot["data"]
    departments = [ctx.city.department(d) for d in data["responsible"]]
    return CitizenStatus(
        case_id=data["case_id"], report_id=report_id, status=data["status"], status_zh=STATUS_ZH.get(data["status"], data["status"]),
        responsible=[ResponsibleDepartment(id=d.id, name_zh=d.name_zh, name_en=d.name_en) for d in departments],
        due=snapshot["due"], overdue=data["overdue"], last_update=data["updated"],
    )


def _json_page(views: list[CaseView], cursor: str | None) -> Response:
    body = '{"cases":[' + ",".join(to_json(v.event) for v in views) + '],"cursor":' + json.dumps(cursor) + "}"
    return Response(body, media_type="application/json")


def cases_router(ctx: BusContext, department_of_caller: Callable[..., str], audit: GatewayAudit) -> APIRouter:
    """The case API and the operators' console, with the follower of civic.cases they read."""
    views = CaseViews(ctx)
    access = CaseAccess(ctx, views, audit)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(views.start)
        try:
            yield
        finally:
            views.stop()

    router = APIRouter(tags=["cases"], lifespan=lifespan)

    @router.get("/v1/cases/{case_id}", summary="A case's current state (by case id or any report id), for the departments on it",
                responses={401: {}, 403: {}, 404: {}, 503: {}})
    async def get_case(case_id: str, department: str = Depends(department_of_caller)) -> Response:
        view = access.case(department, case_id)
        await access.audited(department, [view])
        return Response(to_json(view.event), media_type="application/json")

    @router.get("/v1/cases", summary="The caller's cases, newest first, a page at a time", responses={401: {}, 422: {}, 503: {}})
    async def list_cases(
        department: str = Depends(department_of_caller),
        status: Literal[STATUSES] | None = Query(None, description="Only cases in this status (`open`: nobody reported progress yet)."),
        overdue: bool | None = Query(None, description="Only cases past (true) or within (false) their deadlines."),
        category: str | None = Query(None),
        since: datetime | None = Query(None, description="Only cases updated at or after this time (RFC 3339)."),
        cursor: str | None = Query(None, description="The cursor of the previous page."),
        limit: int = Query(100, ge=1, le=MAX_LIMIT),
    ) -> Response:
        if cursor is not None and (len(cursor.split(":")) != 2 or not cursor.split(":")[0].isdigit()):
            raise HTTPException(422, [{"field": "cursor", "message": "not a cursor this endpoint returned"}])
        picked = [
            s for s in access.own_cases(department)
            if (status is None or s["data"]["status"] == status)
            and (overdue is None or s["data"]["overdue"] == overdue)
            and (category is None or s["data"]["category"] == category)
            and (since is None or s["data"]["updated"] >= since)
            and (cursor is None or _sort_key(s) < cursor)
        ]
        page = [access.masked_view(department, s) for s in picked[:limit]]
        await access.audited(department, page)
        return _json_page(page, _sort_key(picked[limit - 1]) if len(picked) > limit else None)

    @router.get("/v1/cases/{report_id}/citizen-status", response_model=CitizenStatus,
                summary="The public-safe status of a citizen's report, for the department that took it",
                responses={401: {}, 403: {}, 404: {}, 503: {}})
    async def get_citizen_status(report_id: str, department: str = Depends(department_of_caller)) -> CitizenStatus:
        snapshot = views.find(report_id)
        if snapshot is None:
            raise HTTPException(404, f"no case or report {report_id!r} is known")
        if department not in snapshot["data"]["originators"]:
            raise HTTPException(403, f"{department} did not report this case: only its originators may read its citizen status")
        view = access.masked_view(department, snapshot)
        await access.audited(department, [CaseView(view.event, tuple(ctx.catalog[SNAPSHOT_TYPE].personal_fields))])
        return citizen_status(ctx, snapshot, report_id)

    router.include_router(console_router(ctx, access, department_of_caller))
    return router
