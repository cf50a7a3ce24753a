"""civicbus.quirks.SkippedBatchGuard: a partition whose offsets jump is read again once from the
first offset not seen; what the re-read finds below the jump is processed, nothing twice."""

from dataclasses import dataclass, field

from civicbus.metrics import SKIPPED_BATCHES
from civicbus.quirks import SkippedBatchGuard
from tests.unit.fake_records import FakeRecord


@dataclass
class Consumer:
    """Serves a partition's log as the broker would: from the position, leaving out `hidden` once."""

    log: list[int]
    hidden: set[int] = field(default_factory=set)
    position: int = 0
    seeks: list[int] = field(default_factory=list)

    def seek(self, tp):
        self.seeks.append(tp.offset)
        self.position = tp.offset
        self.hidden.clear()  # the batch is stored by the time the partition is read again

    def fetch(self, n=3):
        present = [o for o in self.log if o >= self.position and o not in self.hidden][:n]
        if present:
            self.position = present[-1] + 1
        return [FakeRecord("civic.dist.events", _offset=o) for o in present]


def processed_through(consumer: Consumer, guard: SkippedBatchGuard, fetches: int = 20) -> list[int]:
    processed = []
    for _ in range(fetches):
        processed += [r.offset() for r in consumer.fetch() if guard.admits(r)]
    return processed


def skipped_count() -> float:
    return SKIPPED_BATCHES.labels("fanout", "civic.dist.events")._value.get()


def test_a_batch_left_out_of_a_fetch_is_read_again_and_nothing_twice():
    consumer = Consumer(log=list(range(12)), hidden={4, 5})  # 4-5 not stored yet when 6 was fetched
    guard = SkippedBatchGuard(consumer, "fanout")
    before = skipped_count()
    assert processed_through(consumer, guard) == list(range(12))
    assert consumer.seeks == [4]
    assert skipped_count() == before + 1


def test_a_transaction_marker_costs_one_read_again_and_loses_nothing():
    consumer = Consumer(log=[0, 1, 2, 4, 5, 6, 8, 9])  # 3 and 7: markers, never records
    guard = SkippedBatchGuard(consumer, "fanout")
    before = skipped_count()
    assert processed_through(consumer, guard) == [0, 1, 2, 4, 5, 6, 8, 9]
    assert consumer.seeks == [3, 7]
    assert skipped_count() == before  # nothing was left out


def test_after_forget_a_rewind_is_not_a_jump():
    consumer = Consumer(log=list(range(6)))
    guard = SkippedBatchGuard(consumer, "fanout")
    assert processed_through(consumer, guard, fetches=1) == [0, 1, 2]
    consumer.position = 1  # the runner rewound to the committed offset
    guard.forget()
    assert processed_through(consumer, guard) == [1, 2, 3, 4, 5]
    assert consumer.seeks == []
