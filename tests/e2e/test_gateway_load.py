"""`civicbus gateway` (uvicorn) under idle load: health and authentication stay fast, broker
connections stay bounded, and a revoked token ends its open stream."""

from __future__ import annotations

import asyncio
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import psutil

from civicbus.broker import free_port
from civicbus.tokens import TokenStore
from tests.integration.test_gateway import seed_feed
from tests.support import stage_env, wait_for

IDLE_POLLS = 200


@dataclass
class Gateway:
    base: str
    process: subprocess.Popen

    def broker_connections(self, broker_port: int) -> int:
        return sum(1 for c in psutil.Process(self.process.pid).net_connections("tcp") if c.raddr and c.raddr.port == broker_port)


@contextmanager
def running_gateway(bus, tmp_path) -> Iterator[Gateway]:
    port = free_port()
    log = open(tmp_path / "gateway.log", "w+b")
    process = subprocess.Popen(
        [sys.executable, "-m", "civicbus.cli", "gateway", "--port", str(port)],
        env={**stage_env(bus), "CIVICBUS_STATE_DIR": str(tmp_path)}, stdout=log, stderr=subprocess.STDOUT,
    )
    gateway = Gateway(f"http://127.0.0.1:{port}", process)
    try:
        wait_for(lambda: _answers(f"{gateway.base}/healthz"), 60, "the gateway to answer")
        yield gateway
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, (tmp_path / "gateway.log").read_text()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_health_and_authentication_answer_within_100ms_under_200_idle_long_polls(bus, tmp_path):
    bus.settings.state_dir = tmp_path
    tokens = TokenStore(tmp_path)
    departments = bus.city.department_ids()[:10]  # 20 each, within the default 32 concurrent reads
    auth = {d: {"Authorization": f"Bearer {tokens.issue(d)}"} for d in departments}
    broker_port = int(bus.bootstrap.rsplit(":", 1)[1])

    async def load(gateway: Gateway) -> tuple[list[float], list[int], int]:
        async with httpx.AsyncClient(base_url=gateway.base, timeout=60, limits=httpx.Limits(max_connections=IDLE_POLLS + 20)) as client:
            polls = [asyncio.create_task(client.get(f"/v1/feeds/{d}/events", params={"wait": 25}, headers=auth[d]))
                     for i in range(IDLE_POLLS) for d in [departments[i % len(departments)]]]
            await asyncio.sleep(8)  # every long-poll has had its first fetch and waits now
            assert not any(p.done() for p in polls), [p.result().status_code for p in polls if p.done()][:5]
            took, statuses = [], []
            for probe in range(21):
                for method, path, headers in (("GET", "/healthz", {}),
                                              ("GET", "/v1/feeds/police/events", {"Authorization": "Bearer cbt_wrong"}),
                                              ("GET", "/v1/feeds/police/events", auth["citymgmt"])):
                    started = time.perf_counter()
                    response = await client.request(method, path, headers=headers)
                    took.append(time.perf_counter() - started)
                    statuses.append(response.status_code)
                await asyncio.sleep(0.1)
            connections = gateway.broker_connections(broker_port)
            answered = await asyncio.gather(*polls)
            assert {r.status_code for r in answered} == {200} and all(r.json()["events"] == [] for r in answered)
            return took, statuses, connections

    with running_gateway(bus, tmp_path) as gateway:
        took, statuses, connections = asyncio.run(load(gateway))
        assert statuses == [200, 401, 403] * 21
        assert max(took) < 0.1, f"median {statistics.median(took) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms"
        # two consumers per feed at most, an admin client and a producer: not one per request
        assert connections <= 2 * len(departments) * 3 + 10, connections
        wait_for(lambda: gateway.broker_connections(broker_port) <= connections, 10, "idle connections to stay bounded")


def test_an_open_stream_ends_within_5s_of_its_tokens_revocation(bus, tmp_path):
    bus.settings.state_dir = tmp_path
    tokens = TokenStore(tmp_path)
    headers = {"Authorization": f"Bearer {tokens.issue('citymgmt')}"}
    seed_feed(bus, "citymgmt", 1)
    stop = threading.Event()

    def keep_publishing() -> None:
        while not stop.wait(0.3):
            seed_feed(bus, "citymgmt", 1)

    publisher = threading.Thread(target=keep_publishing)
    with running_gateway(bus, tmp_path) as gateway:
        publisher.start()
        try:
            with httpx.stream("GET", f"{gateway.base}/v1/feeds/citymgmt/stream", headers=headers, timeout=30) as stream:
                assert stream.status_code == 200
                lines = stream.iter_lines()
                while not next(lines).startswith("data:"):
                    pass  # the first event arrived: the stream is live
                tokens.revoke("citymgmt")
                revoked = time.monotonic()
                after = sum(1 for line in lines if line.startswith("data:"))  # until the server ends it
                ended_after_s = time.monotonic() - revoked
        finally:
            stop.set()
            publisher.join(10)
        assert ended_after_s < 5.0, ended_after_s
        assert httpx.get(f"{gateway.base}/v1/feeds/citymgmt/events", headers=headers).status_code == 401
        assert after < 30  # what was already on its way, not a stream that goes on
