"""What the reliability tests share: a seeded realistic workload and the exactly-once checks of the feeds and the audit log."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from civicbus.audit import FANOUT_WRITER, AuditRecord, verification_key
from civicbus.audit_verify import check, read_log
from civicbus.context import BusContext
from civicbus.topology import DIST_EVENTS
from producers.sdk import Publisher
from producers.simulator import CityTraffic
from tests.support import read_topic


def city_events(ctx: BusContext, count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """(department, completed event) from the simulator's realistic mix. Types that update a
    case are left out: they refer to a case by id, and whether that case is open yet when the
    update is processed depends on timing, which a loss/duplicate count must not."""
    traffic = CityTraffic(ctx, seed)
    publishers: dict[str, Publisher] = {}
    events = []
    while len(events) < count:
        department, event = traffic.next_event()
        if ctx.catalog[event["type"]].updates_case:
            continue
        publisher = publishers.get(department) or publishers.setdefault(department, Publisher(ctx, department))
        events.append((department, publisher.complete(event)))
    for publisher in publishers.values():
        publisher.close()
    return events


@dataclass
class Delivery:
    """Where the pipeline put the published events: dist-stream targets and per-feed key counts."""

    targets: dict[str, set[str]]  # event id -> departments the policy delivers it to
    feed_counts: Counter  # (department, event id) -> records in that department's feed

    def problems(self, published_ids: set[str]) -> list[str]:
        """Each published id dispatched, in every feed it was dispatched to, and no feed holding an
        id twice. (Which other feeds may hold it is the policy's business, tested there.)"""
        found = []
        lost = published_ids - set(self.targets)
        if lost:
            found.append(f"{len(lost)} published events never reached {DIST_EVENTS}, e.g. {sorted(lost)[:3]}")
        expected = {(d, i) for i, departments in self.targets.items() for d in departments}
        missing = expected - set(self.feed_counts)
        if missing:
            found.append(f"{len(missing)} (feed, id) deliveries missing, e.g. {sorted(missing)[:3]}")
        twice = {k: n for k, n in self.feed_counts.items() if n > 1}
        if twice:
            found.append(f"{len(twice)} (feed, id) delivered more than once, e.g. {sorted(twice.items())[:3]}")
        return found


def read_dispatched(ctx: BusContext, ids: set[str], timeout_s: float) -> dict[str, set[str]]:
    """Receiving departments per event id (dispatch targets and grants, as the policy decides)
    for every event on civic.dist.events, once every id in `ids` is there."""
    targets: dict[str, set[str]] = {}
    read = 0
    policy = ctx.policy.get()

    def until(messages) -> bool:
        nonlocal read
        for message in messages[read:]:
            event = ctx.serde.decode(message.value(), message.topic())
            receivers = {delivery.department for delivery in policy.deliveries(event)}
            previous = targets.setdefault(event["id"], receivers)
            assert previous == receivers, f"{event['id']} dispatched twice, differently"
        read = len(messages)
        return ids <= targets.keys()

    read_topic(ctx, ctx.topology.name(DIST_EVENTS), until=until, timeout_s=timeout_s)
    return targets


def wait_for_feeds(ctx: BusContext, targets: dict[str, set[str]], timeout_s: float) -> None:
    """Until every (feed, id) the policy delivers is in the feeds; duplicates are counted later, at rest."""
    expected = {(ctx.topology.feed(d), i) for i, departments in targets.items() for d in departments}
    seen: set[tuple[str, str]] = set()
    read = 0

    def until(messages) -> bool:
        nonlocal read
        seen.update((m.topic(), m.key().decode()) for m in messages[read:])
        read = len(messages)
        return expected <= seen

    try:
        read_topic(ctx, feed_topics(ctx), until=until, timeout_s=timeout_s)
    except AssertionError:
        missing = expected - seen
        uncommitted = {(m.topic(), m.key().decode()) for m in read_topic(ctx, feed_topics(ctx), isolation="read_uncommitted")}
        raise AssertionError(f"{len(missing)} (feed, id) deliveries missing after {timeout_s}s, {len(missing & uncommitted)} of them "
                             f"written but not committed, e.g. {sorted(missing)[:3]}") from None


def feed_topics(ctx: BusContext) -> list[str]:
    return [ctx.topology.feed(d) for d in ctx.city.department_ids()]


def count_feeds(ctx: BusContext) -> Counter:
    """(department, event id) -> records, over every feed, read to the end (read_committed)."""
    prefix = len(ctx.topology.feed(""))
    return Counter((m.topic()[prefix:], m.key().decode()) for m in read_topic(ctx, feed_topics(ctx), idle_s=3.0))


def audit_problems(ctx: BusContext, feed_counts: Counter) -> list[str]:
    """The audit log verifies, and names each (department, event id) a feed holds, once."""
    records, from_start = read_log(ctx.settings, ctx.bootstrap, None)
    verdict = check(records, verification_key(ctx.settings)[0], from_start)
    found = [] if verdict.problem is None else [f"audit log: {verdict.problem}"]
    audited = Counter((d.department, r.entry.event_id) for r in records if isinstance(r.entry, AuditRecord)
                      and r.entry.writer == FANOUT_WRITER for d in r.entry.deliveries)
    unaudited = set(feed_counts) - set(audited)
    if unaudited:
        found.append(f"{len(unaudited)} (feed, id) deliveries without an audit record, e.g. {sorted(unaudited)[:3]}")
    twice = {k: n for k, n in audited.items() if n > 1}
    if twice:
        found.append(f"{len(twice)} (feed, id) deliveries audited more than once, e.g. {sorted(twice.items())[:3]}")
    never = set(audited) - set(feed_counts)
    if never:
        found.append(f"{len(never)} audited deliveries no feed holds, e.g. {sorted(never)[:3]}")
    return found
