"""The disk spool alone: framing, a torn tail after a crash, the acknowledged cursor, the lock."""

import pytest

from producers.spool import DiskSpool, SpoolError, encode_record


def frames(n, start=0):
    return [encode_record(f"id-{i}".encode(), f"value-{i}".encode() * 3, [("ce_id", f"id-{i}".encode()), ("x", b"")]) for i in range(start, start + n)]


def test_records_come_back_in_order_with_key_value_and_headers(tmp_path):
    spool = DiskSpool(tmp_path, "citymgmt")
    ends = spool.append(frames(3))
    records = spool.read_from(0, 10)
    assert [r.key for r in records] == [b"id-0", b"id-1", b"id-2"]
    assert records[1].value == b"value-1" * 3 and records[1].headers == [("ce_id", b"id-1"), ("x", b"")]
    assert [r.end for r in records] == ends and records[1].start == ends[0]
    assert [r.key for r in spool.read_from(ends[0], 1)] == [b"id-1"]


def test_reopened_spool_resumes_after_the_acknowledged_prefix(tmp_path):
    spool = DiskSpool(tmp_path, "citymgmt")
    ends = spool.append(frames(4))
    spool.acknowledge(ends[1])
    spool.close()
    reopened = DiskSpool(tmp_path, "citymgmt")
    assert [r.key for r in reopened.read_from(reopened.acked, 10)] == [b"id-2", b"id-3"]
    assert reopened.pending_bytes == ends[3] - ends[1]


def test_a_torn_frame_at_the_end_is_cut_off_and_appending_continues(tmp_path):
    spool = DiskSpool(tmp_path, "citymgmt")
    spool.append(frames(2))
    spool.close()
    with open(tmp_path / "citymgmt.spool", "ab") as f:  # a crash in the middle of the third append
        f.write(frames(1, start=2)[0][:-5])
    reopened = DiskSpool(tmp_path, "citymgmt")
    reopened.append(frames(1, start=3))
    assert [r.key for r in reopened.read_from(0, 10)] == [b"id-0", b"id-1", b"id-3"]


def test_a_fully_acknowledged_spool_is_emptied_and_starts_again_at_zero(tmp_path):
    spool = DiskSpool(tmp_path, "citymgmt")
    ends = spool.append(frames(2))
    spool.acknowledge(ends[-1])
    assert (spool.end, spool.acked, spool.pending_bytes) == (0, 0, 0)
    assert (tmp_path / "citymgmt.spool").stat().st_size == 0
    spool.append(frames(1, start=5))
    spool.close()
    assert [r.key for r in DiskSpool(tmp_path, "citymgmt").read_from(0, 10)] == [b"id-5"]


def test_a_stale_cursor_beyond_the_file_is_not_trusted(tmp_path):
    (tmp_path / "citymgmt.cursor").write_text("999999")
    spool = DiskSpool(tmp_path, "citymgmt")
    assert spool.acked == 0
    spool.append(frames(1))
    assert spool.pending_bytes > 0


def test_one_process_at_a_time(tmp_path):
    holder = DiskSpool(tmp_path, "citymgmt")
    with pytest.raises(SpoolError, match="in use"):
        DiskSpool(tmp_path, "citymgmt")
    DiskSpool(tmp_path, "police").close()  # another department's spool is its own
    holder.close()
    DiskSpool(tmp_path, "citymgmt").close()
