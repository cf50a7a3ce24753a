"""Cases end to end: the case stage's snapshots on civic.cases, the escalation ladder driven by
clock records of the test's own, and the operators' console in headless Chromium against
`civicbus gateway` (uvicorn) in front of the running pipeline."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

from civicbus.broker import free_port
from civicbus.kafka import make_producer
from civicbus.tokens import TokenStore
from civicbus.topology import CASES, DIST_EVENTS, PIPE_CASES
from processors.casebook import to_ms
from civicbus.wire import clock_header
from producers.sdk import Publisher
from tests.support import produce_signed, read_topic, stage_env, wait_for

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CALL = {"type": "hotline.request.received", "location": {"raw_address": "东城区安定门内大街1号"},
        "data": {"category": "complaint", "topic": "exposed_garbage", "content": "小区门口垃圾堆积", "caller_name": "王伟", "caller_phone": "13812345678"}}


def snapshots(bus, case_id, until, timeout_s=90):
    """The case.snapshot records of one case on civic.cases, oldest first, once `until` holds."""
    def of_case(messages):
        # unvalidated, as the gateway reads them: the test's clock lies hours ahead of the wall clock
        return [bus.serde.decode(m.value(), m.topic(), validate=False) for m in messages if m.key() == case_id.encode() and m.value()]
    return of_case(read_topic(bus, bus.topology.name(CASES), until=lambda m: until(of_case(m)), timeout_s=timeout_s))


def test_an_overdue_case_climbs_the_ladder_by_the_clock_records_it_reads(bus, pipeline):
    with Publisher(bus, "hotline12345") as publisher:
        call_id = publisher.publish(CALL)
    [opened] = snapshots(bus, call_id, lambda s: len(s) >= 1)[:1]
    assert opened["data"]["status"] == "open" and opened["data"]["originators"] == ["hotline12345"]
    assert opened["data"]["reports"][0]["id"] == call_id and opened["classification"] == "RESTRICTED"
    ladder = bus.city.categories.escalation
    first_ms = to_ms(opened["data"]["accept_due"])
    producer = make_producer(bus.bootstrap)
    partitions = bus.topology.pipeline_partitions
    for now_ms in (first_ms, first_ms + int(ladder.district_after.total_seconds() * 1000), first_ms + int(ladder.hub_after.total_seconds() * 1000)):
        for partition in range(partitions):  # as the stage's own clock does; the stage decides by these values, not by its time
            produce_signed(bus, producer, bus.topology.name(PIPE_CASES), b"", b"clock", [clock_header(now_ms)], partition=partition)
    producer.flush(10)

    climbed = lambda s: [(e["missed"], e["level"]) for e in s[-1]["data"]["escalations"]]  # noqa: E731
    latest = snapshots(bus, call_id, lambda s: bool(s) and len(climbed(s)) >= 3)[-1]
    assert climbed([latest]) == [("acceptance", "department"), ("acceptance", "district"), ("acceptance", "city")]
    assert latest["data"]["overdue"] is True
    dist = read_topic(bus, bus.topology.name(DIST_EVENTS), until=lambda m: sum(b"case.escalated" in (m_.value() or b"") for m_ in m) >= 3)
    escalations = [e for e in (bus.serde.decode(m.value(), m.topic(), validate=False) for m in dist) if e["type"] == "case.escalated"]
    assert [(e["data"]["level"], e["time"]) for e in escalations] == [
        ("department", datetime.fromtimestamp(first_ms / 1000, timezone.utc)),
        ("district", datetime.fromtimestamp(first_ms / 1000, timezone.utc) + ladder.district_after),
        ("city", datetime.fromtimestamp(first_ms / 1000, timezone.utc) + ladder.hub_after)]
    assert "district.dongcheng" in escalations[1]["targets"] and "triage" in escalations[2]["targets"]


def test_the_console_in_a_real_browser_shows_a_case_published_seconds_before_and_its_timeline(bus, pipeline, tmp_path):
    bus.settings.state_dir = tmp_path
    tokens = TokenStore(tmp_path)
    hotline, citymgmt = tokens.issue("hotline12345"), tokens.issue("citymgmt")
    port = free_port()
    log = open(tmp_path / "gateway.log", "w+b")
    server = subprocess.Popen([sys.executable, "-m", "civicbus.cli", "gateway", "--port", str(port)],
                              env={**stage_env(bus), "CIVICBUS_STATE_DIR": str(tmp_path)}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthz"), 60, "the gateway to answer")
        published = httpx.post(f"{base}/v1/events", json=CALL, headers={"Authorization": f"Bearer {hotline}"}, timeout=30)
        assert published.status_code == 202, published.text
        case_id = published.json()["id"]
        started = time.monotonic()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                urls = []
                page.on("request", lambda request: urls.append(request.url))
                page.goto(f"{base}/console")
                page.fill("input[name=token]", citymgmt)
                page.click("button[type=submit]")
                row = page.locator(f'tr[data-case="{case_id}"]')
                expect(row).to_be_visible(timeout=90_000)  # the page refreshes itself every 3 s
                print(f"case on the console {time.monotonic() - started:.1f}s after it was published")
                expect(page.locator("#counts")).to_contain_text("exposed_garbage")
                assert page.locator("#city-map polygon").count() >= 10
                shaded = page.locator('#city-map polygon:not([data-open="0"])')
                assert shaded.count() >= 1 and shaded.first.get_attribute("data-grid").startswith("dongcheng.andingmen")
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
                row.locator("a").click()
                timeline = page.locator("#timeline")
                expect(timeline.locator("li.report")).to_contain_text("12345")
                expect(timeline.locator("li.dispatch")).to_contain_text("城市管理局")
                assert "王伟" not in page.content() and "13812345678" not in page.content()
                page.screenshot(path=str(ARTIFACTS / "console-timeline.png"), full_page=True)
                print(f"screenshots: {ARTIFACTS / 'console.png'}, {ARTIFACTS / 'console-timeline.png'}")
                [cookie] = page.context.cookies()
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
                assert not any(citymgmt in url for url in urls)  # the token is never in a URL
                assert page.evaluate("document.cookie") == ""  # nor readable by the page's script
            finally:
                browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        returncode = server.wait(30)
    assert returncode == 0, (tmp_path / "gateway.log").read_text()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
