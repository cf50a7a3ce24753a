"""Internal topics trust only what a civicbus stage signed, and the audit log shows tampering,
on the real broker: the fan-out as a process, the gateway through FastAPI's TestClient, and
`civicbus audit verify` as the command an operator runs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from civicbus.audit import PUBLIC_KEY_FILE, AuditRecord, Checkpoint, decode_entry, public_key_pem
from civicbus.context import BusContext
from civicbus.wire import read_dead_letter
from civicbus.kafka import apply_topics, make_producer
from civicbus.metrics import FORGED_SKIPPED
from civicbus.signing import RecordSigner
from civicbus.tokens import TokenStore
from civicbus.topology import AUDIT, DIST_EVENTS, DLQ, TopicSpec
from consumers.gateway.app import create_app
from consumers.subscriber import FeedSubscriber
from tests.conftest import make_settings
from tests.support import PipelineProcesses, case_report, now, private_config, produce_signed, read_topic, stage_env


def distributed_event(ctx: BusContext, targets=("citymgmt", "police")) -> dict:
    """An event as ingest or the case stage writes it to civic.dist.events."""
    return ctx.catalog.validate({**case_report(reporter_name="张三", reporter_phone="13812345678"), "id": str(uuid.uuid4()),
                                 "source": "citymgmt", "time": now(), "classification": "INTERNAL", "targets": list(targets)})


def distribute(ctx: BusContext, producer, event: dict, signer: RecordSigner | None) -> None:
    """Write `event` to civic.dist.events: signed by `signer`, or not at all."""
    topic = ctx.topology.name(DIST_EVENTS)
    value, headers = ctx.serde.encode(event, topic)
    key = event["id"].encode()
    producer.produce(topic, value, key, headers=signer.sign(topic, key, value, headers) if signer else headers)


def audit_verify(ctx: BusContext, *args: str, namespace: str | None = None, config=None) -> subprocess.CompletedProcess:
    env = {**stage_env(ctx), "CIVICBUS_NAMESPACE": namespace or ctx.settings.namespace}
    if config is not None:
        env["CIVICBUS_CONFIG"] = str(config)
    return subprocess.run([sys.executable, "-m", "civicbus.cli", "audit", "verify", *args], env=env, capture_output=True, text=True, timeout=180)


def test_a_record_written_straight_to_the_distribution_stream_is_dead_lettered_forged_not_delivered_or_audited(bus):
    producer = make_producer(bus.bootstrap)
    unsigned, other_stack, genuine = (distributed_event(bus) for _ in range(3))
    distribute(bus, producer, unsigned, None)
    distribute(bus, producer, other_stack, RecordSigner(os.urandom(32), bus.settings.namespace))
    distribute(bus, producer, genuine, RecordSigner.of_stack(bus.settings))
    producer.flush(10)
    fanout = PipelineProcesses(bus)
    fanout.start("fanout")
    try:
        feeds = [bus.topology.feed(d) for d in bus.topology.departments]
        wanted = {(bus.topology.feed(d), genuine["id"].encode()) for d in ("citymgmt", "police")}
        delivered = read_topic(bus, feeds, until=lambda m: {(r.topic(), r.key()) for r in m} >= wanted, timeout_s=90)
        letters = read_topic(bus, bus.topology.name(DLQ), until=lambda m: len(m) >= 2, timeout_s=30)
        audit = [decode_entry(m.value()) for m in read_topic(bus, bus.topology.name(AUDIT), idle_s=1.0)]
        verified = audit_verify(bus)
    finally:
        assert fanout.stop_all() == {"fanout": 0}, fanout.logs()
    # the same partition, in order: by the time the genuine event is out, the others were handled
    assert {m.key() for m in delivered} == {genuine["id"].encode()}
    assert {m.key().decode(): read_dead_letter(m.headers())["reason"] for m in letters} == {unsigned["id"]: "FORGED", other_stack["id"]: "FORGED"}
    assert {read_dead_letter(m.headers())["stage"] for m in letters} == {"fanout"}
    assert [e.event_id for e in audit if isinstance(e, AuditRecord)] == [genuine["id"]]
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_gateway_and_the_subscriber_sdk_never_hand_out_a_forged_feed_record(bus, tmp_path):
    police = bus.topology.feed("police")
    producer = make_producer(bus.bootstrap)

    def encoded():
        event = distributed_event(bus, targets=("police",))
        return event["id"], *bus.serde.encode(event, police)

    first, value, headers = encoded()
    produce_signed(bus, producer, police, value, first.encode(), headers)
    unsigned, value, headers = encoded()
    producer.produce(police, value, unsigned.encode(), headers=headers)
    moved, value, headers = encoded()  # genuinely signed, for another department's feed
    producer.produce(police, value, moved.encode(), headers=RecordSigner.of_stack(bus.settings).sign(bus.topology.feed("citymgmt"), moved.encode(), value, headers))
    last, value, headers = encoded()
    produce_signed(bus, producer, police, value, last.encode(), headers)
    producer.flush(10)

    skipped_before = FORGED_SKIPPED.labels("gateway")._value.get()
    with TestClient(create_app(bus)) as gateway:
        auth = {"Authorization": f"Bearer {TokenStore(bus.settings.state_dir).issue('police')}"}
        page = gateway.get("/v1/feeds/police/events", headers=auth).json()
    assert [e["id"] for e in page["events"]] == [first, last] and page["cursor"].endswith(".0:4")  # <feed epoch>.<position>
    assert FORGED_SKIPPED.labels("gateway")._value.get() - skipped_before == 2
    audited = read_topic(bus, bus.topology.name(AUDIT), until=lambda m: len(m) >= 2)
    assert [decode_entry(m.value()).event_id for m in audited] == [first, last]

    seen, stop = [], threading.Event()

    def collect(item):
        seen.append(item.id)
        if item.id == last:
            stop.set()

    with FeedSubscriber(bus, "police", group_id=bus.topology.group("dept.police.test"), start=0) as subscriber:
        subscriber.run(collect, stop)
    assert seen == [first, last]


def audit_log(ctx: BusContext) -> list[tuple[bytes, bytes, list, int]]:
    return [(m.key(), m.value(), m.headers(), m.timestamp()[1]) for m in read_topic(ctx, ctx.topology.name(AUDIT), idle_s=1.5)]


def copied(ctx: BusContext, name: str, records: list[tuple[bytes, bytes, list, int]]) -> str:
    """A copy of the audit log, as it might come back from a backup or a rewritten disk, in a
    namespace of its own; the namespace it returns is the one to verify."""
    namespace = f"{ctx.settings.namespace}{name}."
    apply_topics(ctx.bootstrap, [TopicSpec(namespace + AUDIT, 1)])
    producer = make_producer(ctx.bootstrap)
    for key, value, headers, timestamp_ms in records:
        producer.produce(namespace + AUDIT, value, key, headers=headers, timestamp=timestamp_ms)
    producer.flush(10)
    return namespace


def test_audit_verify_names_the_first_forged_altered_removed_or_reordered_record(broker_bootstrap, tmp_path, monkeypatch):
    # a checkpoint after every 3 records and never by time, so the log's layout below is exact
    monkeypatch.setenv("CIVICBUS_AUDIT_CHECKPOINT_RECORDS", "3")  # for the fan-out process
    monkeypatch.setenv("CIVICBUS_AUDIT_CHECKPOINT_SECONDS", "3600")
    ctx = BusContext(make_settings(broker_bootstrap, audit_checkpoint_records=3, audit_checkpoint_seconds=3600))
    apply_topics(ctx.bootstrap, ctx.topology.specs())
    producer = make_producer(ctx.bootstrap)
    events = [distributed_event(ctx) for _ in range(7)]
    for event in events:
        distribute(ctx, producer, event, RecordSigner.of_stack(ctx.settings))
    producer.flush(10)
    fanout = PipelineProcesses(ctx)
    fanout.start("fanout")
    try:
        read_topic(ctx, ctx.topology.name(AUDIT), until=lambda m: len(m) >= 9, timeout_s=90)  # 7 records, 2 checkpoints
        with TestClient(create_app(ctx)) as gateway:  # gateway reads join the log on a chain of their own
            auth = {"Authorization": f"Bearer {TokenStore(ctx.settings.state_dir).issue('police')}"}
            assert len(gateway.get("/v1/feeds/police/events", params={"limit": 4}, headers=auth).json()["events"]) == 4
    finally:
        assert fanout.stop_all() == {"fanout": 0}, fanout.logs()
    log = audit_log(ctx)
    entries = [decode_entry(value) for _, value, _, _ in log]
    assert [(e.writer, type(e).__name__) for e in entries] == (
        [("fanout.0", "AuditRecord")] * 3 + [("fanout.0", "Checkpoint")] + [("fanout.0", "AuditRecord")] * 3
        + [("fanout.0", "Checkpoint"), ("fanout.0", "AuditRecord")] + [("gateway.0", "AuditRecord")] * 3 + [("gateway.0", "Checkpoint"), ("gateway.0", "AuditRecord")]
    )
    assert [{d.department for d in e.deliveries} for e in entries if isinstance(e, AuditRecord) and e.path == "fanout"] == [{"citymgmt", "police"}] * 7

    intact = audit_verify(ctx)
    assert intact.returncode == 0, intact.stderr
    assert "audit log intact: 11 records, 3 checkpoints, 2 writers; not yet sealed by a checkpoint: fanout.0: 1, gateway.0: 1" in intact.stdout

    removed = audit_verify(ctx, namespace=copied(ctx, "removed", log[:5] + log[6:]))
    assert removed.returncode == 1 and "offset 5: removed: writer fanout.0's records 5 to 5 are missing" in removed.stderr, removed.stderr

    reordered = audit_verify(ctx, namespace=copied(ctx, "reordered", log[:4] + [log[5], log[4]] + log[6:]))
    assert reordered.returncode == 1 and "offset 5: reordered: writer fanout.0's record 4 comes after its record 5 at offset 4" in reordered.stderr, reordered.stderr

    # altered by someone holding the stages' signing key: the HMAC verifies, the chain does not
    key, value, headers, timestamp_ms = log[2]
    changed = value.replace(b'"police"', b'"ecoenv"')
    topic = ctx.topology.name(AUDIT)
    resigned = RecordSigner.of_stack(ctx.settings).sign(topic, key, changed, [h for h in headers if h[0] != "civic_sig"])
    altered = audit_verify(ctx, namespace=copied(ctx, "altered", log[:2] + [(key, changed, resigned, timestamp_ms)] + log[3:]))
    assert altered.returncode == 1 and "offset 2: altered: writer fanout.0's record 2 does not hash to what its record 3 at offset 3 recorded" in altered.stderr, altered.stderr
    # and by someone without it
    unsigned = audit_verify(ctx, namespace=copied(ctx, "unsigned", log[:2] + [(key, changed, headers, timestamp_ms)] + log[3:]))
    assert unsigned.returncode == 1 and "offset 2: forged: its civic_sig signature does not verify" in unsigned.stderr, unsigned.stderr

    # a log rewritten under fresh keys fails against the public key pinned in the config folder
    config = private_config(tmp_path)
    (config / PUBLIC_KEY_FILE).write_text(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    pinned = audit_verify(ctx, config=config)
    assert pinned.returncode == 1 and "offset 3: forged: checkpoint 3 of writer fanout.0 does not verify with the audit public key" in pinned.stderr, pinned.stderr

    # --since: a gap before that time is outside what is checked
    hour_ago_ms = int((time.time() - 3600) * 1000)
    older = [(k, v, h, hour_ago_ms - 60_000) for k, v, h, _ in log[:5]]
    since = copied(ctx, "since", older[:2] + older[3:] + log[5:])
    assert audit_verify(ctx, namespace=since).returncode == 1
    recent = audit_verify(ctx, "--since", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour_ago_ms / 1000)), namespace=since)
    assert recent.returncode == 0 and "audit log intact: 7 records, 2 checkpoints" in recent.stdout, recent.stderr

    # forged: appended to the live log without the stages' key
    forged = AuditRecord(writer="fanout.0", seq=9, prev=entries[8].prev, event_id=events[0]["id"], type="city.case.reported",
                         path="fanout", time_ms=int(time.time() * 1000), deliveries=())
    offsets = []
    producer.produce(topic, forged.model_dump_json().encode(), b"fanout.0", on_delivery=lambda err, msg: offsets.append(msg.offset()))
    producer.flush(10)
    caught = audit_verify(ctx)
    assert caught.returncode == 1 and f"offset {offsets[0]}: forged: its civic_sig signature does not verify" in caught.stderr, caught.stderr
    assert isinstance(entries[3], Checkpoint)


def test_each_writer_takes_up_its_chain_after_a_kill_9_or_a_restart(bus, monkeypatch):
    monkeypatch.setenv("CIVICBUS_AUDIT_CHECKPOINT_SECONDS", "3600")  # no checkpoints: the sequences below are exact
    bus.settings.audit_checkpoint_seconds = 3600
    signer = RecordSigner.of_stack(bus.settings)
    producer = make_producer(bus.bootstrap)
    audit_topic = bus.topology.name(AUDIT)
    fanout = PipelineProcesses(bus)

    def deliver(count: int, audited_before: int) -> None:
        for _ in range(count):
            distribute(bus, producer, distributed_event(bus), signer)
        producer.flush(10)
        read_topic(bus, audit_topic, until=lambda m: sum(isinstance(decode_entry(r.value()), AuditRecord) for r in m) >= audited_before + count, timeout_s=90)

    def gateway_reads(limit: int) -> None:
        with TestClient(create_app(bus)) as gateway:  # a new app: a restarted gateway
            auth = {"Authorization": f"Bearer {TokenStore(bus.settings.state_dir).issue('police')}"}
            assert gateway.get("/v1/feeds/police/events", params={"limit": limit}, headers=auth).status_code == 200

    fanout.start("fanout")
    try:
        deliver(3, 0)
        gateway_reads(2)
        fanout.kill("fanout")
        fanout.start("fanout")
        deliver(3, 5)
        gateway_reads(4)
    finally:
        assert fanout.stop_all() == {"fanout": 0}, fanout.logs()
    entries = [decode_entry(m.value()) for m in read_topic(bus, audit_topic, idle_s=1.0)]
    assert [e.seq for e in entries if e.writer == "fanout.0"] == list(range(6))
    assert [e.seq for e in entries if e.writer == "gateway.0"] == list(range(6))
    verified = audit_verify(bus)
    assert verified.returncode == 0 and "audit log intact: 12 records" in verified.stdout, verified.stdout + verified.stderr
