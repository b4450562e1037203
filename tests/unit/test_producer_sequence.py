"""SequenceTracker: nothing produced twice, every skipped trade id known as pending."""

from __future__ import annotations

import random

import pytest

from producer_app.sequence import SequenceTracker

pytestmark = pytest.mark.unit


def _accept_all(tracker: SequenceTracker, ids: list[int], symbol: str = "BTCUSDT") -> list[int]:
    return [i for i in ids if tracker.accept(symbol, "trade", i, i * 1000)]


def test_contiguous_ids_are_accepted_once() -> None:
    tracker = SequenceTracker()
    assert _accept_all(tracker, [1, 2, 3, 3, 2, 4]) == [1, 2, 3, 4]
    assert tracker.pending_ranges("BTCUSDT") == []
    assert tracker.high_water_mark("BTCUSDT") == 4


def test_jump_opens_a_range_that_late_ids_fill() -> None:
    tracker = SequenceTracker(gap_grace_s=0)
    assert _accept_all(tracker, [10, 11, 15]) == [10, 11, 15]
    assert tracker.pending_ranges("BTCUSDT") == [(12, 14)]
    assert tracker.gaps_detected == 1
    assert _accept_all(tracker, [13, 13, 12, 14, 14, 11]) == [13, 12, 14]
    assert tracker.pending_ranges("BTCUSDT") == []


def test_overlapping_connections_produce_every_id_exactly_once() -> None:
    # Two connections deliver the same ids, interleaved and with different lags (a rotation).
    rng = random.Random(7)  # noqa: S311 - test data
    ids = list(range(1000, 3000))
    old = ids[:1500]
    new = ids[1200:]
    merged: list[int] = []
    a, b = 0, 0
    while a < len(old) or b < len(new):
        if b >= len(new) or (a < len(old) and rng.random() < 0.5):
            merged.append(old[a])
            a += 1
        else:
            merged.append(new[b])
            b += 1
    tracker = SequenceTracker()
    produced = _accept_all(tracker, merged)
    assert sorted(produced) == ids and len(produced) == len(set(produced))
    assert tracker.pending_ranges("BTCUSDT") == []


def test_symbols_and_streams_are_independent() -> None:
    tracker = SequenceTracker()
    assert tracker.accept("BTCUSDT", "trade", 5, 1)
    assert tracker.accept("ETHUSDT", "trade", 5, 1)
    assert tracker.accept("BTCUSDT", "miniTicker", 5, 1)
    assert not tracker.accept("BTCUSDT", "miniTicker", 5, 1)
    assert not tracker.accept("BTCUSDT", "miniTicker", 4, 1)
    assert tracker.accept("BTCUSDT", "miniTicker", 1000, 1)  # ticker jumps are not gaps
    assert tracker.pending_ranges("BTCUSDT") == []


def test_reconnect_window_closes_at_the_next_id() -> None:
    tracker = SequenceTracker(gap_grace_s=0)
    _accept_all(tracker, [1, 2, 3])
    tracker.open_window("BTCUSDT")
    assert tracker.pending_ranges("BTCUSDT") == [(4, None)]
    assert _accept_all(tracker, [8]) == [8]
    assert tracker.pending_ranges("BTCUSDT") == [(4, 7)]


def test_reconnect_window_without_loss_disappears() -> None:
    tracker = SequenceTracker()
    _accept_all(tracker, [1, 2, 3])
    tracker.open_window("BTCUSDT")
    assert _accept_all(tracker, [3, 4, 5]) == [4, 5]
    assert tracker.pending_ranges("BTCUSDT") == []


def test_give_up_and_missing_ids() -> None:
    tracker = SequenceTracker(gap_grace_s=0)
    _accept_all(tracker, [1, 10, 20])
    assert tracker.pending_ranges("BTCUSDT") == [(2, 9), (11, 19)]
    assert tracker.missing_ids("BTCUSDT", 1, 20) == 17
    tracker.give_up("BTCUSDT", 5, 12)
    assert tracker.pending_ranges("BTCUSDT") == [(2, 4), (13, 19)]
    assert not tracker.accept("BTCUSDT", "trade", 6, 0)  # given up: a late copy is refused
    assert tracker.accept("BTCUSDT", "trade", 3, 0)


def test_due_ranges_respect_the_grace_period() -> None:
    tracker = SequenceTracker(gap_grace_s=3600)
    _accept_all(tracker, [1, 5])
    assert tracker.due_ranges() == []
    assert [(s, w.first, w.last) for s, w in tracker.due_ranges(float("inf"))] == [
        ("BTCUSDT", 2, 4)
    ]
