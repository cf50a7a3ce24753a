"""The gateway as users run it: `civicbus gateway` (uvicorn) in front of the running pipeline."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx

from civicbus.broker import free_port
from civicbus.tokens import TokenStore
from tests.support import stage_env, wait_for


def test_publish_over_http_then_read_the_masked_feed_by_long_poll_and_sse(bus, pipeline, tmp_path):
    tokens = TokenStore(bus.settings.state_dir)  # the pipeline's: the gateway checks the fan-out's signatures
    hotline, citymgmt = (f"Bearer {tokens.issue(d)}" for d in ("hotline12345", "citymgmt"))
    port = free_port()
    log = open(tmp_path / "gateway.log", "w+b")
    server = subprocess.Popen(
        [sys.executable, "-m", "civicbus.cli", "gateway", "--port", str(port)],
        env=stage_env(bus), stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthz"), 60, "the gateway to answer")
        call = {"type": "hotline.request.received", "location": {"raw_address": "东城区安定门内大街1号"},
                "data": {"category": "complaint", "topic": "exposed_garbage", "content": "小区门口垃圾堆积", "caller_name": "王伟", "caller_phone": "13812345678"}}
        accepted = httpx.post(f"{base}/v1/events", json=call, headers={"Authorization": hotline}, timeout=30)
        assert accepted.status_code == 202, accepted.text
        event_id = accepted.json()["id"]

        events, cursor, deadline = [], None, time.monotonic() + 120
        while not events and time.monotonic() < deadline:
            params = {"wait": 20, **({"cursor": cursor} if cursor else {})}
            page = httpx.get(f"{base}/v1/feeds/citymgmt/events", params=params, headers={"Authorization": citymgmt}, timeout=60).json()
            events, cursor = page["events"], page["cursor"]
        [event] = events
        assert event["id"] == event_id and event["source"] == "hotline12345"
        assert event["data"]["caller_name"] == "***" and event["data"]["caller_phone"] == "13812345678"  # phone granted to citymgmt

        with httpx.stream("GET", f"{base}/v1/feeds/citymgmt/stream", headers={"Authorization": citymgmt}, timeout=60) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            fields = {}
            for line in stream.iter_lines():
                if line.startswith(("id:", "event:", "data:")):
                    name, _, value = line.partition(":")
                    fields[name] = value.strip()
                elif line == "" and "data" in fields:
                    break  # the end of the first event
        assert fields["id"] == cursor and fields["event"] == "hotline.request.received"
        assert json.loads(fields["data"])["id"] == event_id
    finally:
        server.send_signal(signal.SIGTERM)
        returncode = server.wait(30)
    assert returncode == 0, (tmp_path / "gateway.log").read_text()
    assert f"gateway listening on http://127.0.0.1:{port}" in (tmp_path / "gateway.log").read_text()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
