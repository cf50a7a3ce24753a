"""The publisher's durable spool: events accepted on local disk until the broker acknowledges them.

The embedded broker keeps data in memory only and any broker can be unreachable for a while, so
a department must be able to hand an event over and be sure it is not lost, whether the broker
is down, slow, or the publishing process itself dies. The spool is a write-ahead log, one
append-only file per department: `append` writes and fsyncs before it returns, a sender sends
the records in order, and the acknowledged prefix is recorded in a cursor file beside it. A
restarted process opens the same file and resends everything after the cursor. Resending an
event the broker did receive is harmless: ids are stable, the pipeline drops repeats by id.

File format (`<name>.spool`): frames of `>II` (payload length, CRC-32 of payload) + payload,
payload = `>I` key length, key, `>I` value length, value, `>H` header count, then per header
`>H` name length, name, `>I` value length, value. A torn frame at the end (a crash inside
`append`) was never acknowledged to the caller and is cut off on open. `<name>.cursor` holds
the byte offset up to which every frame was acknowledged.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, Producer

log = logging.getLogger(__name__)

_FRAME = struct.Struct(">II")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


class SpoolError(RuntimeError):
    """The spool cannot be opened (another process holds it) or is damaged beyond its tail."""


@dataclass(frozen=True)
class SpooledRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    start: int  # byte offset of the frame in the spool file
    end: int  # byte offset just after it


def encode_record(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> bytes:
    parts = [_U32.pack(len(key)), key, _U32.pack(len(value)), value, _U16.pack(len(headers))]
    for name, header_value in headers:
        raw_name = name.encode()
        parts += [_U16.pack(len(raw_name)), raw_name, _U32.pack(len(header_value)), header_value]
    payload = b"".join(parts)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    view = memoryview(payload)
    pos = 0

    def take(size: int) -> bytes:
        nonlocal pos
        chunk = bytes(view[pos : pos + size])
        pos += size
        return chunk

    key = take(_U32.unpack(take(4))[0])
    value = take(_U32.unpack(take(4))[0])
    headers = []
    for _ in range(_U16.unpack(take(2))[0]):
        name = take(_U16.unpack(take(2))[0]).decode()
        headers.append((name, take(_U32.unpack(take(4))[0])))
    return key, value, headers


class DiskSpool:
    """One department's spool: append durably, read unacknowledged records in order, acknowledge.

    Not thread-safe by itself; the Publisher serialises access. One process at a time: the file
    is locked (flock) while open, so two publishers never interleave one spool.
    """

    def __init__(self, directory: Path, name: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.spool"
        self.cursor_path = directory / f"{name}.cursor"
        self._file = open(self.path, "a+b")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise SpoolError(f"spool {self.path} is in use by another process") from None
        self.acked = min(self._read_cursor(), self._valid_end())
        self.end = self._valid_end()
        self._file.truncate(self.end)  # a torn tail frame: never acknowledged to its caller

    def _read_cursor(self) -> int:
        try:
            return int(self.cursor_path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _valid_end(self) -> int:
        """Offset after the last complete, intact frame."""
        self._file.seek(0)
        data = self._file.read()
        pos = 0
        while pos + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, pos)
            payload = data[pos + _FRAME.size : pos + _FRAME.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            pos += _FRAME.size + length
        return pos

    def append(self, frames: list[bytes]) -> list[int]:
        """Write encoded frames (see `encode_record`) and fsync; return each frame's end offset."""
        self._file.seek(0, os.SEEK_END)
        ends = []
        for frame in frames:
            self.end += len(frame)
            ends.append(self.end)
        self._file.write(b"".join(frames))
        self._file.flush()
        os.fsync(self._file.fileno())
        return ends

    def read_from(self, offset: int, limit: int) -> list[SpooledRecord]:
        """Up to `limit` records starting at byte `offset` (a frame boundary)."""
        self._file.seek(offset)
        records = []
        while len(records) < limit and offset < self.end:
            length, _crc = _FRAME.unpack(self._file.read(_FRAME.size))
            key, value, headers = decode_payload(self._file.read(length))
            start, offset = offset, offset + _FRAME.size + length
            records.append(SpooledRecord(key, value, headers, start, offset))
        return records

    def acknowledge(self, offset: int) -> None:
        """Every frame before `offset` is acknowledged; empty the file once all of it is (offsets
        then start again at 0: a caller holding offsets must check `end`)."""
        if offset <= self.acked:
            return
        self.acked = offset
        if self.acked == self.end:
            # Cursor to 0 *before* truncating: a crash in between resends (harmless), never skips.
            self._write_cursor(0)
            self._file.truncate(0)
            self.acked = self.end = 0
        else:
            self._write_cursor(self.acked)

    def _write_cursor(self, offset: int) -> None:
        tmp = self.cursor_path.with_suffix(".cursor.tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.cursor_path)

    @property
    def pending_bytes(self) -> int:
        return self.end - self.acked

    def close(self) -> None:
        self._file.close()  # releases the lock


class SpoolSender:
    """Drains a DiskSpool through a producer in a background thread, in order, acknowledging as
    the broker acks.

    Give it an idempotent producer without a message timeout (message.timeout.ms=0): librdkafka
    then retries an unreachable broker for as long as it takes, in order. A delivery that fails
    anyway (a permanent error) waits until nothing is in flight, then everything from the first
    unacknowledged record is resent after a pause."""

    def __init__(self, spool: DiskSpool, make_producer: Callable[[], Producer], topic: str, window: int = 5000, retry_backoff_s: float = 1.0):
        self.spool = spool
        self.topic = topic
        self.window = window
        self.retry_backoff_s = retry_backoff_s
        self._make_producer = make_producer
        self._producer = make_producer()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"spool-sender-{topic}", daemon=True)
        self._thread.start()

    def append(self, frames: list[bytes]) -> None:
        with self._lock:
            self.spool.append(frames)
        self._wake.set()

    def pending_bytes(self) -> int:
        with self._lock:
            return self.spool.pending_bytes

    def drain(self, timeout_s: float) -> bool:
        """Wait until every spooled record is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.pending_bytes():
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout_s: float) -> None:
        """Deliver what can be delivered within `timeout_s`; the rest stays spooled for next time."""
        self.drain(timeout_s)
        self._stop.set()
        self._wake.set()
        self._thread.join()
        with self._lock:
            self.spool.close()

    def _run(self) -> None:
        next_offset = self.spool.acked
        in_flight: deque[int] = deque()  # end offsets, in send order
        acked: set[int] = set()
        failures: list[KafkaError] = []

        def on_delivery(end: int, err: KafkaError | None, _msg) -> None:
            (failures.append(err) if err is not None else acked.add(end))

        def advance_acknowledged() -> None:
            nonlocal next_offset
            acked_up_to = None
            while in_flight and in_flight[0] in acked:
                acked.discard(in_flight[0])
                acked_up_to = in_flight.popleft()
            if acked_up_to is not None:
                with self._lock:
                    self.spool.acknowledge(acked_up_to)
                    next_offset = min(next_offset, self.spool.end)  # 0 once the spool emptied

        while not self._stop.is_set():
            self._producer.poll(0.01 if in_flight else 0)
            advance_acknowledged()
            if failures:
                if len(self._producer) == 0:  # every delivery report is in: resend in order
                    log.warning("spool %s: %d deliveries failed (%s); resending", self.topic, len(failures), failures[0])
                    if any(f.fatal() for f in failures):
                        self._producer = self._make_producer()
                    failures.clear()
                    in_flight.clear()
                    acked.clear()
                    next_offset = self.spool.acked
                    self._stop.wait(self.retry_backoff_s)
                continue
            records: list[SpooledRecord] = []
            if len(in_flight) < self.window:
                with self._lock:
                    records = self.spool.read_from(next_offset, self.window - len(in_flight))
            for record in records:
                self._producer.produce(
                    self.topic, record.value, record.key, headers=record.headers, on_delivery=functools.partial(on_delivery, record.end)
                )
                in_flight.append(record.end)
                next_offset = record.end
            if not records and not in_flight:
                self._wake.wait(0.1)
                self._wake.clear()
        self._producer.flush(1.0)
        advance_acknowledged()
