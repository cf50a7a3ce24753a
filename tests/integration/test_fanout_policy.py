"""The real fan-out on the broker: feeds, masks and audit follow a random policy, and a policy
edit applies to the next event without a restart."""

from __future__ import annotations

import os

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from civicbus.audit import AuditRecord, decode_entry
from civicbus.config import load_city
from civicbus.context import BusContext
from civicbus.kafka import apply_topics, make_producer
from civicbus.policy import PolicyDocument
from civicbus.settings import REPO_ROOT
from civicbus.topology import AUDIT, DIST_EVENTS, DLQ
from civicbus.wire import read_dead_letter, read_masked
from tests.conftest import make_settings
from tests.policy_strategies import CATALOG, Areas, events, expected_receivers, policy_documents
from tests.support import PipelineProcesses, committed_offset, private_config, produce_signed, read_topic, wait_for

DEPARTMENTS = tuple(load_city(REPO_ROOT / "config").department_ids())
AREAS = Areas(
    districts=tuple(d.removeprefix("district.") for d in DEPARTMENTS if d.startswith("district.")),
    streets=tuple(d.removeprefix("street.") for d in DEPARTMENTS if d.startswith("street.")),
)
EVENTS_PER_POLICY = 20


def write_policy(config_dir, document: dict) -> PolicyDocument:
    """Replace the file atomically, as an operator's deploy would."""
    temporary = config_dir / "policy.yaml.new"
    temporary.write_text(yaml.safe_dump(document, allow_unicode=True))
    os.replace(temporary, config_dir / "policy.yaml")
    return PolicyDocument.model_validate(document)


def publish_to_distribution(ctx: BusContext, batch: list[dict]) -> int:
    """Write the batch to civic.dist.events; the offset after its last record."""
    producer = make_producer(ctx.bootstrap)
    topic = ctx.topology.name(DIST_EVENTS)
    offsets = []
    for event in batch:
        value, headers = ctx.serde.encode(event, topic)
        produce_signed(ctx, producer, topic, value, event["id"].encode(), headers, on_delivery=lambda _e, m: offsets.append(m.offset()))
    producer.flush(10)
    return max(offsets) + 1


def expected_deliveries(document: PolicyDocument, batch: list[dict]) -> dict[tuple[str, str], frozenset[str]]:
    return {(e["id"], d): frozenset(masked) for e in batch for d, masked in expected_receivers(document, e).items()}


def test_feeds_masks_and_audit_follow_each_policy_through_the_real_fanout(broker_bootstrap, tmp_path):
    """One fan-out process; hypothesis draws several policies in turn, each written over the
    last while the fan-out runs, and a batch of events after each: every event must land in
    exactly the feeds the policy in force says, masked as it says, and be audited once."""
    config = private_config(tmp_path)
    ctx = BusContext(make_settings(broker_bootstrap, config=config))
    apply_topics(ctx.bootstrap, ctx.topology.specs())
    feeds = [ctx.topology.feed(d) for d in DEPARTMENTS]
    expected: dict[tuple[str, str], frozenset[str]] = {}
    originals: dict[str, dict] = {}

    @settings(max_examples=6, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(
        policy=policy_documents(DEPARTMENTS, AREAS, every_department=True, consistent=True),
        batch=st.lists(events(DEPARTMENTS, AREAS), min_size=5, max_size=EVENTS_PER_POLICY),
    )
    def apply_policy_then_publish(policy, batch):
        document = write_policy(config, policy)  # while the fan-out runs: no restart
        end = publish_to_distribution(ctx, batch)
        originals.update((e["id"], e) for e in batch)
        expected.update(expected_deliveries(document, batch))
        # the fan-out commits its position past the whole batch, delivered or not: wait for
        # that, so none of it meets the next policy
        group = ctx.topology.group("civicbus-fanout")
        wait_for(lambda: committed_offset(ctx, group, ctx.topology.name(DIST_EVENTS)) >= end, 90, "the fan-out past the batch")

    fanout = PipelineProcesses(ctx)
    fanout.start("fanout")
    try:
        apply_policy_then_publish()
        records = read_topic(ctx, feeds, idle_s=2.0)  # everything, and nothing more arrives
        logged = [decode_entry(m.value()) for m in read_topic(ctx, ctx.topology.name(AUDIT), idle_s=1.0)]
        audit = [entry for entry in logged if isinstance(entry, AuditRecord)]
        dead_letters = read_topic(ctx, ctx.topology.name(DLQ), idle_s=1.0)
    finally:
        assert fanout.stop_all() == {"fanout": 0}, fanout.logs()

    delivered = {}
    for record in records:
        event = ctx.serde.decode(record.value(), record.topic())  # still valid against its schema
        department = record.topic().removeprefix(ctx.topology.feed(""))
        masked = frozenset(read_masked(record.headers()))
        assert (event["id"], department) not in delivered, "delivered twice"
        delivered[(event["id"], department)] = masked
        original = originals[event["id"]]
        for name in CATALOG[event["type"]].personal_fields:
            if name in masked:
                assert event["data"][name] != original["data"][name] and "*" in event["data"][name]
            else:
                assert event["data"][name] == original["data"][name]
    assert delivered == expected
    assert len(expected) > 20 and any(expected.values()), "the drawn policies delivered or masked too little to prove much"
    # one audit record per delivered event, naming every department it reached
    assert len(audit) == len({event_id for event_id, _ in expected}) and {r.path for r in audit} == {"fanout"}
    assert {(r.event_id, d.department): frozenset(d.masked_fields) for r in audit for d in r.deliveries} == expected
    # an event no department may receive is dead-lettered, never dropped in silence
    received = {event_id for event_id, _ in expected}
    assert {m.key().decode(): read_dead_letter(m.headers())["reason"] for m in dead_letters} == {
        event_id: "UNDELIVERABLE" for event_id in originals if event_id not in received
    }
