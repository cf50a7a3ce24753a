"""The case stage's parts that need no broker: the router, the state log."""

from __future__ import annotations

import json

from processors.cases import CaseStore, PipeRecord
from processors.routing import CaseRouter, partition_of, place_key
from tests.unit.fake_records import FakeRecord


def report(event_id, district=None):
    location = {"resolved": True, "district": district} if district else {"resolved": False}
    return {"id": event_id, "location": location}


def test_reports_of_one_district_share_a_partition_and_updates_follow_their_report():
    router = CaseRouter(partitions=8)
    first, second = router.report(report("a", "dongcheng")), router.report(report("b", "dongcheng"))
    assert first == second == partition_of("district/dongcheng", 8)
    assert {router.report(report(f"x{i}", d)) for i, d in enumerate(["dongcheng", "xicheng", "chaoyang"] * 3)} != {first}
    unplaced = router.report(report("lost"))
    assert unplaced == partition_of(place_key(report("lost")), 8)
    assert router.update("a") == first and router.update("lost") == unplaced
    assert router.update("never-seen") == partition_of("never-seen", 8)


def test_with_one_partition_the_router_remembers_nothing_and_follows_no_state_log():
    router = CaseRouter(partitions=1)
    assert {router.report(report(f"r{i}", d)) for i, d in enumerate(["dongcheng", "xicheng", None])} == {0}
    assert router.update("r0") == router.update("never-seen") == 0
    router.follow(ctx=None)  # would need a broker if it followed anything
    assert router._recent == {} and router._follower is None


def test_the_router_learns_reports_routed_elsewhere_from_the_state_log():
    def logged(key, value, partition):
        return FakeRecord(_partition=partition, _key=key, _value=value)

    router = CaseRouter(partitions=4)
    router._learn(logged(b"report/r1", b'{"case": "c1"}', 3))
    router._learn(logged(b"case/c1", b"{}", 3))
    assert router.update("r1") == 3
    router._learn(logged(b"report/r1", None, 3))  # the case was forgotten
    assert router.update("r1") == partition_of("r1", 4)


def test_the_state_log_gets_a_record_per_new_report_and_each_changed_case_once():
    store = CaseStore(partition=0)
    case = {"id": "c1", "reports": ["c1"], "status": "open"}
    store["c1"] = case
    store["c1"] = case  # changed twice in one transaction: written once
    assert list(store.changes()) == [(b"case/c1", json.dumps({"id": "c1", "status": "open"}).encode()),
                                     (b"report/c1", b'{"case": "c1"}')]
    store.committed()
    for i in range(1_000):  # a mass incident: every report adds one small record, not the whole case
        case["reports"].append(f"r{i}")
        store["c1"] = case
        changes = list(store.changes())
        assert [k for k, _ in changes] == [b"case/c1", f"report/r{i}".encode()]
        assert all(len(v) < 100 for _, v in changes)
        store.committed()
    del store["c1"]
    tombstones = list(store.changes())
    assert (b"case/c1", None) in tombstones and len(tombstones) == 1 + 1_001
    record = PipeRecord("civic.pipe.cases", 0, 7, b"k", b"\x00v", {"civic_published_ms": b"1"})
    store.park("s1", "c9", 1000, record)
    assert store.waiting_for("c9") == ["s1"]
    assert [k for k, _ in store.changes()][-1] == b"parked/s1"
    assert PipeRecord.from_json(json.loads(dict(store.changes())[b"parked/s1"])["record"]) == record
