"""The ingest stage on a real broker: standardise, enrich from civic.ref.*, route; master data updates."""

import subprocess
import sys
from datetime import datetime, timezone

from civicbus.reference import encode_record, read_master_csv
from civicbus.kafka import make_producer
from civicbus.topology import DIST_EVENTS, PIPE_CASES
from producers.reference import load_reference
from producers.sdk import Publisher
from tests.support import PipelineProcesses, private_config, read_topic, stage_env, wait_for


def decoded(bus, topic, count, timeout_s=60):
    messages = read_topic(bus, bus.topology.name(topic), until=lambda m: len(m) >= count, timeout_s=timeout_s)
    return [bus.serde.decode(m.value(), m.topic()) for m in messages]


def rental(**location):
    return {
        "type": "housing.rental.registered",
        "location": location,
        "data": {"registration_id": "R-1", "tenant_name": "李娜", "tenant_id_number": "110101199001011234", "landlord_name": "王强",
                 "occupants": 2, "lease_start": datetime(2026, 1, 1, tzinfo=timezone.utc)},
    }


def test_ingest_standardises_enriches_and_dispatches_events_that_form_no_case(bus):
    counts = load_reference(bus)
    assert counts == {"entities": 60, "buildings": 600}
    stages = PipelineProcesses(bus)
    stages.start("ingest")
    try:
        with Publisher(bus, "housing") as housing:
            placed = housing.publish(rental(raw_address="北京市東城區安定門內大街１號"))
            unplaced = housing.publish(rental(raw_address="火星大道1号"))
        with Publisher(bus, "hotline12345") as hotline:
            call = hotline.publish({"type": "hotline.request.received", "location": {"lat": 22.55, "lon": 113.93},
                                    "data": {"category": "complaint", "topic": "noise", "content": "夜间施工噪声"}})
        by_id = {e["id"]: e for e in decoded(bus, DIST_EVENTS, 2)}
        first = by_id[placed]
        assert first["location"]["address_code"] == "1101010010010001" and first["location"]["grid"] == "dongcheng.andingmen.g07"
        assert first["data"]["building_id"] == "B1101010010010001" and first["data"]["building_use"] == "commercial"
        assert first["targets"] == ["housing", "police", "street.dongcheng.andingmen", "district.dongcheng"]
        second = by_id[unplaced]
        assert second["location"]["resolved"] is False and second["data"]["building_id"] is None
        assert second["targets"] == ["housing", "police", "triage"]  # flagged, still dispatched
        [case_event] = decoded(bus, PIPE_CASES, 1)
        assert case_event["id"] == call and case_event["location"]["street"] == "nanshan.yuehai"
    finally:
        assert stages.stop("ingest") == 0, stages.logs()


def test_master_data_updates_apply_to_later_events(bus):
    load_reference(bus)
    entity = read_master_csv(bus.settings.config, "entities")[1]
    assert entity.status == "active"
    stages = PipelineProcesses(bus)
    stages.start("ingest")
    publisher = Publisher(bus, "market")

    def licence_change():
        return publisher.publish({"type": "entity.license.changed",
                                  "data": {"credit_code": entity.credit_code, "change": "revoked", "license_type": "food_business",
                                           "effective": datetime.now(timezone.utc)}})

    def status_of(event_id):
        for event in decoded(bus, DIST_EVENTS, len(sent)):
            if event["id"] == event_id:
                return event["data"]["entity_status"], event["data"]["entity_name"]

    try:
        sent = [licence_change()]
        assert status_of(sent[0]) == ("active", entity.name)
        producer = make_producer(bus.bootstrap)
        revoked = entity.model_copy(update={"status": "revoked", "updated": datetime.now(timezone.utc)})
        stale = entity.model_copy(update={"status": "suspended", "updated": datetime(2020, 1, 1, tzinfo=timezone.utc)})
        for record in (revoked, stale):  # the stale version arrives last and must not win
            key, value = encode_record(record)
            producer.produce(bus.topology.reference("entities"), value, key)
        producer.flush(10)

        def revoked_seen():
            sent.append(licence_change())
            return status_of(sent[-1])[0] == "revoked"

        wait_for(revoked_seen, 60, "an event enriched with the update")
        sent.append(licence_change())
        assert status_of(sent[-1]) == ("revoked", entity.name)
        assert status_of(sent[0])[0] == "active"
    finally:
        publisher.close()
        assert stages.stop("ingest") == 0, stages.logs()


def test_reference_load_command_refuses_bad_master_data_before_writing(bus, tmp_path):
    config = private_config(tmp_path)
    env = {**stage_env(bus), "CIVICBUS_CONFIG": str(config)}
    ok = subprocess.run([sys.executable, "-m", "civicbus.cli", "reference", "load"], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "60 entities" in ok.stdout and "600 buildings" in ok.stdout
    with (config / "master" / "entities.csv").open("a", encoding="utf-8") as f:
        f.write("91350100M000100Y44,坏代码有限公司,active,,,2024-01-01T00:00:00Z\n")
    bad = subprocess.run([sys.executable, "-m", "civicbus.cli", "reference", "load"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "entities.csv:62" in bad.stderr and "check character" in bad.stderr
    entities = read_topic(bus, bus.topology.reference("entities"))
    assert len(entities) == 60  # the first load only
