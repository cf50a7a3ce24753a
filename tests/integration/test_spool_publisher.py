"""Publisher(spool=True) on a real broker: accept is durable, a restarted publisher resumes."""

import pytest

from civicbus.broker import free_port
from producers.sdk import Publisher
from tests.support import case_report, read_topic


def assert_delivered_in_order(records, ids: list[str]) -> None:
    """Every id once, and each partition's records in the order accepted (the order Kafka keeps:
    the department's inbound topic may have several partitions)."""
    keys = [m.key().decode() for m in records]
    assert sorted(keys) == sorted(ids)
    position = {event_id: n for n, event_id in enumerate(ids)}
    for partition in {m.partition() for m in records}:
        order = [position[m.key().decode()] for m in records if m.partition() == partition]
        assert order == sorted(order), f"partition {partition} out of order"


@pytest.fixture
def spooled_bus(bus, tmp_path):
    bus.settings.state_dir = tmp_path
    return bus


def test_accepted_events_are_delivered_in_order_and_the_spool_empties(spooled_bus):
    bus = spooled_bus
    with Publisher(bus, "citymgmt", spool=True) as publisher:
        ids = publisher.accept_many([case_report(description=f"report {i}") for i in range(200)])
        ids.append(publisher.accept(case_report()))
        assert publisher.drain(60)
    records = read_topic(bus, bus.topology.inbound("citymgmt"), until=lambda m: len(m) >= 201)
    assert_delivered_in_order(records, ids)
    assert (bus.settings.state_dir / "spool" / f"{bus.topology.name('citymgmt')}.spool").stat().st_size == 0


def test_a_restarted_publisher_delivers_what_an_earlier_one_spooled_while_no_broker_answered(spooled_bus):
    bus = spooled_bus
    real_bootstrap = bus.settings.bootstrap
    bus.settings.bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    offline = Publisher(bus, "citymgmt", timeout_s=1, spool=True)
    ids = offline.accept_many([case_report(description=f"offline {i}") for i in range(50)])
    assert not offline.drain(1)
    offline.close()  # gives up after timeout_s; the events stay on disk
    bus.settings.bootstrap = real_bootstrap
    with Publisher(bus, "citymgmt", spool=True) as restarted:
        later = restarted.accept(case_report(description="after restart"))
        assert restarted.drain(60)
    records = read_topic(bus, bus.topology.inbound("citymgmt"), until=lambda m: len(m) >= 51)
    assert_delivered_in_order(records, ids + [later])


def test_accept_without_a_spool_is_refused(bus):
    with Publisher(bus, "citymgmt") as publisher:
        with pytest.raises(RuntimeError, match="spool=True"):
            publisher.accept(case_report())
