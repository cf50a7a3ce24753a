"""Positions in a department's feed that survive being handed out: cursors and feed epochs.

A feed can be reset under its readers: the embedded broker keeps everything in memory, so a new
one starts every feed empty at offset 0; on Kafka a topic can be deleted and created again. An
offset from before the reset then names a different event, or one not written yet, and reading
on from it would skip events without anyone noticing.

So a position carries the feed's *epoch*: the Kafka topic id (a UUID the broker gives a topic
when it creates it; a recreated topic or a new embedded broker gives a new one). A reader
compares the epoch of its position with the topic's current id before reading on, and a
mismatch is a `FeedResetError`, never a silent skip. A position without an epoch (a hand-written
`0:15`) cannot be checked that way; it is refused only when it lies beyond the feed's end.

The text form, the gateway's `cursor` and SSE `id`: `<epoch>.<partition>:<offset>,...`, e.g.
`0195a1c3f25e4d6b8f3e2a7c9d0b1e2f.0:15,1:3` (the topic id in hex); each offset is the position after the last event read.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, TopicDescription

MAX_OFFSET = 2**63 - 1  # Kafka offsets are int64
MAX_PARTITION = 2**31 - 1
RESUME_HINT = "read again without a cursor (from the oldest event) or with since=<time>"


class FeedResetError(Exception):
    """A position from before the feed was reset (new broker, recreated topic): reading on from it
    would skip or repeat events, so nothing is read."""


@dataclass(frozen=True)
class FeedPosition:
    positions: dict[int, int]  # partition -> offset of the next event to read
    epoch: str | None = None  # the topic id the positions belong to; None for a hand-written cursor

    def __str__(self) -> str:
        pairs = ",".join(f"{p}:{o}" for p, o in sorted(self.positions.items()))
        return f"{self.epoch}.{pairs}" if self.epoch else pairs

    @classmethod
    def parse(cls, text: str) -> FeedPosition:
        """ValueError (its message names what is wrong) for anything but `[epoch.]p:o,...`."""
        epoch, dot, pairs = text.rpartition(".")
        try:
            positions = {int(p): int(o) for p, o in (part.split(":") for part in pairs.split(","))}
        except ValueError:
            raise ValueError(f"cursor {text[:40]!r} is not partition:offset pairs such as 0:15 or 0:15,1:3, as a page returns it") from None
        if any(p < 0 or o < 0 for p, o in positions.items()):
            raise ValueError("cursor partitions and offsets are never negative")
        if any(p > MAX_PARTITION or o > MAX_OFFSET for p, o in positions.items()):
            raise ValueError(f"cursor offsets are at most {MAX_OFFSET} and partitions at most {MAX_PARTITION}")
        if dot and not (len(epoch) == 32 and all(c in "0123456789abcdef" for c in epoch)):
            raise ValueError(f"cursor {text[:40]!r} has an epoch that is not a topic id")
        return cls(positions, epoch or None)

    def check_epoch(self, current: str, topic: str) -> None:
        if self.epoch is not None and self.epoch != current:
            raise FeedResetError(
                f"{topic} was reset (recreated, or the broker restarted empty) after this position was given "
                f"(its epoch {self.epoch}, the feed's now {current}); events from before the reset are gone: {RESUME_HINT}"
            )

    def check_within(self, ends: dict[int, int], topic: str) -> None:
        """A position beyond the feed's end can only come from a feed that was reset.

        `ends` read to each partition's real end (civicbus.quirks.partition_ends): the embedded
        broker's watermark is short by the rest of the last batch, where a reader's position may be."""
        beyond = {p: o for p, o in self.positions.items() if p in ends and o > ends[p]}
        if beyond:
            shown = ", ".join(f"partition {p} offset {o} > end {ends[p]}" for p, o in sorted(beyond.items()))
            raise FeedResetError(f"the position lies beyond the end of {topic} ({shown}): the feed was reset since; {RESUME_HINT}")


def epoch_of(description: TopicDescription) -> str:
    """A topic's id as 32 hex digits (its own text form is base64 with + and /, not URL-safe)."""
    topic_id = description.topic_id
    if topic_id is None:
        raise KafkaException(KafkaError(KafkaError._FAIL, f"the broker gave no topic id for {description.name}"))
    mask = 2**64 - 1
    return f"{topic_id.get_most_significant_bits() & mask:016x}{topic_id.get_least_significant_bits() & mask:016x}"


def topic_epoch(admin: AdminClient, topic: str, timeout_s: float = 10.0) -> str:
    """The topic's epoch; KafkaException when the broker cannot say."""
    return epoch_of(admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)[topic].result())
