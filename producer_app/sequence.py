"""Per-symbol sequence tracking: deduplication and gap detection, in memory, bounded.

Data comes from the pipeline (every parsed event, whichever connection delivered it) and
from the gap filler (REST trades); decisions go back to them: produce or drop, and which
trade ids are still missing.

For each (symbol, stream) the tracker keeps a high-water mark ``hwm`` (the highest
sequence id produced) and, for trades, a short sorted list of *pending ranges*: ids below
the mark that were skipped and may still arrive (from an overlapping connection during a
rotation, or from the REST API). An id is produced when it is above the mark or inside a
pending range; anything else is a duplicate. Memory per symbol is the mark plus at most
``max_pending_ranges`` ranges, whatever the traffic.

Trade ids are contiguous per symbol on Binance, so a jump ``t > hwm + 1`` opens the range
``[hwm + 1, t - 1]``. After a connection is lost, ``open_window`` adds an open-ended range
``[hwm + 1, ∞)`` (the reconnect window): the next trade closes it at ``t - 1``; if no
trade comes, the gap filler asks REST what happened after ``hwm``.

Mini-tickers are deduplicated by their mark only (their sequence id is the event time in
ms, so jumps are normal and never a gap).
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

from producer_app.events import STREAM_TRADE


@dataclass(slots=True)
class PendingRange:
    """Ids ``first..last`` (``last`` None = open-ended) not produced yet."""

    first: int
    last: int | None
    window_start_us: int  # price time of the last trade before the gap
    window_end_us: int  # price time of the trade that revealed it (0 while open)
    detected_at_us: int
    due_monotonic: float  # when the gap filler may start on it
    reason: str
    origin_first: int = field(default=-1)  # first id when detected (ranges split as ids arrive)
    attempts: int = 0  # REST fills that failed so far (backoff)
    filled: int = 0  # trades filled by earlier, partly successful attempts

    def __post_init__(self) -> None:
        if self.origin_first < 0:
            self.origin_first = self.first


@dataclass(slots=True)
class _SymbolState:
    hwm: int
    last_price_time_us: int
    pending: list[PendingRange] = field(default_factory=list)


class SequenceTracker:
    """Dedup by (symbol, stream, sequence_id) and gap detection for trades."""

    def __init__(self, gap_grace_s: float = 2.0, max_pending_ranges: int = 1000) -> None:
        self._grace = gap_grace_s
        self._max_pending = max_pending_ranges
        self._trades: dict[str, _SymbolState] = {}
        self._tickers: dict[str, int] = {}
        self.gaps_detected = 0
        #: (symbol, old mark, new id) of each id-space change, for the producer to report.
        self.id_space_resets: list[tuple[str, int, int]] = []

    # -- hot path --------------------------------------------------------------------
    def accept(self, symbol: str, stream: str, sequence_id: int, price_time_us: int) -> bool:
        """True if this event was not produced before (and record it as produced)."""
        if stream != STREAM_TRADE:
            hwm = self._tickers.get(symbol)
            if hwm is not None and sequence_id <= hwm:
                return False
            self._tickers[symbol] = sequence_id
            return True
        state = self._trades.get(symbol)
        if state is None:
            self._trades[symbol] = _SymbolState(sequence_id, price_time_us)
            return True
        hwm = state.hwm
        if sequence_id == hwm + 1 and not state.pending:
            state.hwm = sequence_id
            state.last_price_time_us = price_time_us
            return True
        if sequence_id > hwm:
            self._advance(symbol, state, sequence_id, price_time_us)
            return True
        if self._claim_below(state, sequence_id):
            return True
        if price_time_us > state.last_price_time_us:
            # A lower id with a LATER time cannot happen within one id space (ids grow with
            # time): the feed changed (another recording, another exchange). Start over at it.
            self.id_space_resets.append((symbol, hwm, sequence_id))
            self.reset(symbol, sequence_id, price_time_us)
            return True
        return False

    # -- range bookkeeping -------------------------------------------------------------------
    def _advance(
        self, symbol: str, state: _SymbolState, sequence_id: int, price_time_us: int
    ) -> None:
        pending = state.pending
        if pending and pending[-1].last is None:
            # The reconnect window closes at the first id seen after it.
            window = pending[-1]
            if sequence_id > window.first:
                window.last = sequence_id - 1
                window.window_end_us = price_time_us
            else:
                pending.pop()
        elif sequence_id > state.hwm + 1:
            now_us = time.time_ns() // 1000
            pending.append(
                PendingRange(
                    first=state.hwm + 1,
                    last=sequence_id - 1,
                    window_start_us=state.last_price_time_us,
                    window_end_us=price_time_us,
                    detected_at_us=now_us,
                    due_monotonic=time.monotonic() + self._grace,
                    reason="trade id jump",
                )
            )
            self.gaps_detected += 1
            if len(pending) > self._max_pending:
                # Bounded memory: the oldest range becomes due at once.
                pending[0].due_monotonic = 0.0
        state.hwm = sequence_id
        state.last_price_time_us = price_time_us

    @staticmethod
    def _claim_below(state: _SymbolState, sequence_id: int) -> bool:
        pending = state.pending
        for index, window in enumerate(pending):
            if window.first > sequence_id:
                return False
            last = window.last if window.last is not None else sequence_id
            if sequence_id > last:
                continue
            # Inside this range: split it around the id.
            if window.first == sequence_id == last:
                del pending[index]
            elif window.first == sequence_id:
                window.first = sequence_id + 1
            elif last == sequence_id and window.last is not None:
                window.last = sequence_id - 1
            else:
                right = PendingRange(
                    first=sequence_id + 1,
                    last=window.last,
                    window_start_us=window.window_start_us,
                    window_end_us=window.window_end_us,
                    detected_at_us=window.detected_at_us,
                    due_monotonic=window.due_monotonic,
                    reason=window.reason,
                    origin_first=window.origin_first,
                )
                window.last = sequence_id - 1
                pending.insert(index + 1, right)
            return True
        return False

    def seed(self, symbol: str, stream: str, sequence_id: int, price_time_us: int) -> None:
        """Start from a mark produced by an earlier run (``producer_app.resume``)."""
        if stream != STREAM_TRADE:
            self._tickers[symbol] = max(sequence_id, self._tickers.get(symbol, sequence_id))
            return
        state = self._trades.get(symbol)
        if state is None:
            self._trades[symbol] = _SymbolState(sequence_id, price_time_us)
        elif sequence_id > state.hwm:
            state.hwm, state.last_price_time_us = sequence_id, price_time_us

    def open_window(self, symbol: str, reason: str = "reconnect window") -> None:
        """A connection carrying this symbol's trades was lost: later ids may be missing."""
        state = self._trades.get(symbol)
        if state is None:
            return
        pending = state.pending
        if pending and pending[-1].last is None:
            return  # already open
        pending.append(
            PendingRange(
                first=state.hwm + 1,
                last=None,
                window_start_us=state.last_price_time_us,
                window_end_us=0,
                detected_at_us=time.time_ns() // 1000,
                due_monotonic=time.monotonic() + self._grace,
                reason=reason,
            )
        )

    def reopen(self, symbol: str, sequence_id: int, price_time_us: int, reason: str) -> bool:
        """A trade marked produced was NOT delivered: make its id pending again (REST fills it).

        Failed ids come in id order per symbol (one partition, in order), so consecutive ones
        extend the previous range and a long outage costs one range, not one per trade.
        Returns False when the id is not below the mark (nothing to reopen).
        """
        state = self._trades.get(symbol)
        if state is None or sequence_id > state.hwm:
            return False
        pending = state.pending
        index = bisect.bisect_left([w.first for w in pending], sequence_id)
        if index > 0:
            before = pending[index - 1]
            if before.last is None or before.last >= sequence_id:
                return True  # already pending
            if before.last == sequence_id - 1 and before.reason == reason and not before.attempts:
                before.last = sequence_id
                before.window_end_us = max(before.window_end_us, price_time_us)
                return True
        if index < len(pending) and pending[index].first == sequence_id:
            return True
        pending.insert(
            index,
            PendingRange(
                first=sequence_id,
                last=sequence_id,
                window_start_us=price_time_us,
                window_end_us=price_time_us,
                detected_at_us=time.time_ns() // 1000,
                due_monotonic=time.monotonic() + self._grace,
                reason=reason,
            ),
        )
        self.gaps_detected += 1
        return True

    def keep_open(self, symbol: str, window: PendingRange) -> None:
        """Keep an open window pending from the current mark on (trades REST filled before a
        failure advanced the mark and closed the window object)."""
        state = self._trades.get(symbol)
        if state is None:
            return
        if state.pending and state.pending[-1].last is None:
            if state.pending[-1] is not window:
                state.pending[-1].attempts = window.attempts
            return
        window.first = state.hwm + 1
        state.pending.append(window)

    def remove(self, symbol: str, window: PendingRange) -> None:
        """Forget exactly this range (an open window REST has caught up with)."""
        state = self._trades.get(symbol)
        if state is not None:
            state.pending = [w for w in state.pending if w is not window]

    def reset(self, symbol: str, sequence_id: int, price_time_us: int) -> list[PendingRange]:
        """The symbol's ids start again elsewhere (another feed): new mark, old ranges returned."""
        state = self._trades.get(symbol)
        dropped = state.pending if state is not None else []
        self._trades[symbol] = _SymbolState(sequence_id, price_time_us)
        return dropped

    # -- for the gap filler --------------------------------------------------------------------
    def due_ranges(self, now_monotonic: float | None = None) -> list[tuple[str, PendingRange]]:
        """Pending trade ranges whose grace period is over (all of them if now is inf)."""
        now = time.monotonic() if now_monotonic is None else now_monotonic
        return [
            (symbol, window)
            for symbol, state in self._trades.items()
            for window in state.pending
            if window.due_monotonic <= now
        ]

    def floor(self, symbol: str, stream: str = STREAM_TRADE) -> tuple[int, int] | None:
        """(id, price time) below the first pending id of the symbol, or None if none pends."""
        state = self._trades.get(symbol) if stream == STREAM_TRADE else None
        if state is None or not state.pending:
            return None
        first = state.pending[0]
        return first.first - 1, first.window_start_us

    def pending_count(self) -> int:
        return sum(len(state.pending) for state in self._trades.values())

    def has_pending(self) -> bool:
        return any(state.pending for state in self._trades.values())

    def next_due(self) -> float | None:
        dues = [w.due_monotonic for s in self._trades.values() for w in s.pending]
        return min(dues) if dues else None

    def missing_ids(self, symbol: str, first: int, last: int) -> int:
        """How many ids in ``first..last`` are still pending."""
        state = self._trades.get(symbol)
        if state is None:
            return 0
        count = 0
        for window in state.pending:
            upper = window.last if window.last is not None else last
            lo, hi = max(first, window.first), min(last, upper)
            if hi >= lo:
                count += hi - lo + 1
        return count

    def give_up(self, symbol: str, first: int, last: int | None) -> None:
        """Forget pending ids in ``first..last`` (the filler could not get them)."""
        state = self._trades.get(symbol)
        if state is None:
            return
        kept: list[PendingRange] = []
        for window in state.pending:
            w_last = window.last
            if last is not None and window.first > last:
                kept.append(window)
                continue
            if w_last is not None and w_last < first:
                kept.append(window)
                continue
            # Overlaps: keep the parts outside first..last.
            if window.first < first:
                left = PendingRange(
                    window.first,
                    first - 1,
                    window.window_start_us,
                    window.window_end_us,
                    window.detected_at_us,
                    window.due_monotonic,
                    window.reason,
                    window.origin_first,
                )
                kept.append(left)
            if last is not None and (w_last is None or w_last > last):
                right = PendingRange(
                    last + 1,
                    w_last,
                    window.window_start_us,
                    window.window_end_us,
                    window.detected_at_us,
                    window.due_monotonic,
                    window.reason,
                    window.origin_first,
                )
                kept.append(right)
        state.pending = kept

    def high_water_mark(self, symbol: str, stream: str = STREAM_TRADE) -> int | None:
        if stream != STREAM_TRADE:
            return self._tickers.get(symbol)
        state = self._trades.get(symbol)
        return None if state is None else state.hwm

    def pending_ranges(self, symbol: str) -> list[tuple[int, int | None]]:
        state = self._trades.get(symbol)
        return [] if state is None else [(w.first, w.last) for w in state.pending]

    def symbols(self) -> list[str]:
        return list(self._trades)
