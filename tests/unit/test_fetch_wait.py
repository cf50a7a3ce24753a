"""The fetch wait a reader needs on the embedded broker (civicbus.quirks, 10): pure parts."""

from __future__ import annotations

from confluent_kafka import TopicPartition

import civicbus.quirks as quirks
from civicbus.quirks import FETCH_WAIT_MOST_MS, ListingClock, ListingWait, fetch_wait_for
from civicbus.settings import Settings


def test_the_wait_covers_three_listings_doubling_from_the_least_and_is_bounded():
    assert fetch_wait_for(0.0, 10) == 10
    assert fetch_wait_for(0.003, 10) == 10  # 9 ms of listings fit in 10
    assert fetch_wait_for(0.004, 10) == 20
    assert fetch_wait_for(0.030, 10) == 160  # 90 ms of listings: 10, 20, 40, 80, 160
    assert fetch_wait_for(5.0, 10) == FETCH_WAIT_MOST_MS
    assert fetch_wait_for(0.0, 50) == 50  # never below the configured wait
    assert fetch_wait_for(5.0, 2000) == 2000


def test_the_wait_rises_with_the_median_listing_and_falls_only_when_every_recent_one_allows_a_quarter():
    listing = ListingWait(10)
    timings = [0.001, 0.050, 0.002, 0.030, 0.030, 0.030, 0.004, 0.004, 0.004, 0.004, 0.001, 0.001, 0.001, 0.001]
    waits = [listing.timed(seconds) for seconds in timings]
    # from the third timing: medians of the last five 2, 16, 30, 30, 30, 30, 4, ... ms, so one slow
    # answer moves nothing; it falls only once the slowest of the last five, 4 ms, asks for 20 ms
    assert waits == [10, 10, 10, 80, 160, 160, 160, 160, 160, 160, 20, 20, 20, 20]


def test_forgotten_timings_count_for_nothing_and_the_wait_stays_until_enough_new_ones():
    listing = ListingWait(10)
    for _ in range(3):
        listing.timed(0.030)
    listing.forget()
    assert listing.timed(0.001) == 160 and listing.timed(0.001) == 160
    assert listing.timed(0.001) == 10


def test_the_clock_keeps_the_timings_of_partitions_still_watched_and_forgets_the_others(monkeypatch):
    clock = ListingClock(Settings(bootstrap="127.0.0.1:1"), "127.0.0.1:1")
    monkeypatch.setattr(quirks, "listing_seconds", lambda admin, partitions: {0: 0.001, 1: 0.030}[partitions[0].partition])
    clock.watch([TopicPartition("a", 0), TopicPartition("a", 1)])
    clock.sample()
    clock.sample()
    clock.watch([TopicPartition("a", 1, 500), TopicPartition("a", 0, 7)])  # a new reader, the same partitions
    clock.sample()
    assert clock.wait_ms == 160  # three timings of the slow one: the ones before the swap counted
    clock.watch([TopicPartition("a", 0)])  # the slow one revoked
    clock.sample()
    assert clock.wait_ms == 10  # its timings forgotten, the fast one's four kept: it falls at once


def test_one_slow_answer_a_round_from_any_partition_does_not_raise_the_wait(monkeypatch):
    """A busy broker answers one ListOffsets of many slowly now and then: each partition's
    median, not the slowest answer of each round, says what its listing costs."""
    clock = ListingClock(Settings(bootstrap="127.0.0.1:1"), "127.0.0.1:1")
    clock.watch([TopicPartition("in", p) for p in range(20)])
    slow_one = {"partition": 0}

    def listing(admin, partitions):
        return 0.060 if partitions[0].partition == slow_one["partition"] else 0.005

    monkeypatch.setattr(quirks, "listing_seconds", listing)
    for round_ in range(10):
        slow_one["partition"] = round_ * 7 % 20  # another partition each round
        clock.sample()
    assert clock.wait_ms == 20  # 3 x 5 ms; the slowest answer of each round (60 ms) would ask 320


def test_the_clock_times_each_partition_alone_and_covers_the_slowest(monkeypatch):
    clock = ListingClock(Settings(bootstrap="127.0.0.1:1"), "127.0.0.1:1")
    clock.watch([TopicPartition("in", p) for p in range(3)])
    asked: list[list[int]] = []

    def listing(admin, partitions):
        asked.append([tp.partition for tp in partitions])
        return {0: 0.005, 1: 0.020, 2: 0.010}[partitions[0].partition]

    monkeypatch.setattr(quirks, "listing_seconds", listing)
    for _ in range(3):
        clock.sample()
    assert asked == [[0], [1], [2]] * 3
    assert clock.wait_ms == 80  # 3 x 20 ms, not 3 x the 35 ms of all three together (160)
