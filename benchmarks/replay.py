"""The pipeline's own records, replayed with no processing: what the broker alone costs.

`capture(ctx)` reads back every record the three stages wrote for a run (civic.pipe.cases,
civic.dist.events, the feeds, civic.audit, civic.dlq, civic.state.cases) and files each under the
input record that caused it, by event id. `python -m benchmarks.replay STAGE CAPTURE` then runs a
stage on the same runner as the real one, whose `process` only looks its input up and emits what
the real stage emitted for it: the same topics, partitions, sizes, commit spacing and commits (a
transaction where the real stage has one), the case events through an idempotent producer beside
the transaction as the real case stage does (processors.cases), and no decoding, policy, masking
or case logic. A replayed record
carries its input's publish time, so the replay's latency is its own. The throughput benchmark
runs the same inbound records through it in a second namespace of the same broker; the soak
benchmark publishes them again at their first pace on a fresh broker.
"""

from __future__ import annotations

import json
import pickle
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from benchmarks.harness import read_all
from civicbus.cli_support import bus_context, stop_on_signals
from civicbus.context import BusContext
from civicbus.signing import RecordSigner
from civicbus.wire import PUBLISHED_MS, published_at_header, read_dead_letter, read_published_ms
from civicbus.kafka import make_producer
from civicbus.topology import AUDIT, DIST_EVENTS, DLQ, PIPE_CASES
from processors import stage_class
from processors.runner import ClientStatistics, Output, Stage, StageRunner

# (topic without the namespace, partition, key, value, headers)
Captured = tuple[str, int, bytes | None, bytes | None, list]


def capture(ctx: BusContext, spans: dict[str, int] | None = None) -> dict[str, dict[bytes, list[Captured]]]:
    """Stage -> input key -> the records that stage wrote for it. With `spans`, also fills in the
    offsets each topic's records span: what a span holds beyond the records are transaction
    markers (each takes an offset)."""
    t = ctx.topology
    strip = lambda topic: topic[len(t.namespace):]  # noqa: E731

    def records(topic: str | list[str]) -> list[Message]:
        found = read_all(ctx.bootstrap, [topic] if isinstance(topic, str) else topic)
        if spans is not None:
            by_partition: dict[tuple[str, int], list[int]] = defaultdict(list)
            for m in found:
                by_partition[(m.topic(), m.partition())].append(m.offset())
            for (name, _), offsets in by_partition.items():
                spans[strip(name)] = spans.get(strip(name), 0) + max(offsets) - min(offsets) + 1
        return found

    def entry(m: Message) -> Captured:
        return strip(m.topic()), m.partition(), m.key(), m.value(), list(m.headers() or [])

    piped = records(t.name(PIPE_CASES))
    case_keys = {m.key() for m in piped}
    by_stage: dict[str, dict[bytes, list[Captured]]] = {"ingest": defaultdict(list), "cases": defaultdict(list), "fanout": defaultdict(list)}
    for m in piped:
        if m.key() != b"clock":
            by_stage["ingest"][m.key()].append(entry(m))
    for m in records(t.name(DIST_EVENTS)):
        by_stage["cases" if m.key() in case_keys else "ingest"][m.key()].append(entry(m))
    for m in records(t.cases_changelog):
        kind, _, key = m.key().decode().partition("/")
        if kind in ("case", "report"):
            by_stage["cases"][key.encode()].append(entry(m))
    for m in records([t.feed(d) for d in t.departments]):
        by_stage["fanout"][m.key()].append(entry(m))
    audited = None  # a checkpoint goes with the record it follows
    for m in records(t.name(AUDIT)):
        audited = json.loads(m.value()).get("event_id", audited)
        if audited is not None:
            by_stage["fanout"][audited.encode()].append(entry(m))
    for m in records(t.name(DLQ)):
        stage = read_dead_letter(m.headers()).get("stage", "ingest")
        by_stage.setdefault(stage, defaultdict(list))[m.key()].append(entry(m))
    return {stage: dict(outputs) for stage, outputs in by_stage.items()}


class ReplayStage(Stage):
    """Emits, for each input, what the real stage emitted for it (see the module docstring)."""

    def __init__(self, ctx: BusContext, name: str, outputs: dict[bytes, list[Captured]]):
        self.ctx = ctx
        self.name = name
        self.exactly_once = stage_class(name).exactly_once  # commits as the real stage does
        self.outputs = outputs
        self.dist_topic = ctx.topology.name(DIST_EVENTS)
        self._beside: Producer | None = None
        self.signer = RecordSigner.of_stack(ctx.settings)

    def subscription(self) -> list[str]:
        t = self.ctx.topology
        return {"ingest": [t.inbound_pattern], "cases": [t.name(PIPE_CASES)], "fanout": [t.name(DIST_EVENTS)]}[self.name]

    def prepare(self, ctx: BusContext) -> None:
        if self.name == "cases":
            self._beside = make_producer(ctx.bootstrap, **{"linger.ms": ctx.settings.commit_interval_max_ms},
                                         **ClientStatistics(ctx.settings, self.name, "case-events").config())

    def process(self, message: Message) -> Iterable[Output]:
        """What the real stage wrote for this input, carrying this input's publish time (the
        replay's latency is its own: ingest takes it from the inbound record's timestamp)."""
        published = published_at_header(read_published_ms(message.headers()) or message.timestamp()[1])
        for topic, partition, key, value, headers in self.outputs.get(message.key(), ()):
            topic = self.ctx.topology.name(topic)
            headers = [published if name == PUBLISHED_MS else (name, v) for name, v in headers]
            if self._beside is not None and topic == self.dist_topic:
                headers = self.signer.sign(topic, key, value, headers)  # as the real case stage signs what goes beside
                self._beside.produce(topic, value, key, headers=headers, partition=partition)
            else:
                yield Output(topic, value, key, headers, partition)

    def before_commit(self, producer: Producer) -> None:
        if self._beside is not None and self._beside.flush(30):
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "replayed case events not acknowledged", txn_requires_abort=True))


def main(stage: str, capture_path: str) -> None:
    ctx = bus_context()
    outputs = pickle.loads(Path(capture_path).read_bytes())[stage]
    StageRunner(ReplayStage(ctx, stage, outputs), ctx).run(stop_on_signals())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
