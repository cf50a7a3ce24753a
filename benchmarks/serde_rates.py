"""(c) Avro encode and decode rates of EventSerde (in process, no broker), per event type.

decode = wire bytes -> validated event (what ingest does with what departments publish);
decode_unvalidated = wire bytes -> event, as the fan-out reads what civicbus's own stages wrote;
encode = validated event -> wire bytes + CloudEvents headers; validate = the pydantic check alone.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Workload, benchmark_city
from benchmarks.report import write_result
from civicbus.context import BusContext

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
            }
            print(type_name, figures[type_name])
    return write_result("serde", {"seed": seed, "repeats": repeats, "per_type": figures})
