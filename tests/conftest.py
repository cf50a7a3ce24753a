"""Test fixtures: a broker per test module, an isolated namespace of topics per test.

The broker is chosen as DESIGN.md says: CIVICBUS_BOOTSTRAP if set; else Apache Kafka in
testcontainers when a Docker engine answers; else the embedded broker. The same tests run
against all three; the header of the pytest run says which one this is.
"""

from __future__ import annotations

import gc
import os
import uuid

import pytest

from civicbus.broker import EmbeddedBroker
from civicbus.context import BusContext
from civicbus.kafka import apply_topics
from civicbus.settings import Settings
from tests.support import PipelineProcesses

def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def pytest_report_header(config):
    if os.environ.get("CIVICBUS_BOOTSTRAP"):
        return f"civicbus broker: external Kafka at {os.environ['CIVICBUS_BOOTSTRAP']}"
    if _docker_answers():
        return "civicbus broker: Apache Kafka (testcontainers)"
    return "civicbus broker: embedded Tansu (no CIVICBUS_BOOTSTRAP, no Docker engine)"


@pytest.fixture(scope="session")
def shared_kafka():
    """CIVICBUS_BOOTSTRAP, or Apache Kafka in testcontainers for the whole session; None when
    neither is there and each module gets an embedded broker of its own."""
    if os.environ.get("CIVICBUS_BOOTSTRAP"):
        yield os.environ["CIVICBUS_BOOTSTRAP"]
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        yield None


_module_broker: EmbeddedBroker | None = None


@pytest.fixture(scope="module")
def broker_bootstrap(shared_kafka, tmp_path_factory):
    """The bootstrap servers of the broker the module's integration tests use.

    The embedded broker is started afresh for each module (0.12 s): its cost per idempotent
    produce grows with every topic it ever held (civicbus.quirks, 8), and each test creates a
    topology of its own, so one broker for the whole session made the last modules crawl."""
    global _module_broker
    if shared_kafka is not None:
        yield shared_kafka
        return
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log") as broker:
        _module_broker = broker
        yield broker.bootstrap
        _module_broker = None
        gc.collect()  # clients the module's tests dropped go now, not retrying this broker for the rest of the run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test says whether the module's embedded broker is still running: if it died,
    that (not the test) is the failure."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _module_broker is not None:
        report.sections.append(("embedded broker", _module_broker.health()))


# Tests wait for an update whose report never comes to be dead-lettered: a third of the default.
CASE_REPORT_WAIT_MS = 10_000


def make_settings(bootstrap: str, **overrides) -> Settings:
    return Settings(bootstrap=bootstrap, namespace=f"t{uuid.uuid4().hex[:10]}.", **{"case_report_wait_ms": CASE_REPORT_WAIT_MS, **overrides})


@pytest.fixture
def bus(broker_bootstrap) -> BusContext:
    """A BusContext whose topics and groups are private to this test, all topics created."""
    ctx = BusContext(make_settings(broker_bootstrap))
    apply_topics(ctx.bootstrap, ctx.topology.specs())
    return ctx


@pytest.fixture
def pipeline(bus):
    """The three pipeline stages running as `civicbus process` child processes."""
    processes = PipelineProcesses(bus)
    processes.start_all()
    yield processes
    processes.stop_all()
