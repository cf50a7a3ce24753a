"""Record signatures and the audit chain's verdicts, without a broker (civicbus.signing, civicbus.audit)."""

from __future__ import annotations

import os
import stat
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from civicbus.audit import AuditChain, ChainHead, Checkpoint, decode_entry, record_hash
from civicbus.audit_verify import LoggedRecord, check
from civicbus.settings import Settings
from civicbus.signing import KEY_FILE, SIGNATURE_HEADER, RecordSigner, state_secret

SIGNER = RecordSigner(b"k" * 32, namespace="t1.")


def test_signature_covers_topic_key_value_and_headers():
    headers = SIGNER.sign("t1.civic.feed.police", b"id", b"value", [("ce_id", b"id"), ("civic_masked", b"")])
    assert SIGNER.verifies("t1.civic.feed.police", b"id", b"value", headers)
    assert not SIGNER.verifies("t1.civic.feed.citymgmt", b"id", b"value", headers)  # moved to another feed
    assert not SIGNER.verifies("t1.civic.feed.police", b"other", b"value", headers)
    assert not SIGNER.verifies("t1.civic.feed.police", b"id", b"valuE", headers)
    assert not SIGNER.verifies("t1.civic.feed.police", b"id", b"value", [("ce_id", b"ID"), *headers[1:]])
    assert not SIGNER.verifies("t1.civic.feed.police", b"id", b"value", headers[1:])  # a header dropped
    assert not SIGNER.verifies("t1.civic.feed.police", None, b"value", headers)  # None is not b"id"
    assert not SIGNER.verifies("t1.civic.feed.police", b"id", b"value", headers[:-1])  # unsigned
    assert not SIGNER.verifies("t1.civic.feed.police", b"id", b"value", headers + [headers[-1]])  # two signatures
    assert not RecordSigner(b"x" * 32, "t1.").verifies("t1.civic.feed.police", b"id", b"value", headers)  # another stack


def test_the_signed_bytes_stay_what_records_already_in_the_logs_were_signed_over():
    """Records on Kafka outlive a release: a faster digest must sign exactly what the first one did
    (these signatures were made by the original, straightforward construction)."""
    signed = SIGNER.sign("t1.civic.feed.police", b"id-1", b"\x00\x00\x00\x00\x01body", [("ce_id", b"e-1"), ("empty", b""), ("none", None)])
    assert signed[-1] == (SIGNATURE_HEADER, b"fe0afa5844aacc016bb71f20a999e284932f050bf580fca710e1c473f7a9f447")
    assert SIGNER.sign("t1.civic.feed.police", None, None, []) == [
        (SIGNATURE_HEADER, b"db023e391be7aa9964409a12cd60d889e77eabba8a23124274dca143cf8a92f5")]


def test_a_copied_record_is_signed_afresh_and_the_namespace_is_not_signed():
    first = SIGNER.sign("t1.civic.dist.events", b"id", b"v", [("ce_id", b"id")])
    copied = SIGNER.sign("t1.civic.feed.police", b"id", b"v", first)
    assert [k for k, _ in copied].count(SIGNATURE_HEADER) == 1 and SIGNER.verifies("t1.civic.feed.police", b"id", b"v", copied)
    assert RecordSigner(b"k" * 32, "t2.").verifies("t2.civic.feed.police", b"id", b"v", copied)


def test_which_topics_are_internal():
    assert all(SIGNER.covers(f"t1.{t}") for t in ("civic.dist.events", "civic.audit", "civic.pipe.cases", "civic.feed.police"))
    assert not any(SIGNER.covers(f"t1.{t}") for t in ("civic.in.police", "civic.dlq", "civic.ref.population", "civic.state.fanout-seen"))
    assert not SIGNER.covers("civic.dist.events")  # another namespace's


