"""The fan-out commits at least once: after a crash mid-batch it replays what it fetched since its
last commit, and writes exactly what the feeds and the audit log do not show yet."""

from __future__ import annotations

from civicbus.audit import FANOUT_WRITER, AuditChain
from civicbus.context import BusContext
from civicbus.kafka import apply_topics, make_producer
from civicbus.topology import AUDIT, DIST_EVENTS
from tests.conftest import make_settings
from tests.reliability.workload import audit_problems, city_events, count_feeds
from tests.support import PipelineProcesses, committed_offset, private_config, produce_signed, wait_for


def events_for_two_or_more(ctx: BusContext, count: int) -> list[tuple[dict, list[str]]]:
    """Events dispatched to departments the default policy lets receive them, with their receivers."""
    policy = ctx.policy.get()
    found = []
    for _, event in city_events(ctx, 200, seed=11):
        event = {**event, "targets": ["citymgmt", "police", "hotline12345"]}
        receivers = [d.department for d in policy.deliveries(event)]
        if len(receivers) >= 2:
            found.append((event, receivers))
        if len(found) == count:
            return found
    raise AssertionError("the sample city delivers too few events to two departments")


def test_a_replay_after_a_crash_writes_only_the_feed_records_and_audit_entries_that_are_missing(broker_bootstrap, tmp_path):
    ctx = BusContext(make_settings(broker_bootstrap, config=private_config(tmp_path)))
    apply_topics(ctx.bootstrap, ctx.topology.specs())
    (partly, partly_to), (whole, whole_to), (fresh, _) = events_for_two_or_more(ctx, 3)
    producer = make_producer(ctx.bootstrap)
    # what a fan-out killed between its flush and its offset commit leaves: `whole` in every feed
    # and audited, `partly` in its first receiver's feed and audited for the last one only
    chain = AuditChain.restored(ctx.settings, ctx.bootstrap, FANOUT_WRITER)
    for event, feeds, audited in ((whole, whole_to, whole_to), (partly, partly_to[:1], partly_to[-1:])):
        value, headers = ctx.serde.encode(event, ctx.topology.name(DIST_EVENTS))
        for department in feeds:
            produce_signed(ctx, producer, ctx.topology.feed(department), value, event["id"].encode(), headers)
        for entry in chain.record(event["id"], event["type"], "fanout", [(d, ()) for d in audited]):
            produce_signed(ctx, producer, ctx.topology.name(AUDIT), entry, chain.kafka_key)
    dist = ctx.topology.name(DIST_EVENTS)
    for event in (whole, partly, fresh):  # its input, never committed past
        value, headers = ctx.serde.encode(event, dist)
        produce_signed(ctx, producer, dist, value, event["id"].encode(), headers)
    assert producer.flush(10) == 0

    fanout = PipelineProcesses(ctx)
    fanout.start("fanout")
    try:
        wait_for(lambda: committed_offset(ctx, ctx.topology.group("civicbus-fanout"), dist) >= 3, 90, "the fan-out past its input")
    finally:
        assert fanout.stop_all() == {"fanout": 0}, fanout.logs()

    feed_counts = count_feeds(ctx)
    ids = {e["id"] for e in (whole, partly, fresh)}
    delivered = {(d, i): n for (d, i), n in feed_counts.items() if i in ids}
    assert all(n == 1 for n in delivered.values()), delivered  # nothing written twice
    assert {d for d, i in delivered if i == partly["id"]} == set(partly_to)  # the missing feeds written
    assert {d for d, i in delivered if i == whole["id"]} == set(whole_to)
    assert any(i == fresh["id"] for _, i in delivered)
    # each delivery audited once (the one audited before the crash not again), the chain intact
    assert audit_problems(ctx, feed_counts) == []
