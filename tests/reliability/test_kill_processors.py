"""kill -9 each processor in turn during a 12,000-event run: every event in every feed it belongs in, once, and audited once."""

import threading
import time

import pytest

from producers.sdk import Publisher
from tests.reliability.workload import Delivery, audit_problems, city_events, count_feeds, read_dispatched, wait_for_feeds

EVENTS = 12_000
RATE = 1_000  # events/s: the run lasts ~12 s, so every kill lands while records are flowing
KILLS = (("ingest", 0.25), ("cases", 0.5), ("fanout", 0.75))  # stage, share of events published


def publish_paced(bus, events, progress: list[int], stop: threading.Event) -> None:
    publishers: dict[str, Publisher] = {}
    started = time.monotonic()
    for n, (department, event) in enumerate(events):
        if stop.is_set():
            break
        publisher = publishers.get(department) or publishers.setdefault(department, Publisher(bus, department))
        publisher.send(event)
        progress[0] = n + 1
        ahead = (n + 1) / RATE - (time.monotonic() - started)
        if ahead > 0.01:
            time.sleep(ahead)
    for publisher in publishers.values():
        publisher.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_9_ingest_cases_and_fanout_during_a_run_loses_and_duplicates_nothing(bus, pipeline):
    events = city_events(bus, EVENTS, seed=6)
    progress, stop = [0], threading.Event()
    publisher = threading.Thread(target=publish_paced, args=(bus, events, progress, stop))
    publisher.start()
    try:
        for stage, share in KILLS:
            deadline = time.monotonic() + 60
            while progress[0] < share * EVENTS and time.monotonic() < deadline:
                time.sleep(0.05)
            assert progress[0] < EVENTS, "publishing finished before the kill: the kill would not be mid-run"
            pipeline.kill(stage)
            pipeline.start(stage)
    except BaseException:
        stop.set()
        raise
    finally:
        publisher.join(120)
    assert progress[0] == EVENTS
    published = {event["id"] for _, event in events}
    targets = read_dispatched(bus, published, timeout_s=150)
    wait_for_feeds(bus, targets, timeout_s=120)
    assert set(pipeline.stop_all().values()) == {0}, pipeline.logs()  # at rest: nothing more can arrive
    feed_counts = count_feeds(bus)
    assert Delivery(targets, feed_counts).problems(published) == [], pipeline.logs()
    assert audit_problems(bus, feed_counts) == [], pipeline.logs()
