"""`civicbus tail AGENCY [--from] [--type] [--limit]`, as a department's operator runs it."""

import json
import subprocess
import sys
import time

from confluent_kafka.admin import AdminClient

from civicbus.kafka import make_producer
from producers.sdk import complete_event
from tests.support import case_report, now, produce_signed, stage_env

SENSOR_ALERT = {"type": "sensor.alert.raised", "location": {"raw_address": "东城区安定门内大街1号", "lat": 39.9475, "lon": 116.4075},
                "data": {"sensor_id": "s-00000001", "kind": "manhole_cover", "severity": "high"}}


def write_feed(bus, events):
    """Put encoded events straight onto civic.feed.citymgmt, one record per batch."""
    producer = make_producer(bus.bootstrap)
    topic = bus.topology.feed("citymgmt")
    for event in events:
        value, headers = bus.serde.encode(event, topic)
        produce_signed(bus, producer, topic, value, event["id"].encode(), headers)  # as the fan-out writes feeds
        producer.flush(10)


def tail(bus, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "civicbus.cli", "tail", "citymgmt", *args], env=stage_env(bus),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def printed(process, timeout_s=60) -> list[dict]:
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()  # a tail that never printed enough must not outlive the test
        raise
    assert process.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def reports(bus, n, prefix):
    return [complete_event(bus, "citymgmt", case_report(description=f"{prefix} {i}")) for i in range(n)]


def groups(bus) -> list[str]:
    return [g.group_id for g in AdminClient({"bootstrap.servers": bus.bootstrap}).list_consumer_groups().result().valid]


def test_tail_from_beginning_now_and_time_with_type_and_limit(bus):
    early = reports(bus, 2, "early")
    write_feed(bus, early)
    assert [e["id"] for e in printed(tail(bus, "--limit", "2"))] == [e["id"] for e in early]
    time.sleep(1.0)
    boundary = now()
    time.sleep(0.5)
    later = reports(bus, 2, "later")
    write_feed(bus, later)
    assert [e["id"] for e in printed(tail(bus, "--from", boundary.isoformat(), "--limit", "2"))] == [e["id"] for e in later]

    following = tail(bus, "--from", "now", "--type", "city.case.reported", "--limit", "1")
    time.sleep(4.0)  # let it take its position at the end before anything new arrives
    newest = reports(bus, 1, "newest")
    write_feed(bus, [complete_event(bus, "citymgmt", SENSOR_ALERT), *newest])  # the alert is not printed
    assert [e["id"] for e in printed(following)] == [newest[0]["id"]]
    assert not [g for g in groups(bus) if "citymgmt" in g or "tail" in g], "tail left a consumer group behind"


def test_tail_names_what_it_cannot_read(bus):
    unknown_type = subprocess.run([sys.executable, "-m", "civicbus.cli", "tail", "citymgmt", "--type", "city.nope"],
                                  env=stage_env(bus), capture_output=True, text=True, timeout=60)
    assert unknown_type.returncode == 2 and "unknown event type city.nope" in unknown_type.stderr
    bad_time = subprocess.run([sys.executable, "-m", "civicbus.cli", "tail", "citymgmt", "--from", "yesterday"],
                              env={**stage_env(bus), "COLUMNS": "300"}, capture_output=True, text=True, timeout=60)
    assert bad_time.returncode == 2 and "'yesterday' is not beginning, now, or an ISO 8601 time" in bad_time.stderr
