"""civic.audit: who received which event, when, with which fields masked, through which path,
kept as a log that shows tampering (after X-Road's signed message log).

Records. The fan-out writes one record per event it delivers, naming every department it
reached and the fields masked for each (path "fanout"), flushed with the feed records before its
input offsets are committed (after a crash, its replay records only deliveries the log does not
show yet: processors.fanout); the HTTP gateway writes one per event it hands to a department, and answers only once
they are acknowledged (path "gateway"). Both are JSON.

Chains. Every record carries its writer's id, a sequence number and the SHA-256 of the writer's
previous record, so a record removed, changed or moved breaks the chain at that point. Two
writers cannot share one chain head: the fan-out writes in one
process, the gateway in another, and neither could learn the other's newest hash
without a round trip through the log. So each writer keeps its own chain, keyed by writer id
(`fanout.0`, `gateway.0`): the id is also the record key, so a chain stays in one partition,
and chains of several writers interleave there while verify follows each by its id. One process
per writer id. A writer takes up its chain from the end of the topic on start (its last record
whose signature verifies). The gateway writes one batch at a time, the records of every read waiting (a group commit), each
after the previous was acknowledged, and takes up its chain from the log again after a failed write.

Checkpoints. After `audit_checkpoint_records` records, or with the first record once
`audit_checkpoint_seconds` have passed since the last checkpoint, a writer adds a checkpoint to
its chain: a link like the others, whose Ed25519 signature covers the writer, its sequence number
and the hash of the record before it, so it seals the chain up to there. The private key is in
the state folder (created on first use, 0600); `civicbus audit verify` checks with the public
key pinned in the city config folder (`audit-public-key.pem`, printed by `civicbus audit key`)
when there is one, else with the one derived from the private key. Pinning it is what makes a
log rewritten under fresh keys fail. Every record also carries the HMAC of civicbus.signing,
like every record on an internal topic. Cost: one audit record per delivered event (there were
as many as departments reached), plus one checkpoint per `audit_checkpoint_records`.

Records after a writer's last checkpoint are not sealed yet: one removed from the very end of
a chain cannot be told from one never written. verify says how many there are.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from confluent_kafka import TopicPartition
from confluent_kafka.admin import OffsetSpec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from civicbus.context import BusContext
from civicbus.kafka import AsyncProducer, make_admin, partition_offsets, security_config
from civicbus.quirks import read_to_end_of
from civicbus.settings import Settings
from civicbus.signing import RecordSigner, state_secret
from civicbus.topology import AUDIT

PRIVATE_KEY_FILE = "keys/audit-ed25519.pem"  # in the state folder
PUBLIC_KEY_FILE = "audit-public-key.pem"  # in the city config folder, when pinned
FANOUT_WRITER = "fanout.0"
GATEWAY_WRITER = "gateway.0"
# Records read back from the end of the topic to find a writer's chain head; the whole topic
# is read only when the writer has written nothing in that stretch.
RESTORE_TAIL_RECORDS = 5_000

DeliveryPath = Literal["fanout", "gateway"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Delivery(_Frozen):
    department: str
    masked_fields: tuple[str, ...]


class AuditRecord(_Frozen):
    kind: Literal["delivery"] = "delivery"
    writer: str
    seq: int
    prev: str  # SHA-256 (hex) of the writer's previous record; "" for its first
    event_id: str
    type: str
    path: DeliveryPath
    time_ms: int  # when the delivery was made
    deliveries: tuple[Delivery, ...]


class Checkpoint(_Frozen):
    kind: Literal["checkpoint"] = "checkpoint"
    writer: str
    seq: int
    prev: str
    time_ms: int
    signature: str  # Ed25519 over signed_bytes(), hex

    def signed_bytes(self) -> bytes:
        return f"civicbus audit checkpoint\n{self.writer}\n{self.seq}\n{self.prev}\n{self.time_ms}".encode()


AuditEntry = Annotated[AuditRecord | Checkpoint, Field(discriminator="kind")]
_ENTRY = TypeAdapter(AuditEntry)


def decode_entry(value: bytes) -> AuditRecord | Checkpoint:
    """Raises ValueError for anything but an audit record or checkpoint."""
    try:
        return _ENTRY.validate_json(value)
    except ValidationError as e:
        raise ValueError(str(e).splitlines()[0]) from None


def record_hash(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


# ---- keys ----


def _new_private_key() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def checkpoint_key(settings: Settings) -> Ed25519PrivateKey:
    """The stack's checkpoint signing key, in the state folder, created on first use."""
    return serialization.load_pem_private_key(state_secret(settings.state_dir / PRIVATE_KEY_FILE, _new_private_key), None)


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def verification_key(settings: Settings) -> tuple[Ed25519PublicKey, str]:
    """The public key checkpoints are checked with, and where it came from."""
    pinned = settings.config / PUBLIC_KEY_FILE
    if pinned.exists():
        key = serialization.load_pem_public_key(pinned.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{pinned} is not an Ed25519 public key")
        return key, str(pinned)
    return checkpoint_key(settings).public_key(), "derived from the private key in the state folder"


# ---- writing ----


@dataclass
class ChainHead:
    seq: int = 0  # the next record's number
    prev: str = ""  # hash of the last record
    unsealed: int = 0  # records since the last checkpoint
    # event id -> departments the writer's records in the tail read back name: what a replay
    # after a crash must not record again (processors.fanout)
    recent_deliveries: dict[str, set[str]] = field(default_factory=dict)


class AuditChain:
    """One writer's chain: numbers its records, links each to the one before, adds checkpoints.

    `record` returns the encoded values to write, in order; it holds no Kafka client.
    """

    def __init__(self, writer: str, key: Ed25519PrivateKey, head: ChainHead, every_records: int, every_seconds: float,
                 clock: Callable[[], float] = time.time):
        self.writer = writer
        self.kafka_key = writer.encode()  # one chain, one partition
        self._key = key
        self.head = head
        self._every_records = every_records
        self._every_seconds = every_seconds
        self._clock = clock
        self._sealed_at = clock()

    @classmethod
    def restored(cls, settings: Settings, bootstrap: str, writer: str) -> AuditChain:
        """The writer's chain, taken up where the log ends (see the module docstring)."""
        head = read_chain_head(settings, bootstrap, writer)
        return cls(writer, checkpoint_key(settings), head, settings.audit_checkpoint_records, settings.audit_checkpoint_seconds)

    def record(self, event_id: str, event_type: str, path: DeliveryPath, deliveries: Iterable[tuple[str, tuple[str, ...]]]) -> list[bytes]:
        record = AuditRecord(
            writer=self.writer, seq=self.head.seq, prev=self.head.prev, event_id=event_id, type=event_type, path=path,
            time_ms=int(self._clock() * 1000), deliveries=tuple(Delivery(department=d, masked_fields=m) for d, m in deliveries),
        )
        values = [self._link(record.model_dump_json().encode())]
        self.head.unsealed += 1
        if self.head.unsealed >= self._every_records or self._clock() - self._sealed_at >= self._every_seconds:
            values.append(self._checkpoint())
        return values

    def _link(self, value: bytes) -> bytes:
        self.head.seq += 1
        self.head.prev = record_hash(value)
        return value

    def _checkpoint(self) -> bytes:
        unsigned = Checkpoint(writer=self.writer, seq=self.head.seq, prev=self.head.prev, time_ms=int(self._clock() * 1000), signature="")
        signed = unsigned.model_copy(update={"signature": self._key.sign(unsigned.signed_bytes()).hex()})
        self.head.unsealed = 0
        self._sealed_at = self._clock()
        return self._link(signed.model_dump_json().encode())


def read_chain_head(settings: Settings, bootstrap: str, writer: str) -> ChainHead:
    """Where `writer`'s chain ends in civic.audit: after its last record whose signature verifies
    (a forged record never becomes anyone's predecessor)."""
    topic = settings.namespace + AUDIT
    signer = RecordSigner.of_stack(settings)
    # assigned, never subscribed; named inside the group prefix the writer's principal holds (civicbus.acl)
    group = f"{settings.namespace}civicbus-{writer.split('.')[0]}-audit"
    head = ChainHead()

    def follow(message) -> None:
        if message.key() != writer.encode() or not signer.verifies_message(message):
            return
        try:
            entry = decode_entry(message.value())
        except ValueError:
            return
        head.seq, head.prev = entry.seq + 1, record_hash(message.value())
        head.unsealed = 0 if isinstance(entry, Checkpoint) else head.unsealed + 1
        if isinstance(entry, AuditRecord):
            head.recent_deliveries.setdefault(entry.event_id, set()).update(d.department for d in entry.deliveries)

    admin = make_admin(bootstrap, **security_config(settings))
    lows, highs = (partition_offsets(admin, [topic], spec) for spec in (OffsetSpec.earliest(), OffsetSpec.latest()))
    read_to_end_of(settings, bootstrap, group, [TopicPartition(topic, p, max(low, highs[(topic, p)] - RESTORE_TAIL_RECORDS))
                                                for (topic, p), low in lows.items()], follow)
    if head.seq == 0 and any(highs[tp] - low > RESTORE_TAIL_RECORDS for tp, low in lows.items()):
        read_to_end_of(settings, bootstrap, group, [TopicPartition(topic, p, low) for (topic, p), low in lows.items()], follow)
    return head


class GatewayAudit:
    """The gateway's chain, written by group commit: the records of every read that arrives while
    a batch is on its way wait for the next batch, which carries all of them, so one broker round
    trip serves every concurrent read rather than one read each (`python -m benchmarks gateway`).

    A batch is written only once the one before was acknowledged, so a failed write never leaves
    records that chain onto a missing one; the reads in a failed batch all get its error, and the
    chain is taken up from the log again before the next."""

    def __init__(self, ctx: BusContext, producer: Callable[[], AsyncProducer], writer: str = GATEWAY_WRITER):
        self._ctx = ctx
        self._producer = producer
        self._writer = writer
        self._topic = ctx.topology.name(AUDIT)
        self._signer = RecordSigner.of_stack(ctx.settings)
        self._chain: AuditChain | None = None
        self._waiting: list[tuple[str, list[tuple[str, str, tuple[str, ...]]], asyncio.Future]] = []
        self._committer: asyncio.Task | None = None

    async def record(self, department: str, handed_out: Iterable[tuple[str, str, tuple[str, ...]]]) -> None:
        """One record per (event id, type, masked fields) handed to `department`; returns once all
        were acknowledged, raises KafkaException if they were not."""
        handed_out = list(handed_out)
        if not handed_out:
            return
        acknowledged = asyncio.get_running_loop().create_future()
        self._waiting.append((department, handed_out, acknowledged))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_waiting())
        await acknowledged

    async def _commit_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self._write([(d, items) for d, items, _ in batch])
            except Exception as e:
                self._chain = None
                outcome = e
            else:
                outcome = None
            for _, _, acknowledged in batch:
                if acknowledged.done():  # the read was cancelled (its client went away); its records stand
                    continue
                if outcome is None:
                    acknowledged.set_result(None)
                else:
                    acknowledged.set_exception(outcome)

    async def _write(self, batch: list[tuple[str, list[tuple[str, str, tuple[str, ...]]]]]) -> None:
        if self._chain is None:
            self._chain = await asyncio.to_thread(AuditChain.restored, self._ctx.settings, self._ctx.bootstrap, self._writer)
        chain = self._chain
        values = [v for department, handed_out in batch for event_id, event_type, masked in handed_out
                  for v in chain.record(event_id, event_type, "gateway", [(department, masked)])]
        producer = self._producer()
        # each send() produces before it first awaits, and gather starts them in order
        await asyncio.gather(*(producer.send(self._topic, v, chain.kafka_key, self._signer.sign(self._topic, chain.kafka_key, v, []))
                               for v in values))
