"""civicbus.metrics.BatchedMetrics: a stage's counts written at its commit, the same samples as
one inc() or observe() per event."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from civicbus.metrics import BatchedMetrics, observe_all

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def samples(metric) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in metric.collect() for s in family.samples
            if not s.name.endswith("_created")}


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_observe_all_gives_the_samples_of_one_observe_each(values):
    registry = CollectorRegistry()
    one_by_one = Histogram("one_seconds", "", buckets=BUCKETS, registry=registry)
    at_once = Histogram("once_seconds", "", buckets=BUCKETS, registry=registry)
    for value in values:
        one_by_one.observe(value)
    observe_all(at_once, values)
    rename = lambda found: {(name.replace("one_", "x_").replace("once_", "x_"), labels): v for (name, labels), v in found.items()}
    assert rename(samples(at_once)) == rename(samples(one_by_one))


def test_counts_reach_the_metrics_only_when_written_and_a_discarded_batch_never():
    registry = CollectorRegistry()
    delivered = Counter("delivered_total", "", ["department"], registry=registry)
    latency = Histogram("latency_seconds", "", ["department"], buckets=BUCKETS, registry=registry)
    batch = BatchedMetrics()
    batch.inc(delivered, "citymgmt")
    batch.inc(delivered, "citymgmt", amount=2)
    batch.observe(latency, "citymgmt", value=0.02)
    assert registry.get_sample_value("delivered_total", {"department": "citymgmt"}) is None
    batch.write()
    assert registry.get_sample_value("delivered_total", {"department": "citymgmt"}) == 3
    assert registry.get_sample_value("latency_seconds_bucket", {"department": "citymgmt", "le": "0.025"}) == 1
    batch.inc(delivered, "citymgmt")
    batch.discard()  # an aborted batch: replayed, and counted when it commits
    batch.write()
    assert registry.get_sample_value("delivered_total", {"department": "citymgmt"}) == 3
