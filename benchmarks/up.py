"""The stack as a user runs it: `civicbus up --simulate RATE`, its own metrics endpoint scraped
every minute for MINUTES, as an operator's Prometheus would, then SIGTERM.

    python -m benchmarks up --rate 20 --minutes 25

This is how issue 10 first measured the case stage's collapse, and what `soak` leaves out: the
gateway, the registry and the lag exporter run beside the stages, and the lag is what the
exporter reports (kafka_consumergroup_group_max_lag and ..._seconds per group), not a probe of
the benchmark's own. No department reads its feed here (`soak` adds a stock reader per feed).
Per minute: each group's lag in records and seconds, the records each stage processed, the
bounds of the buckets holding p50 and p99 of civicbus_end_to_end_latency_seconds (publish ->
the fan-out's write to a feed) over the minute's deliveries, open cases, and the CPU seconds and
RSS of every process, the broker included. Then how long `civicbus up` took to stop on SIGTERM
and how it exited. Results: benchmarks/results/up-<rate>.json, written every minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import usage
from benchmarks.report import write_result
from civicbus.broker import free_port

LAG_TARGET_S = 5.0
P99_TARGET_S = 1.0
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def scrape(url: str) -> dict[str, list]:
    """The endpoint's samples, by metric name."""
    return samples_by_name(urllib.request.urlopen(url, timeout=10).read().decode())


def samples_by_name(text: str) -> dict[str, list]:
    """The samples of a Prometheus text exposition, by metric name."""
    samples: dict[str, list] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append(sample)
    return samples


def up_processes(up: subprocess.Popen) -> dict[str, psutil.Process]:
    """`civicbus up` and everything it started, named by role ("broker", "process ingest", ...)."""
    found = {"up": psutil.Process(up.pid)}
    for child in found["up"].children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        if "tansu" in " ".join(command[:1]):
            found["broker"] = child
        elif "civicbus.cli" in command:
            arguments = command[command.index("civicbus.cli") + 1:]
            first_option = next((n for n, argument in enumerate(arguments) if argument.startswith("-")), len(arguments))
            found[" ".join(arguments[:first_option])] = child  # "process ingest", "gateway", "simulate"
    return found


def bucket_bound(buckets: dict[float, float], share: float) -> float | None:
    """The upper bound of the histogram bucket that holds the `share` quantile (None: no data)."""
    total = buckets.get(float("inf"), 0.0)
    return next((bound for bound in sorted(buckets) if total and buckets[bound] >= share * total), None)


def minute_figures(samples: dict[str, list], before: dict[str, list]) -> dict:
    """A minute's figures from its last scrape: lags and open cases as they stand, records and
    deliveries since the scrape `before`."""
    lag: dict[str, dict[str, float]] = defaultdict(dict)
    for sample in samples["kafka_consumergroup_group_max_lag"]:
        lag[sample.labels["group"]]["records"] = sample.value
    for sample in samples["kafka_consumergroup_group_max_lag_seconds"]:
        lag[sample.labels["group"]]["seconds"] = round(sample.value, 2)

    def summed(source: dict[str, list], name: str, label: str) -> dict:
        totals: dict = defaultdict(float)
        for sample in source[name]:
            totals[sample.labels[label]] += sample.value
        return totals

    records, records_before = summed(samples, "civicbus_stage_records_total", "stage"), summed(before, "civicbus_stage_records_total", "stage")
    latency = summed(samples, "civicbus_end_to_end_latency_seconds_bucket", "le")
    latency_before = summed(before, "civicbus_end_to_end_latency_seconds_bucket", "le")
    delivered = {float(le): count - latency_before.get(le, 0.0) for le, count in latency.items()}
    return {
        "lag": dict(lag),
        "records": {stage: count - records_before.get(stage, 0.0) for stage, count in records.items()},
        "deliveries": delivered.get(float("inf"), 0.0),
        "p50_at_most_s": bucket_bound(delivered, 0.50),
        "p99_at_most_s": bucket_bound(delivered, 0.99),
        "open_cases": sum(sample.value for sample in samples["civicbus_open_cases"]),
    }


def run(rate: float, minutes: int) -> Path:
    ports = {option: free_port() for option in ("--broker-port", "--http-port", "--metrics-port", "--registry-port")}
    metrics_url = f"http://127.0.0.1:{ports['--metrics-port']}/metrics"
    with tempfile.TemporaryDirectory(prefix="civicbus-up-") as work:
        command = [sys.executable, "-m", "civicbus.cli", "up", "--simulate", str(rate),
                   *(str(part) for option_port in ports.items() for part in option_port)]
        with open(Path(work) / "up.log", "wb") as log:
            up = subprocess.Popen(command, cwd=work, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            figures = measure(up, metrics_url, rate, minutes)
        finally:
            stopped = stop(up)
    figures["stop"] = stopped
    print(f"civicbus up stopped in {stopped['seconds']} s, exit code {stopped['exit_code']}")
    return write_result(f"up-{int(rate)}", figures)


def stop(up: subprocess.Popen) -> dict:
    """SIGTERM to `civicbus up` (and, past STOP_TIMEOUT_S, SIGKILL to its whole group): how long it
    took and how it exited (None: killed)."""
    started = time.monotonic()
    os.killpg(up.pid, signal.SIGTERM)
    try:
        exit_code = up.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(up.pid, signal.SIGKILL)
        up.wait()
        exit_code = None
    return {"seconds": round(time.monotonic() - started, 1), "exit_code": exit_code}


def measure(up: subprocess.Popen, metrics_url: str, rate: float, minutes: int) -> dict:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            before = scrape(metrics_url)
            break
        except OSError:
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`civicbus up` did not serve {metrics_url} (exit code {up.poll()})") from None
            time.sleep(1)
    procs = up_processes(up)
    cpu_before, started = usage(procs), time.monotonic()
    figures: dict = {"rate_events_per_s": rate, "minutes": minutes,
                     "targets": {"lag_s": LAG_TARGET_S, "p99_publish_to_feed_write_s": P99_TARGET_S}, "per_minute": []}
    for minute in range(1, minutes + 1):
        time.sleep(max(0.0, started + minute * 60 - time.monotonic()))
        samples, cpu = scrape(metrics_url), usage(procs)
        row = {"minute": minute, **minute_figures(samples, before),
               "processes": {name: {"rss_mb": cpu[name]["rss_mb"], "cpu_s": round(cpu[name]["cpu_s"] - cpu_before[name]["cpu_s"], 1)}
                             for name in cpu if None not in (cpu[name]["cpu_s"], cpu_before[name]["cpu_s"])}}
        row["held"] = (all(group.get("seconds", float("inf")) < LAG_TARGET_S for group in row["lag"].values())
                       and row["p99_at_most_s"] is not None and row["p99_at_most_s"] <= P99_TARGET_S)
        figures["per_minute"].append(row)
        figures["minutes_held"] = sum(r["held"] for r in figures["per_minute"])
        write_result(f"up-{int(rate)}", figures)
        lags = {group: (values.get("records"), values.get("seconds")) for group, values in row["lag"].items()}
        print(f"minute {minute}: lag {lags}, p99 <= {row['p99_at_most_s']} s, broker "
              f"{row['processes'].get('broker', {}).get('cpu_s')} s of CPU", flush=True)
        before, cpu_before = samples, cpu
    return figures
