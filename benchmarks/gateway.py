"""(e) A bounded load test of the HTTP gateway on loopback: 50 concurrent clients for a fixed
time, half posting events (POST /v1/events), half reading a feed (GET /v1/feeds/{agency}/events);
requests/s, p50/p99 and errors per endpoint. Target: zero errors.

Then, once the stages have worked off what was posted, the case-read phase: GET /v1/cases/{id}
of the reader's cases at a fixed 100 requests/s (open loop: each request starts on schedule,
however long the previous ones take), p50/p99.
Target (issue 14): p99 <= 20 ms, the views being in memory. `--case-reads-only` runs just this
phase after posting a few events (benchmarks/results/gateway_case_reads.json).

Written against the contract of DESIGN.md ("HTTP gateway"): `civicbus up` serves it on
--http-port, `civicbus token AGENCY` prints a department's token. Where the build has no
gateway yet, the result says so instead of figures.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.report import percentile, write_result
from civicbus.broker import free_port
from civicbus.cli_support import bus_context
from civicbus.wire import to_json
from producers.simulator import CityTraffic

CLIENTS = 50
DURATION_S = 15.0
WARMUP_S = 2.0
READER = "citymgmt"
CASE_READ_RATE = 100.0
CASE_READ_S = 10.0
CASE_READ_P99_TARGET_MS = 20.0
STAGE_GROUPS = ("civicbus-ingest", "civicbus-cases", "civicbus-fanout")


def civicbus(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "civicbus.cli", *args], env=env, capture_output=True, text=True, timeout=60)


async def wait_healthy(base: str, up: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline and up.poll() is None:
            try:
                if (await client.get(f"{base}/healthz", timeout=1)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    return False


class Tally:
    def __init__(self):
        self.latencies_ms: dict[str, list[float]] = {"post_event": [], "get_feed": []}
        self.errors: dict[str, list[str]] = {"post_event": [], "get_feed": []}

    def summary(self, seconds: float) -> dict:
        return {
            name: {
                "requests": len(values),
                "requests_per_s": round(len(values) / seconds, 1),
                "p50_ms": round(percentile(values, 50), 1) if values else None,
                "p99_ms": round(percentile(values, 99), 1) if values else None,
                "errors": len(self.errors[name]),
                "first_errors": self.errors[name][:5],
            }
            for name, values in self.latencies_ms.items()
        }


async def poster(client: httpx.AsyncClient, token: str, events: list[bytes], tally: Tally, measuring, until: float) -> None:
    n = 0
    while time.monotonic() < until:
        event = events[n % len(events)]
        n += 1
        started = time.perf_counter()
        try:
            response = await client.post("/v1/events", content=event, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            ok = response.status_code == 202 and "id" in response.json()
            failure = None if ok else f"{response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as e:
            failure = f"{type(e).__name__}: {e}"
        if measuring():
            tally.latencies_ms["post_event"].append((time.perf_counter() - started) * 1000)
            if failure:
                tally.errors["post_event"].append(failure)


async def reader(client: httpx.AsyncClient, token: str, tally: Tally, measuring, until: float) -> None:
    cursor = None
    while time.monotonic() < until:
        params = {"limit": 100, "wait": 0} | ({"cursor": cursor} if cursor else {})
        started = time.perf_counter()
        try:
            response = await client.get(f"/v1/feeds/{READER}/events", params=params, headers={"Authorization": f"Bearer {token}"})
            body = response.json() if response.status_code == 200 else {}
            failure = None if "events" in body and "cursor" in body else f"{response.status_code}: {response.text[:200]}"
            cursor = body.get("cursor", cursor)
        except (httpx.HTTPError, ValueError) as e:
            failure = f"{type(e).__name__}: {e}"
        if measuring():
            tally.latencies_ms["get_feed"].append((time.perf_counter() - started) * 1000)
            if failure:
                tally.errors["get_feed"].append(failure)


async def load(base: str, tokens: dict[str, str], events: dict[str, list[bytes]]) -> dict:
    tally = Tally()
    started = time.monotonic()
    measuring = lambda: time.monotonic() - started >= WARMUP_S
    until = started + WARMUP_S + DURATION_S
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        tasks = []
        publishers = sorted(events)
        for i in range(CLIENTS):
            if i % 2 == 0:
                department = publishers[i // 2 % len(publishers)]
                tasks.append(poster(client, tokens[department], events[department], tally, measuring, until))
            else:
                tasks.append(reader(client, tokens[READER], tally, measuring, until))
        await asyncio.gather(*tasks)
    return tally.summary(DURATION_S)


async def case_ids(client: httpx.AsyncClient, token: str, timeout_s: float = 90.0) -> list[str]:
    """Up to 100 of the reader's cases, once the case stage has published some."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = await client.get("/v1/cases", params={"limit": 100}, headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 200 and response.json()["cases"]:
            return [c["data"]["case_id"] for c in response.json()["cases"]]
        await asyncio.sleep(1)
    raise RuntimeError(f"no case of {READER} appeared on GET /v1/cases within {timeout_s:.0f}s")


