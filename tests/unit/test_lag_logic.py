"""Lag arithmetic without a broker: lookup table, Burrow-style status, the monitor, the metrics."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from civicbus.lag.exporter import MAX_POLLING_SHARE, LagReport, pause_after, report_metrics
from civicbus.lag.lookup import LookupTable, Point
from civicbus.lag.monitor import LagMonitor
from civicbus.lag.offsets import GroupOffsets, Snapshot
from civicbus.lag.status import Sample, Status, partition_status, worst
from civicbus.lag.table import format_table


def table_of(*points: tuple[int, float]) -> LookupTable:
    table = LookupTable(limit=10)
    for offset, t in points:
        table.add(Point(offset, t))
    return table


def test_time_of_interpolates_between_the_points_around_the_offset():
    table = table_of((0, 100.0), (100, 110.0), (300, 120.0))
    assert table.time_of(50) == pytest.approx(105.0)
    assert table.time_of(200) == pytest.approx(115.0)
    assert table.lag_seconds(200, now=130.0) == pytest.approx(15.0)


def test_time_of_extrapolates_from_the_whole_trend_below_the_oldest_point():
    table = table_of((100, 10.0), (200, 20.0))
    assert table.time_of(50) == pytest.approx(5.0)


def test_caught_up_is_zero_and_too_few_points_is_nan():
    assert table_of((7, 1.0)).lag_seconds(7, now=50.0) == 0.0
    assert math.isnan(table_of((7, 1.0)).lag_seconds(3, now=50.0))
    assert math.isnan(LookupTable().lag_seconds(0, now=1.0))


def test_a_flat_line_keeps_its_start_so_an_offset_waiting_on_it_ages():
    table = table_of((10, 0.0), (20, 10.0), (20, 20.0), (20, 30.0), (20, 40.0))
    assert [p.offset for p in table.points] == [10, 20, 20]
    assert table.points[-1].time == 40.0
    assert table.lag_seconds(15, now=40.0) == pytest.approx(35.0)
    # the partition idle since the first sample: the lag is at least since then
    assert table_of((5, 0.0), (5, 10.0)).lag_seconds(2, now=10.0) == pytest.approx(10.0)


def test_out_of_order_and_decreasing_points_are_ignored():
    table = table_of((10, 5.0), (20, 4.0), (5, 6.0))
    assert [(p.offset, p.time) for p in table.points] == [(10, 5.0)]


@given(st.lists(st.tuples(st.integers(0, 10_000), st.floats(0, 1e6)), min_size=1, max_size=30), st.integers(0, 20_000))
def test_time_lag_is_never_negative(points, committed):
    table = LookupTable(limit=8)
    for offset, t in sorted(points, key=lambda p: p[1]):
        table.add(Point(offset, t))
    now = max(t for _, t in points)
    lag = table.lag_seconds(committed, now)
    assert math.isnan(lag) or lag >= 0.0


def samples(*pairs: tuple[int, int]) -> list[Sample]:
    return [Sample(float(i), committed, lag) for i, (committed, lag) in enumerate(pairs)]


@pytest.mark.parametrize(
    "history, active, expected",
    [
        (((5, 0), (5, 3), (5, 6)), True, Status.OK),  # lag was zero inside the window
        (((1, 5), (2, 6), (3, 7)), True, Status.WARNING),  # consuming, but falling further behind
        (((1, 5), (4, 3), (6, 4)), True, Status.OK),  # lag went down somewhere: keeping up
        (((5, 2), (5, 4), (5, 9)), True, Status.STALLED),  # members there, offset frozen
        (((5, 2), (5, 4), (5, 9)), False, Status.STOPPED),  # nobody consuming
        (((9, 2), (4, 7), (5, 6)), True, Status.ERROR),  # the offset went back
        (((5, 2), (5, 4)), False, Status.OK),  # window not full yet: no judgement
        (((5, 2), (5, 4), (5, 0)), False, Status.OK),  # caught up now
    ],
)
def test_partition_status_follows_burrows_rules(history, active, expected):
    assert partition_status(samples(*history), window=3, group_active=active) is expected


def test_a_window_of_one_sample_has_no_evidence_of_a_stall():
    # `civicbus lag --samples 1`: one poll cannot show an offset standing still
    assert partition_status(samples((3, 10)), window=1, group_active=True) is Status.OK
    assert partition_status(samples((3, 10), (3, 10)), window=1, group_active=True) is Status.STALLED


def test_committed_offset_below_the_log_start_is_an_error():
    assert partition_status(samples((3, 10)), window=3, group_active=True, log_start=5) is Status.ERROR


def test_group_status_is_its_worst_partition():
    assert worst([Status.OK, Status.STOPPED, Status.WARNING]) is Status.STOPPED
    assert worst([]) is Status.OK


def snapshot(t: float, latest: dict, committed: dict, active: bool = True, group: str = "g") -> Snapshot:
    groups = (GroupOffsets(group, "STABLE" if active else "EMPTY", active, committed),) if committed is not None else ()
    return Snapshot(t, groups, latest, {tp: 0 for tp in latest})


def test_monitor_lag_is_never_negative_when_the_end_offset_is_understated():
    groups = LagMonitor(window=3).update(snapshot(1.0, {("t", 0): 5}, {("t", 0): 8}))
    partition = groups[0].partitions[0]
    assert (partition.lag, partition.lag_seconds) == (0.0, 0.0)


def test_monitor_reports_time_lag_max_and_sum_and_detects_a_stopped_group():
    monitor = LagMonitor(window=3)
    for i, end in enumerate((20, 30, 40)):
        groups = monitor.update(snapshot(100.0 + 10 * i, {("t", 0): end, ("t", 1): end}, {("t", 0): 10, ("t", 1): end}, active=False))
    (group,) = groups
    assert [p.lag for p in group.partitions] == [30.0, 0.0]
    assert group.partitions[0].lag_seconds == pytest.approx(30.0)  # the trend puts offset 10 at t=90; now is t=120
    assert (group.max_lag, group.sum_lag, group.max_lag_seconds) == (30.0, 30.0, pytest.approx(30.0))
    assert group.status is Status.STOPPED


def test_monitor_with_a_window_of_one_reads_ok_on_its_only_poll_then_judges_over_two():
    monitor = LagMonitor(window=1)  # `civicbus lag --samples 1`
    (group,) = monitor.update(snapshot(1.0, {("t", 0): 9, ("t", 1): 4}, {("t", 0): 5, ("t", 1): 4}))
    assert group.status is Status.OK and [p.status for p in group.partitions] == [Status.OK, Status.OK]
    (group,) = monitor.update(snapshot(2.0, {("t", 0): 9, ("t", 1): 4}, {("t", 0): 5, ("t", 1): 4}))
    assert group.status is Status.STALLED


def test_uncommitted_partitions_are_nan_and_left_out_of_max_and_sum():
    (group,) = LagMonitor().update(snapshot(1.0, {("t", 0): 5, ("t", 1): 9}, {("t", 0): None, ("t", 1): 4}))
    assert math.isnan(group.partitions[0].lag)
    assert (group.max_lag, group.sum_lag) == (5.0, 5.0)


def test_a_deleted_group_leaves_no_state_and_no_series():
    monitor = LagMonitor(window=2)
    monitor.update(snapshot(1.0, {("t", 0): 5}, {("t", 0): 1}))
    assert monitor.update(snapshot(2.0, {}, None)) == ()
    assert monitor._samples == {} and monitor._tables == {}


def exposition(report: LagReport) -> str:
    registry = CollectorRegistry()

    class Fixed:
        def collect(self):
            return report_metrics(report)

    registry.register(Fixed())
    return generate_latest(registry).decode()


def test_metrics_use_kafka_lag_exporter_names_and_a_down_exporter_exports_no_lag():
    groups = LagMonitor(window=2).update(snapshot(1.0, {("civic.feed.police", 0): 12}, {("civic.feed.police", 0): 4}))
    text = exposition(LagReport(1.0, True, 0.01, groups))
    for line in (
        'kafka_consumergroup_group_lag{group="g",partition="0",topic="civic.feed.police"} 8.0',
        'kafka_consumergroup_group_max_lag{group="g"} 8.0',
        'kafka_consumergroup_group_sum_lag{group="g"} 8.0',
        'civicbus_consumergroup_status{group="g",status="OK"} 1.0',
        'civicbus_consumergroup_state{group="g",state="STABLE"} 1.0',
        "civicbus_lag_exporter_up 1.0",
    ):
        assert line in text
    assert "kafka_consumergroup_group_lag_seconds{" in text
    down = exposition(LagReport(2.0, False, 5.0, error="timed out"))
    assert "civicbus_lag_exporter_up 0.0" in down and "kafka_consumergroup_group_lag{" not in down
    assert format_table(LagReport(2.0, False, 5.0, error="timed out")) == "Kafka unreachable: timed out"


def test_table_has_a_row_per_partition():
    groups = LagMonitor(window=2).update(snapshot(1.0, {("t", 0): 12, ("t", 1): 3}, {("t", 0): 4, ("t", 1): 3}))
    lines = format_table(LagReport(1.0, True, 0.01, groups)).splitlines()
    assert lines[0].split() == ["GROUP", "STATE", "STATUS", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG_SECONDS"]
    assert lines[1].split()[:8] == ["g", "STABLE", "OK", "t", "0", "4", "12", "8"]
    assert lines[2].split() == ["g", "STABLE", "OK", "t", "1", "3", "3", "0", "0.0"]


def test_polls_keep_their_interval_until_a_slow_one_would_take_more_than_its_share_of_the_time():
    assert pause_after(0.05, 2.0) == pytest.approx(1.95)  # a healthy broker: every 2 s
    assert pause_after(3.0, 2.0) == pytest.approx(27.0)  # a slowed one: polling stays at a tenth
    for poll_s in (0.01, 0.1, 0.2):
        assert poll_s + pause_after(poll_s, 2.0) == pytest.approx(2.0)
    for poll_s in (0.5, 1.0, 5.0):
        assert poll_s / (poll_s + pause_after(poll_s, 2.0)) == pytest.approx(MAX_POLLING_SHARE)
