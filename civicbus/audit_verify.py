"""`civicbus audit verify`: read civic.audit and name the first record that breaks it.

What counts (civicbus.audit explains the chains and checkpoints):
- forged: a record whose HMAC (civicbus.signing) or checkpoint signature does not verify;
- altered: a record that no longer hashes to what the next record of its chain recorded;
- removed: a gap in a writer's sequence numbers;
- reordered: a writer's record that comes after a later one of the same writer, or twice.
The log is read once; each chain is then checked in log order, one partition after another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import TopicPartition
from confluent_kafka.admin import OffsetSpec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from civicbus.audit import AuditRecord, Checkpoint, decode_entry, record_hash
from civicbus.kafka import make_admin, partition_offsets, security_config
from civicbus.quirks import read_to_end_of
from civicbus.settings import Settings
from civicbus.signing import SIGNATURE_HEADER, RecordSigner
from civicbus.topology import AUDIT


@dataclass(frozen=True)
class LoggedRecord:
    partition: int
    offset: int
    timestamp_ms: int
    entry: AuditRecord | Checkpoint | None  # None: not an audit record
    digest: str
    signed: bool  # its HMAC verified
    problem: str = ""  # why it is not an audit record

    @property
    def where(self) -> str:
        return f"offset {self.offset}" if self.partition == 0 else f"partition {self.partition} offset {self.offset}"


@dataclass
class _Chain:
    seq: int
    digest: str
    where: str
    unsealed: int = 0


@dataclass
class Verdict:
    problem: str | None
    records: int = 0
    checkpoints: int = 0
    unsealed: dict[str, int] = field(default_factory=dict)  # writer -> records after its last checkpoint

    def summary(self) -> str:
        if self.problem:
            return self.problem
        unsealed = ", ".join(f"{w}: {n}" for w, n in sorted(self.unsealed.items()) if n) or "none"
        return (f"audit log intact: {self.records} records, {self.checkpoints} checkpoints, "
                f"{len(self.unsealed)} writers; not yet sealed by a checkpoint: {unsealed}")


def check(records: list[LoggedRecord], public_key: Ed25519PublicKey, from_start: bool) -> Verdict:
    """The verdict on `records` (one partition after another, each in offset order).

    `from_start`: the records begin where the log began, so every chain must start at 0;
    otherwise (retention, --since) a chain's first record is taken as it is.
    """
    later = {(r.partition, r.entry.writer, r.entry.seq): r for r in reversed(records) if r.entry is not None}
    chains: dict[tuple[int, str], _Chain] = {}
    verdict = Verdict(None)
    for r in records:
        if not r.signed:
            verdict.problem = f"{r.where}: forged: its {SIGNATURE_HEADER} signature does not verify (not written by civicbus, or changed since)"
            return verdict
        if r.entry is None:
            verdict.problem = f"{r.where}: altered: not an audit record ({r.problem})"
            return verdict
        e = r.entry
        chain = chains.get((r.partition, e.writer))
        if chain is None:
            if from_start and (e.seq != 0 or e.prev):
                verdict.problem = f"{r.where}: removed: writer {e.writer}'s first record is number {e.seq}; records 0 to {e.seq - 1} are missing"
                return verdict
        elif e.seq > chain.seq + 1:
            moved = later.get((r.partition, e.writer, chain.seq + 1))
            if moved is not None and moved.offset > r.offset:
                verdict.problem = f"{moved.where}: reordered: writer {e.writer}'s record {chain.seq + 1} comes after its record {e.seq} at {r.where}"
            else:
                verdict.problem = f"{r.where}: removed: writer {e.writer}'s records {chain.seq + 1} to {e.seq - 1} are missing before this one (record {e.seq})"
            return verdict
        elif e.seq <= chain.seq:
            verdict.problem = f"{r.where}: reordered: writer {e.writer}'s record {e.seq} comes after its record {chain.seq} at {chain.where}"
            return verdict
        elif e.prev != chain.digest:
            verdict.problem = (f"{chain.where}: altered: writer {e.writer}'s record {chain.seq} does not hash to what its "
                               f"record {e.seq} at {r.where} recorded")
            return verdict
        if isinstance(e, Checkpoint):
            try:
                public_key.verify(bytes.fromhex(e.signature), e.signed_bytes())
            except (InvalidSignature, ValueError):
                verdict.problem = f"{r.where}: forged: checkpoint {e.seq} of writer {e.writer} does not verify with the audit public key"
                return verdict
            verdict.checkpoints += 1
        else:
            verdict.records += 1
        unsealed = 0 if isinstance(e, Checkpoint) else (chain.unsealed if chain else 0) + 1
        chains[(r.partition, e.writer)] = _Chain(e.seq, r.digest, r.where, unsealed)
    verdict.unsealed = {}
    for (_partition, writer), chain in chains.items():
        verdict.unsealed[writer] = verdict.unsealed.get(writer, 0) + chain.unsealed
    return verdict


def read_log(settings: Settings, bootstrap: str, since_ms: int | None) -> tuple[list[LoggedRecord], bool]:
    """Every record of civic.audit (from `since_ms` on), and whether that is the log from its start."""
    topic = settings.namespace + AUDIT
    signer = RecordSigner.of_stack(settings)
    group = f"{settings.namespace}civicbus-audit-verify"
    by_partition: dict[int, list[LoggedRecord]] = {}

    def take(message) -> None:
        timestamp_ms = message.timestamp()[1]
        if since_ms is not None and timestamp_ms < since_ms:
            return  # the embedded broker answers offset 0 for any time: skip the older ones here
        value = message.value() or b""
        try:
            entry, problem = decode_entry(value), ""
        except ValueError as e:
            entry, problem = None, str(e)
        by_partition.setdefault(message.partition(), []).append(
            LoggedRecord(message.partition(), message.offset(), timestamp_ms, entry, record_hash(value), signer.verifies_message(message), problem)
        )

    admin = make_admin(bootstrap, **security_config(settings))
    lows = partition_offsets(admin, [topic], OffsetSpec.earliest())
    starts = lows if since_ms is None else partition_offsets(admin, [topic], OffsetSpec.for_timestamp(since_ms))
    begin = [TopicPartition(topic, p, offset) for (topic, p), offset in starts.items() if offset >= 0]
    if begin:
        read_to_end_of(settings, bootstrap, group, begin, take, timeout_s=600)
    records = [r for p in sorted(by_partition) for r in by_partition[p]]
    return records, since_ms is None and all(low == 0 for low in lows.values())
