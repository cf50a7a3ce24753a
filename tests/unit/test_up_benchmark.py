"""The per-minute figures of `python -m benchmarks up`, from two scrapes of a metrics endpoint."""

from __future__ import annotations

from benchmarks.up import bucket_bound, minute_figures, samples_by_name


def exposition(records: int, buckets: dict[str, int], lag_s: float) -> str:
    lines = [f'civicbus_stage_records_total{{stage="ingest"}} {records}',
             f'kafka_consumergroup_group_max_lag{{group="civicbus-ingest"}} 3',
             f'kafka_consumergroup_group_max_lag_seconds{{group="civicbus-ingest"}} {lag_s}',
             'civicbus_open_cases{department="police",category="noise"} 4',
             'civicbus_open_cases{department="housing",category="repair"} 2']
    for department in ("police", "housing"):  # the histogram is per department: summed by bucket
        lines += [f'civicbus_end_to_end_latency_seconds_bucket{{department="{department}",le="{le}"}} {count}'
                  for le, count in buckets.items()]
    return "\n".join(lines) + "\n"


def test_a_minute_counts_only_what_happened_in_it():
    before = samples_by_name(exposition(1000, {"0.1": 40, "1.0": 50, "+Inf": 50}, 0.2))
    after = samples_by_name(exposition(1600, {"0.1": 90, "1.0": 148, "+Inf": 150}, 0.4))
    figures = minute_figures(after, before)
    assert figures["records"] == {"ingest": 600}
    assert figures["deliveries"] == 200  # (150 - 50) for each of the two departments
    assert figures["p50_at_most_s"] == 0.1  # 100 of the minute's 200 within 0.1 s
    assert figures["p99_at_most_s"] == float("inf")  # 196 of 200 within 1 s: p99 lies past it
    assert figures["lag"] == {"civicbus-ingest": {"records": 3, "seconds": 0.4}}
    assert figures["open_cases"] == 6


def test_no_deliveries_has_no_quantile():
    assert bucket_bound({0.1: 0.0, float("inf"): 0.0}, 0.99) is None