def test_the_stack_key_is_created_once_owner_only_even_by_racing_processes(tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(state_secret(tmp_path / "keys" / "k", lambda: os.urandom(32)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and stat.S_IMODE((tmp_path / "keys" / "k").stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["k"]  # no temporary left behind
    settings = Settings(state_dir=tmp_path)
    RecordSigner.of_stack(settings)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


KEY = Ed25519PrivateKey.generate()


def chain(writer="fanout.0", every_records=3, every_seconds=60.0, clock=None) -> AuditChain:
    return AuditChain(writer, KEY, ChainHead(), every_records, every_seconds, clock or Clock())


def logged(values: list[bytes], signer: RecordSigner = SIGNER, topic: str = "t1.civic.audit") -> list[LoggedRecord]:
    return [LoggedRecord(0, offset, 0, decode_entry(v), record_hash(v), signer.verifies(topic, b"w", v, SIGNER.sign(topic, b"w", v, [])))
            for offset, v in enumerate(values)]


def written(n: int, **kwargs) -> list[bytes]:
    c = chain(**kwargs)
    return [v for i in range(n) for v in c.record(f"e{i}", "city.case.reported", "fanout", [("police", ("reporter_phone",)), ("citymgmt", ())])]


def test_one_record_per_event_and_a_checkpoint_every_n_records_or_t_seconds():
    values = written(7)
    entries = [decode_entry(v) for v in values]
    kinds = ["C" if isinstance(e, Checkpoint) else "r" for e in entries]
    assert kinds == list("rrrCrrrCr")
    assert [e.seq for e in entries] == list(range(9))
    assert all(e.prev == record_hash(values[i - 1]) for i, e in enumerate(entries) if i) and entries[0].prev == ""
    assert [(d.department, d.masked_fields) for d in entries[0].deliveries] == [("police", ("reporter_phone",)), ("citymgmt", ())]
    clock = Clock()
    c = chain(every_records=100, every_seconds=10.0, clock=clock)
    assert len(c.record("a", "t", "gateway", [("police", ())])) == 1
    clock.now += 10
    assert len(c.record("b", "t", "gateway", [("police", ())])) == 2  # sealed: ten seconds since the last checkpoint


def test_an_intact_chain_verifies_and_reports_what_is_not_sealed_yet():
    verdict = check(logged(written(7)), KEY.public_key(), from_start=True)
    assert verdict.problem is None and verdict.records == 7 and verdict.checkpoints == 2 and verdict.unsealed == {"fanout.0": 1}


def test_interleaved_writers_each_keep_their_own_chain():
    fanout, gateway = chain("fanout.0"), chain("gateway.0")
    values = []
    for i in range(5):
        values += fanout.record(f"e{i}", "t", "fanout", [("police", ())])
        values += gateway.record(f"e{i}", "t", "gateway", [("police", ())])
    assert check(logged(values), KEY.public_key(), from_start=True).problem is None


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda v: v[:4] + v[5:], "offset 4: removed: writer fanout.0's records 4 to 4 are missing"),
        (lambda v: v[:4] + [v[5], v[4]] + v[6:], "offset 5: reordered: writer fanout.0's record 4 comes after its record 5 at offset 4"),
        (lambda v: v[:5] + [v[4]] + v[5:], "offset 5: reordered: writer fanout.0's record 4 comes after its record 4 at offset 4"),
        (lambda v: v[:2] + [v[2].replace(b'"citymgmt"', b'"ecoenv"')] + v[3:], "offset 2: altered: writer fanout.0's record 2 does not hash"),
        (lambda v: v[1:], "offset 0: removed: writer fanout.0's first record is number 1"),
    ],
    ids=["removed", "reordered", "duplicated", "altered", "first removed"],
)
def test_tampering_is_named_at_the_first_bad_record(tamper, expected):
    verdict = check(logged(tamper(written(7))), KEY.public_key(), from_start=True)
    assert verdict.problem is not None and verdict.problem.startswith(expected), verdict.problem


def test_a_checkpoint_under_another_key_or_an_unsigned_record_is_forged():
    values = written(3)
    verdict = check(logged(values), Ed25519PrivateKey.generate().public_key(), from_start=True)
    assert verdict.problem == "offset 3: forged: checkpoint 3 of writer fanout.0 does not verify with the audit public key"
    records = logged(values)
    records[1] = LoggedRecord(0, 1, 0, records[1].entry, records[1].digest, signed=False)
    assert check(records, KEY.public_key(), from_start=True).problem.startswith(f"offset 1: forged: its {SIGNATURE_HEADER} signature")


def test_a_log_read_from_the_middle_starts_each_chain_where_it_finds_it():
    assert check(logged(written(7))[5:], KEY.public_key(), from_start=False).problem is None


def test_only_the_audit_writers_and_the_operator_may_read_the_audit_on_kafka():
    from civicbus import acl
    from civicbus.topology import Topology

    readers = {b.principal for b in acl.plan(Topology(departments=("citymgmt", "police"))) if b.name == "civic.audit" and b.operation == "READ"}
    assert readers == {"User:civicbus-fanout", "User:civicbus-gateway", "User:civicbus-operator"}
