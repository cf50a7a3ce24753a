"""The broker unreachable for 20 s while departments publish: the publishers spool to disk and
deliver everything after recovery, none lost, none duplicated.

The embedded broker holds data only in memory, so a restart is no test: this one is frozen
with SIGSTOP and thawed with SIGCONT. It gets its own broker, so no other test is frozen too.
"""

import threading
import time

import pytest

from civicbus.broker import EmbeddedBroker
from civicbus.context import BusContext
from civicbus.kafka import apply_topics
from civicbus.settings import Settings
from producers.sdk import Publisher
from tests.reliability.workload import Delivery, city_events, count_feeds, read_dispatched, wait_for_feeds
from tests.support import PipelineProcesses

OUTAGE_S = 20.0
BEFORE_S, AFTER_S = 4.0, 4.0  # publishing before and after the outage
RATE_PER_DEPARTMENT = 40  # events/s
TICK_S = 0.1


@pytest.fixture
def own_broker():
    with EmbeddedBroker() as broker:
        yield broker


def keep_running(pipeline: PipelineProcesses, stop: threading.Event, restarts: list[str]) -> None:
    """What `civicbus up` does: a stage that exits is started again."""
    while not stop.wait(0.5):
        for name, stage in list(pipeline.stages.items()):
            if stage.process.poll() is not None:
                restarts.append(f"{name} exited with {stage.process.returncode}")
                pipeline.start(name)


def publish_steadily(publisher: Publisher, events: list[dict], stop: threading.Event, accepted: list[str]) -> None:
    per_tick = max(1, int(RATE_PER_DEPARTMENT * TICK_S))
    while events and not stop.is_set():
        batch, events[:] = events[:per_tick], events[per_tick:]
        accepted += publisher.accept_many(batch)
        stop.wait(TICK_S)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_publishers_spool_through_a_20s_broker_outage_and_deliver_everything_once(own_broker, tmp_path):
    bus = BusContext(Settings(bootstrap=own_broker.bootstrap, namespace="outage.", state_dir=tmp_path))
    apply_topics(bus.bootstrap, bus.topology.specs())
    pipeline = PipelineProcesses(bus)
    pipeline.start_all()
    supervisor_stop, restarts = threading.Event(), []
    supervisor = threading.Thread(target=keep_running, args=(pipeline, supervisor_stop, restarts))
    supervisor.start()
    total_s = BEFORE_S + OUTAGE_S + AFTER_S
    by_department: dict[str, list[dict]] = {}
    for department, event in city_events(bus, 3 * int(RATE_PER_DEPARTMENT * total_s), seed=8):
        by_department.setdefault(department, []).append(event)
    departments = sorted(by_department, key=lambda d: -len(by_department[d]))[:3]
    publishers = {d: Publisher(bus, d, spool=True) for d in departments}
    accepted = {d: [] for d in departments}
    stop_publishing = threading.Event()
    threads = [
        threading.Thread(target=publish_steadily, args=(publishers[d], by_department[d], stop_publishing, accepted[d]))
        for d in departments
    ]
    try:
        for thread in threads:
            thread.start()
        time.sleep(BEFORE_S)
        own_broker.freeze()
        frozen_at = {d: len(ids) for d, ids in accepted.items()}
        time.sleep(OUTAGE_S)
        accepted_while_frozen = sum(len(accepted[d]) - frozen_at[d] for d in departments)
        spooled_while_frozen = sum(p.spooled_bytes for p in publishers.values())
        own_broker.thaw()
        time.sleep(AFTER_S)
        stop_publishing.set()
        for thread in threads:
            thread.join(30)
        assert accepted_while_frozen > 0 and spooled_while_frozen > 0, "nothing was accepted into the spool during the outage"
        for department, publisher in publishers.items():
            assert publisher.drain(120), f"{department}'s spool did not drain after the broker came back"
        published = [i for ids in accepted.values() for i in ids]
        assert len(published) == len(set(published))
        targets = read_dispatched(bus, set(published), timeout_s=150)
        wait_for_feeds(bus, targets, timeout_s=120)
    finally:
        own_broker.thaw()
        stop_publishing.set()
        supervisor_stop.set()
        supervisor.join()
        for publisher in publishers.values():
            publisher.close()
        exit_codes = pipeline.stop_all()
    assert set(exit_codes.values()) == {0}, pipeline.logs()
    assert Delivery(targets, count_feeds(bus)).problems(set(published)) == [], f"restarts: {restarts}\n{pipeline.logs()}"
