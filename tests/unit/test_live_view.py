"""The live view's frame: rates per department, lag per group, overdue cases."""

from civicbus.lag.exporter import LagReport
from civicbus.lag.monitor import LagMonitor
from civicbus.lag.offsets import GroupOffsets, Snapshot
from civicbus.live import Figures, format_frame, redraw_over


def test_frame_shows_rates_lag_and_overdue_cases():
    snapshot = Snapshot(1.0, (GroupOffsets("civicbus-fanout", "STABLE", True, {("civic.dist.events", 0): 7}),),
                        {("civic.dist.events", 0): 10}, {("civic.dist.events", 0): 0})
    figures = Figures(
        published={"citymgmt": 4.0}, delivered={"citymgmt": 2.5, "police": 1.0},
        overdue={"citymgmt": 2.0, "police": 0.0}, open_cases=9.0, dead_letters=3.0,
        lag=LagReport(1.0, True, 0.01, LagMonitor().update(snapshot)), fetch_waits={"ingest": 0.01, "cases": 0.08},
    )
    lines = format_frame("12:00:00", figures).splitlines()
    assert "stage fetch waits: cases 80 ms, ingest 10 ms" in lines
    assert [line.split() for line in lines if line.startswith(("citymgmt", "police"))] == [
        ["citymgmt", "4.0", "2.5"], ["police", "0.0", "1.0"]]
    assert ["civicbus-fanout", "OK", "3", "-"] in [line.split() for line in lines]
    assert lines[-1].split() == "overdue cases: citymgmt 2 open cases: 9 dead letters so far: 3".split()


def test_frame_says_when_lag_is_unknown_and_redraw_moves_over_the_previous_frame():
    figures = Figures({}, {}, {}, 0.0, 0.0, LagReport(1.0, False, 2.0, error="timed out"))
    text = format_frame("12:00:00", figures)
    assert "(no events yet)" in text and "lag unknown: timed out" in text
    assert redraw_over(0) == "" and redraw_over(12) == "\x1b[12F\x1b[J"


def test_frame_warns_when_the_broker_slows_down():
    quick = Figures({}, {}, {}, 0.0, 0.0, LagReport(1.0, True, 0.1, (), list_offsets_s=0.05))
    slow = Figures({}, {}, {}, 0.0, 0.0, LagReport(1.0, True, 2.5, (), list_offsets_s=2.1))
    assert "broker slow" not in format_frame("12:00:00", quick)
    assert "WARNING broker slow: 2.1 s to answer offsets" in format_frame("12:00:00", slow)
