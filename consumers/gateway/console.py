"""The operators' console at /console: server-rendered HTML over the case views, a small script.

Signing in posts a department token (JSON, from the page's script) to /console/session, which
answers with an HttpOnly, SameSite=Strict cookie scoped to /console: the token never appears in
a URL and the page's script cannot read it back. The console shows what the case API would
answer that department, with the same masking and audit: its open and overdue cases by
department and category, the city's grid cells (config/city/grid.geojson) as inline SVG shaded
by open cases (no external tiles), its latest cases, and a case's timeline.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from civicbus.config import load_grid
from civicbus.context import BusContext

if TYPE_CHECKING:
    from consumers.gateway.cases import CaseAccess

COOKIE = "civicbus_console"
LISTED_CASES = 50
MAP_PANEL_WIDTH = 180  # pixels for the widest district

STYLE = """
body{font-family:system-ui,"Noto Sans CJK SC",sans-serif;margin:0;background:#f5f7fa;color:#1d2733}
header{background:#1d3c5a;color:#fff;padding:10px 20px;display:flex;justify-content:space-between;align-items:center}
header a,header button{color:#fff;background:none;border:1px solid #fff8;border-radius:4px;padding:4px 10px;cursor:pointer;text-decoration:none}
main{padding:16px 20px;display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:16px}
section{background:#fff;border-radius:6px;padding:12px 16px;box-shadow:0 1px 2px #0002}
section.wide{grid-column:1/3}
table{border-collapse:collapse;width:100%;font-size:14px}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e4e8ee}
.overdue{color:#b42318;font-weight:600}.muted{color:#667085}
ol.timeline{list-style:none;padding:0}ol.timeline li{padding:6px 0 6px 14px;border-left:3px solid #9db4cc;margin-left:6px}
ol.timeline li.escalation{border-color:#b42318}ol.timeline li.status{border-color:#2e7d32}ol.timeline li.dispatch{border-color:#1d3c5a}
#city-map{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}#city-map figure{margin:0}
#city-map figcaption{text-align:center;font-size:13px;color:#667085}
form.signin{max-width:420px;margin:60px auto;background:#fff;padding:24px;border-radius:6px;box-shadow:0 1px 2px #0002}
form.signin input{width:100%;padding:6px;margin:8px 0;box-sizing:border-box}
"""

SIGN_IN_SCRIPT = """
document.querySelector('form.signin').addEventListener('submit', async (e) => {
  e.preventDefault();
  const token = e.target.token.value;
  const answer = await fetch('/console/session', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                  body: JSON.stringify({token})});
  if (answer.ok) { location.reload(); } else { document.getElementById('error').textContent = (await answer.json()).detail; }
});
"""

# Every few seconds the dashboard replaces its content with a fresh rendering of itself.
REFRESH_SCRIPT = """
document.getElementById('sign-out').addEventListener('click', async () => {
  await fetch('/console/sign-out', {method: 'POST'}); location.reload();
});
setInterval(async () => {
  const answer = await fetch(location.pathname);
  if (!answer.ok) return;
  const page = new DOMParser().parseFromString(await answer.text(), 'text/html');
  document.querySelector('main').replaceWith(page.querySelector('main'));
}, 3000);
"""


class SignIn(BaseModel):
    token: str


def _page(title: str, body: str, script: str, status_code: int = 200) -> HTMLResponse:
    html = (f'<!doctype html><html lang="zh"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}<script>{script}</script></body></html>")
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _is_open(snapshot: dict[str, Any]) -> bool:
    return snapshot["data"]["resolved"] is None


class GridMap:
    """The grid cells projected once onto SVG, one panel per district (the sample city's districts
    lie in two cities, far apart), all at one scale, equirectangular, north up."""

    def __init__(self, cells: list[dict], district_names: dict[str, str]):
        by_district: dict[str, list[tuple[str, list]]] = {}
        for cell in cells:
            by_district.setdefault(cell["properties"]["district"], []).append((cell["properties"]["grid"], cell["geometry"]["coordinates"][0]))
        spans = {}
        for district, rings in by_district.items():
            lons, lats = [p[0] for _, r in rings for p in r], [p[1] for _, r in rings for p in r]
            x_scale = math.cos(math.radians(sum(lats) / len(lats)))
            spans[district] = (min(lons), max(lats), x_scale, (max(lons) - min(lons)) * x_scale, max(lats) - min(lats))
        scale = MAP_PANEL_WIDTH / max(span[3] for span in spans.values())
        self.panels = []
        for district, rings in by_district.items():
            west, north, x_scale, width, height = spans[district]
            points = [(grid, " ".join(f"{(lon - west) * x_scale * scale:.1f},{(north - lat) * scale:.1f}" for lon, lat in ring))
                      for grid, ring in rings]
            self.panels.append((district_names.get(district, district), round(width * scale), round(height * scale), points))

    def svg(self, open_by_grid: Counter) -> str:
        most = max(open_by_grid.values(), default=0)
        panels = []
        for name, width, height, cells in self.panels:
            polygons = []
            for grid, points in cells:
                count = open_by_grid.get(grid, 0)
                fill = "#dfe6ee" if count == 0 else f"rgba(200,40,40,{0.3 + 0.7 * count / most:.2f})"
                polygons.append(f'<polygon points="{points}" fill="{fill}" stroke="#fff" stroke-width="1.5" data-grid="{escape(grid)}" '
                                f'data-open="{count}"><title>{escape(grid)}: {count} open</title></polygon>')
            panels.append(f'<figure><svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
                          f'aria-label="{escape(name)}: open cases by grid cell">{"".join(polygons)}</svg>'
                          f"<figcaption>{escape(name)}</figcaption></figure>")
        return f'<div id="city-map">{"".join(panels)}</div>'


def console_router(ctx: BusContext, access: CaseAccess, department_of_caller: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(tags=["console"], include_in_schema=False)
    grid_map = GridMap(load_grid(ctx.settings.config), {d.id: d.name_zh for d in ctx.city.map.districts})

    async def signed_in(request: Request) -> str | None:
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        try:
            return await department_of_caller(HTTPAuthorizationCredentials(scheme="Bearer", credentials=token))
        except HTTPException:
            return None

    def name(department: str) -> str:
        try:
            return ctx.city.department(department).name_zh
        except (KeyError, ValueError):
            return department

    def header(department: str) -> str:
        return (f'<header><strong>civicbus 运行监控 · operators\' console</strong><span>{escape(name(department))} '
                f'({escape(department)}) <a href="/console">cases</a> <button id="sign-out">sign out</button></span></header>')

    def sign_in_page(message: str = "", status_code: int = 200) -> HTMLResponse:
        body = ('<form class="signin"><h2>civicbus operators\' console</h2><label>Department token '
                '<input name="token" type="password" autocomplete="off" required></label>'
                f'<button type="submit">Sign in</button><p id="error" class="overdue">{escape(message)}</p></form>')
        return _page("civicbus console: sign in", body, SIGN_IN_SCRIPT, status_code)

    @router.post("/console/session", status_code=204)
    async def sign_in(body: SignIn, request: Request) -> Response:
        department = await department_of_caller(HTTPAuthorizationCredentials(scheme="Bearer", credentials=body.token))
        response = Response(status_code=204)
        response.set_cookie(COOKIE, body.token, httponly=True, samesite="strict", path="/console",
                            secure=request.url.scheme == "https")
        response.headers["X-Department"] = department
        return response

    @router.post("/console/sign-out", status_code=204)
    def sign_out() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/console")
        return response

    @router.get("/console", response_class=HTMLResponse)
    async def dashboard(request: Request) -> HTMLResponse:
        department = await signed_in(request)
        if department is None:
            return sign_in_page()
        cases = access.own_cases(department)
        open_cases = [s for s in cases if _is_open(s)]
        counts: Counter = Counter()
        for s in open_cases:
            for responsible in s["data"]["responsible"]:
                counts[(responsible, s["data"]["category"], "open")] += 1
                counts[(responsible, s["data"]["category"], "overdue")] += s["data"]["overdue"]
        rows = "".join(
            f'<tr><td>{escape(name(d))}</td><td>{escape(c)}</td><td>{counts[(d, c, "open")]}</td>'
            f'<td class="{"overdue" if counts[(d, c, "overdue")] else ""}">{counts[(d, c, "overdue")]}</td></tr>'
            for d, c in sorted({(d, c) for d, c, _ in counts})
        ) or '<tr><td colspan="4" class="muted">no open cases</td></tr>'
        listed = [access.masked_view(department, s) for s in cases[:LISTED_CASES]]
        await access.audited(department, listed)
        case_rows = "".join(
            f'<tr data-case="{escape(v.event["data"]["case_id"])}"><td><a href="/console/cases/{escape(v.event["data"]["case_id"])}">'
            f'{escape(v.event["data"]["case_id"][:8])}</a></td><td>{escape(v.event["data"]["category"])}</td>'
            f'<td>{escape(v.event["data"]["status"])}</td><td class="overdue">{"overdue" if v.event["data"]["overdue"] else ""}</td>'
            f'<td>{v.event["data"]["report_count"]}</td><td>{_when(v.event["data"]["opened"])}</td></tr>'
            for v in listed
        ) or '<tr><td colspan="6" class="muted">no cases yet</td></tr>'
        by_grid = Counter((s.get("location") or {}).get("grid") for s in open_cases)
        body = (
            header(department) + "<main>"
            f'<section><h3>Open and overdue by department and category</h3><table id="counts"><tr><th>department</th>'
            f"<th>category</th><th>open</th><th>overdue</th></tr>{rows}</table></section>"
            f"<section><h3>Open cases by grid cell (网格)</h3>{grid_map.svg(by_grid)}</section>"
            f'<section class="wide"><h3>Latest cases</h3><table id="cases"><tr><th>case</th><th>category</th><th>status</th>'
            f"<th></th><th>reports</th><th>opened</th></tr>{case_rows}</table></section></main>"
        )
        return _page("civicbus console", body, REFRESH_SCRIPT)

    @router.get("/console/cases/{case_id}", response_class=HTMLResponse)
    async def timeline(case_id: str, request: Request) -> HTMLResponse:
        department = await signed_in(request)
        if department is None:
            return sign_in_page("sign in to see this case", 401)
        try:
            view = access.case(department, case_id)
        except HTTPException as e:
            return _page("civicbus console", header(department) + f'<main><section class="wide"><p>{escape(e.detail)}</p></section></main>',
                         REFRESH_SCRIPT, e.status_code)
        await access.audited(department, [view])
        body = header(department) + f'<main><section class="wide">{_timeline(view.event, name)}</section></main>'
        return _page(f"case {case_id}", body, REFRESH_SCRIPT)

    return router


def _timeline(snapshot: dict[str, Any], name: Callable[[str], str]) -> str:
    """The case's story, oldest first: reports merged into it, dispatch, statuses, escalations."""
    data = snapshot["data"]
    entries: list[tuple[datetime, int, str, str]] = []
    for report in data["reports"]:
        entries.append((report["time"], 0, "report", f"report from {escape(name(report['source']))} ({escape(report['type'])})"))
    unlisted = data["report_count"] - len(data["reports"])
    if unlisted > 0:
        channels = ", ".join(f"{escape(name(d))}: {n}" for d, n in sorted(data["channels"].items()))
        entries.append((data["last_report"], 0, "report", f"and {unlisted} more reports merged (by channel: {channels})"))
    entries.append((data["opened"], 1, "dispatch", "dispatched to " + ", ".join(escape(name(d)) for d in snapshot["targets"])))
    for status in data["statuses"]:
        entries.append((status["time"], 2, "status", f"{escape(status['status'])} by {escape(name(status['source']))}"))
    for step in data["escalations"]:
        entries.append((step["time"], 3, "escalation", f"escalated to level {escape(step['level'])}: missed {escape(step['missed'])}"))
    items = "".join(f'<li class="{kind}"><span class="muted">{_when(at)}</span> {text}</li>' for at, _, kind, text in sorted(entries, key=lambda e: e[:2]))
    location = snapshot.get("location") or {}
    handler = f" · handler {escape(data['handler'])}" if data.get("handler") else ""
    return (
        f'<h3>Case <code>{escape(data["case_id"])}</code> · {escape(data["category"])} · <span id="status">{escape(data["status"])}</span>'
        f'{" · <span class=overdue>overdue</span>" if data["overdue"] else ""}</h3>'
        f'<p class="muted">{escape(location.get("raw_address") or "")} {escape(location.get("grid") or "")} · '
        f'{data["report_count"]} reports · responsible: {", ".join(escape(name(d)) for d in data["responsible"])} · '
        f'due {_when(snapshot["due"])}{handler}</p><ol class="timeline" id="timeline">{items}</ol>'
    )
