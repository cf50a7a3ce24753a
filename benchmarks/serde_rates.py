"""(c) Avro encode and decode rates of EventSerde (in process, no broker), per event type.

decode = wire bytes -> validated event (what ingest does with what departments publish);
decode_unvalidated = wire bytes -> event, as the fan-out reads what civicbus's own stages wrote;
encode = validated event -> wire bytes + CloudEvents headers; validate = the pydantic check alone;
mask = the fan-out's copy for a department without grants: personal fields masked, free text
scanned for personal data and masked where found (civicbus.policy.masking), before re-encoding.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Workload, benchmark_city
from benchmarks.report import write_result
from civicbus.context import BusContext
from civicbus.policy import masked_event
from civicbus.schemas import EventType

EVENTS = 5_000


def rate(operation, items, repeats: int) -> float:
    """Median operations/s over `repeats` passes."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for item in items:
            operation(item)
        rates.append(len(items) / (time.perf_counter() - started))
    return round(statistics.median(rates))


def mask_for_anyone(event_type: EventType):
    """Masking as the fan-out does it for a receiver holding no grant for the type."""
    scanned = (*event_type.free_text_fields, *event_type.envelope_free_text)

    def mask(event: dict) -> None:
        masked = tuple(f for f in event_type.personal_fields if event["data"].get(f) not in (None, "", []))
        masked_event(event, event_type, masked, scanned)

    return mask


def run(seed: int = 6, repeats: int = 5) -> Path:
    with tempfile.TemporaryDirectory(prefix="civicbus-bench-") as work_dir, benchmark_city(Path(work_dir)) as settings:
        ctx = BusContext(settings.model_copy(update={"bootstrap": "127.0.0.1:1"}))
        workload = Workload(ctx, seed)
        events = [e for _, e in workload.events(EVENTS, True) + workload.events(EVENTS, False)]
        by_type: dict[str, list[dict]] = {}
        for event in events:
            by_type.setdefault(event["type"], []).append(event)
        figures = {}
        for type_name, typed in sorted(by_type.items()):
            encoded = [ctx.serde.encode(e, "t")[0] for e in typed]
            figures[type_name] = {
                "events": len(typed),
                "mean_bytes": round(sum(map(len, encoded)) / len(encoded)),
                "encode_per_s": rate(lambda e: ctx.serde.encode(e, "t"), typed, repeats),
                "decode_per_s": rate(lambda v: ctx.serde.decode(v, "t"), encoded, repeats),
                "decode_unvalidated_per_s": rate(lambda v: ctx.serde.decode(v, "t", validate=False), encoded, repeats),
                "validate_per_s": rate(ctx.catalog.validate, typed, repeats),
                "mask_per_s": rate(mask_for_anyone(ctx.catalog[type_name]), typed, repeats),
            }
            print(type_name, figures[type_name])
    return write_result("serde", {"seed": seed, "repeats": repeats, "per_type": figures})
