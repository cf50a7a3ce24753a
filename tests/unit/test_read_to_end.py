"""civicbus.kafka.read_to_end: every record up to where each partition ended is handed over, and a
partition empty when the read began is not waited for (a fetch wait at each start of a fresh stack)."""

from dataclasses import dataclass, field

from civicbus.kafka import read_to_end
from tests.unit.fake_records import FakeRecord


@dataclass
class Consumer:
    """Serves the records of `logs` (partition -> record count) in order, then nothing, noting each poll's wait."""

    logs: dict[int, int]
    waits: list[float] = field(default_factory=list)

    def __post_init__(self):
        self._queue = [FakeRecord("civic.test", p, o) for p, n in self.logs.items() for o in range(n)]

    def poll(self, timeout):
        self.waits.append(timeout)
        return self._queue.pop(0) if self._queue else None


def test_empty_partitions_are_read_without_a_fetch_wait():
    consumer = Consumer({0: 0, 1: 0})
    read_to_end(consumer, lambda _record: None, {("civic.test", 0): 0, ("civic.test", 1): 0})
    assert all(wait == 0 for wait in consumer.waits)


def test_every_record_of_the_other_partitions_is_handed_over():
    consumer, handed = Consumer({0: 0, 1: 3}), []
    read_to_end(consumer, lambda record: handed.append((record.partition(), record.offset())),
                {("civic.test", 0): 0, ("civic.test", 1): 3})
    assert handed == [(1, 0), (1, 1), (1, 2)]