async def case_reads(base: str, token: str) -> dict:
    latencies_ms: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=CLIENTS)) as client:
        ids = await case_ids(client, token)

        async def read(case_id: str) -> None:
            started = time.perf_counter()
            try:
                response = await client.get(f"/v1/cases/{case_id}", headers={"Authorization": f"Bearer {token}"})
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
            latencies_ms.append((time.perf_counter() - started) * 1000)

        tasks = []
        # this client's own collector pauses (tens of ms over its heap) are not the gateway's latency
        gc.collect()
        gc.disable()
        try:
            started = time.monotonic()
            for i in range(int(CASE_READ_RATE * CASE_READ_S)):
                await asyncio.sleep(max(0.0, started + i / CASE_READ_RATE - time.monotonic()))
                tasks.append(asyncio.create_task(read(ids[i % len(ids)])))
            await asyncio.gather(*tasks)
        finally:
            gc.enable()
    p99 = percentile(latencies_ms, 99)
    return {
        "rate_per_s": CASE_READ_RATE, "duration_s": CASE_READ_S, "cases": len(ids), "requests": len(latencies_ms),
        "p50_ms": round(percentile(latencies_ms, 50), 1), "p99_ms": round(p99, 1), "errors": len(errors), "first_errors": errors[:5],
        "target": {"p99_ms": CASE_READ_P99_TARGET_MS, "errors": 0}, "target_met": p99 <= CASE_READ_P99_TARGET_MS and not errors,
    }


async def drained(metrics_url: str, timeout_s: float = 120.0) -> None:
    """Until every stage group is less than a second behind (the time lag of the stack's lag
    exporter, /metrics of `up`; at rest the offset lag stays at the last transaction markers):
    the case reads are measured on a stack at rest, not while the pipeline works off the load."""
    deadline = time.monotonic() + timeout_s
    lags: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            lags = {sample.labels["group"]: sample.value
                    for family in text_string_to_metric_families((await client.get(metrics_url)).text)
                    if family.name == "kafka_consumergroup_group_max_lag_seconds"
                    for sample in family.samples if sample.labels.get("group") in STAGE_GROUPS}
            if len(lags) == len(STAGE_GROUPS) and max(lags.values()) < 1.0:
                return
            await asyncio.sleep(1)
    raise RuntimeError(f"the stages were still behind {timeout_s:.0f}s after the load phase: {lags} s")


async def post_some(base: str, tokens: dict[str, str], events: dict[str, list[bytes]], per_department: int = 10) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for department, bodies in events.items():
            for body in bodies[:per_department]:
                await client.post("/v1/events", content=body, headers={"Authorization": f"Bearer {tokens[department]}", "Content-Type": "application/json"})


def sample_events(seed: int, count: int = 1000) -> dict[str, list[bytes]]:
    """The simulator's traffic as each department posts it, in JSON: type, location, data (the
    gateway fills the rest, a new id each post among it). Status updates are left out: they
    refer to cases by id."""
    traffic = CityTraffic(bus_context(), seed)
    events: dict[str, list[bytes]] = {}
    while sum(map(len, events.values())) < count:
        department, event = traffic.next_event()
        if event["type"] != "case.status.updated":
            events.setdefault(department, []).append(to_json({k: v for k, v in event.items() if k != "id"}).encode())
    return events


def run(seed: int = 6, case_reads_only: bool = False) -> Path:
    env = {k: v for k, v in os.environ.items() if k not in ("CIVICBUS_BOOTSTRAP", "CIVICBUS_NAMESPACE")}
    http_port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    with tempfile.TemporaryFile() as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "civicbus.cli", "up", "--broker-port", str(free_port()), "--http-port", str(http_port),
             "--metrics-port", str(metrics_port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            if not asyncio.run(wait_healthy(base, up, 90)):
                log.seek(0)
                return write_result("gateway", {"status": "unavailable", "reason": f"no gateway answered GET {base}/healthz within 90 s "
                                    "(`civicbus up` of this build serves none yet); it runs once the gateway is merged",
                                    "up_output_tail": log.read().decode(errors="replace")[-1500:]})
            events = sample_events(seed)
            tokens = {}
            for department in {*events, READER}:
                result = civicbus("token", department, env=env)
                if result.returncode != 0:
                    raise RuntimeError(f"civicbus token {department} failed: {result.stderr[-500:]}")
                tokens[department] = result.stdout.strip().splitlines()[-1]
            if case_reads_only:
                asyncio.run(post_some(base, tokens, events))
            else:
                figures = asyncio.run(load(base, tokens, events))
            asyncio.run(drained(f"http://127.0.0.1:{metrics_port}/metrics"))
            reads = asyncio.run(case_reads(base, tokens[READER]))
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
    if case_reads_only:
        return write_result("gateway_case_reads", {"status": "measured", "seed": seed, "case_reads": reads})
    errors = sum(f["errors"] for f in figures.values())
    return write_result("gateway", {
        "status": "measured", "clients": CLIENTS, "duration_s": DURATION_S, "warmup_s": WARMUP_S, "seed": seed,
        "endpoints": figures, "target": {"errors": 0}, "target_met": errors == 0 and reads["target_met"], "case_reads": reads,
    })
