"""(h) What the fan-out holds per delivered id (processors.fanout.SeenIds), in process, no broker.

    python -m benchmarks memory

The fan-out remembers up to SEEN_CAPACITY ids (a million) with their first publication, so its
memory grows with traffic until that many are held; bytes per id times the capacity is where it
levels off. Each id is added as the stage adds it: the record's key as fresh bytes, the source
and content digest as fresh strings (decoded and computed per event). Beside it, in the same run,
the plain structure the fan-out used before 12-05 (an OrderedDict of key -> Publication), as the
baseline of the ratio.
"""

from __future__ import annotations

import gc
import hashlib
import random
import tracemalloc
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from benchmarks.report import median, write_result
from civicbus.ids import Publication
from processors.fanout import SEEN_CAPACITY, SeenIds

DEPARTMENTS = ("hotline12345", "citymgmt", "police", "environment", "transport", "housing", "market", "health")


def ordered_dict_baseline(capacity: int):
    """What SeenIds was before 12-05: an OrderedDict holding each Publication as given."""
    ids: OrderedDict[bytes, Publication] = OrderedDict()

    def add(event_id: bytes, publication: Publication) -> None:
        ids[event_id] = publication
        if len(ids) > capacity:
            ids.popitem(last=False)

    return ids, add


def compact(capacity: int):
    seen = SeenIds(capacity)
    return seen, seen.add


def bytes_per_id(make: Callable[[int], tuple[object, Callable]], count: int, seed: int) -> float:
    rng = random.Random(seed)
    said = [(str(uuid.UUID(int=rng.getrandbits(128), version=4)), rng.choice(DEPARTMENTS), rng.getrandbits(64)) for _ in range(count)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held, add = make(count)
        for event_id, source, content in said:
            digest = hashlib.sha256(str(content).encode()).hexdigest()[:32]
            add(event_id.encode(), Publication(source.encode().decode(), digest))  # fresh objects, as per event
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(held) == count
    return grown / count


def run(ids: int = 200_000, repeats: int = 3, seed: int = 6) -> Path:
    figures = {}
    for name, make in (("seen_ids", compact), ("ordered_dict_baseline", ordered_dict_baseline)):
        per_id = [bytes_per_id(make, ids, seed + i) for i in range(repeats)]
        figures[name] = {"bytes_per_id": median(per_id), "runs": [round(b, 1) for b in per_id],
                         "at_capacity_mb": round(median(per_id) * SEEN_CAPACITY / 1e6)}
        print(name, figures[name])
    figures["ratio_to_baseline"] = round(figures["seen_ids"]["bytes_per_id"] / figures["ordered_dict_baseline"]["bytes_per_id"], 2)
    return write_result("memory", {"ids": ids, "repeats": repeats, "seed": seed, "capacity": SEEN_CAPACITY, **figures})
