"""Gap filling: missing trade ids fetched from Binance's REST API, or recorded as unfilled.

Data comes from the ``SequenceTracker`` (pending id ranges whose grace period is over) and
from ``GET {BINANCE_REST_URL}/api/v3/historicalTrades?symbol=X&fromId=N&limit=L`` (Binance
"Old trade lookup"; the replay server serves the same endpoint from its recording). Filled
trades go to the prices topic as events with ``source = "rest"``; every gap ends as one
``GapRecord`` on the gaps topic (filled, partially filled or unfilled) that the consumer
writes into ``staging.feed_gaps``.

The HTTP call runs in a worker thread (urllib, standard library) so the event loop keeps
reading frames; all tracker and sink calls stay on the loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from producer_app.config import ProducerSettings
from producer_app.events import STREAM_TRADE, GapRecord, GapStatus
from producer_app.metrics import ProducerMetrics
from producer_app.parser import (
    TIME_OUT_OF_RANGE,
    RestTradeError,
    event_from_rest_trade,
    time_bound_violation,
)
from producer_app.sequence import PendingRange, SequenceTracker
from producer_app.sink import FatalSinkError, KafkaSink

log = logging.getLogger(__name__)


class RestError(RuntimeError):
    """The REST API did not answer with a list of trades."""


class RestClient:
    """Minimal client for the one public endpoint the producer needs."""

    def __init__(self, settings: ProducerSettings) -> None:
        self._base = settings.binance_rest_url.rstrip("/")
        self._timeout = settings.producer_rest_timeout_s
        self._retries = settings.producer_rest_retries
        self._headers = {"Accept": "application/json", **settings.rest_time_unit_header}
        self._backoff = max(settings.producer_backoff_base_s, 0.05)

    def historical_trades_url(self, symbol: str, from_id: int, limit: int) -> str:
        query = urllib.parse.urlencode({"symbol": symbol, "fromId": from_id, "limit": limit})
        return f"{self._base}/api/v3/historicalTrades?{query}"

    def _get(self, url: str) -> Any:
        if not url.startswith(("http://", "https://")):
            raise RestError(f"BINANCE_REST_URL must be http(s): {url}")
        request = urllib.request.Request(url, headers=self._headers)  # noqa: S310 - scheme checked above
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                body = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", "replace")
            raise RestError(f"HTTP {err.code} from {url}: {detail}") from err
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise RestError(f"cannot reach {url}: {err}") from err
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise RestError(f"invalid JSON from {url}: {err}") from err

    async def historical_trades(self, symbol: str, from_id: int, limit: int) -> list[Any]:
        url = self.historical_trades_url(symbol, from_id, limit)
        for attempt in range(self._retries + 1):
            try:
                trades = await asyncio.to_thread(self._get, url)
            except RestError as err:
                if attempt == self._retries:
                    raise
                log.warning("REST attempt %s failed: %s", attempt + 1, err)
                await asyncio.sleep(self._backoff * 2**attempt)
                continue
            if not isinstance(trades, list):
                raise RestError(f"expected a list of trades from {url}, got {str(trades)[:200]}")
            return trades
        raise RestError(f"unreachable: {url}")  # the loop returns or raises


class GapFiller:
    """Fills due pending ranges one at a time; a single asyncio task."""

    def __init__(
        self,
        settings: ProducerSettings,
        tracker: SequenceTracker,
        sink: KafkaSink,
        metrics: ProducerMetrics,
        rest: RestClient | None = None,
    ) -> None:
        self._settings = settings
        self._tracker = tracker
        self._sink = sink
        self._metrics = metrics
        self._rest = rest if rest is not None else RestClient(settings)
        self._wakeup = asyncio.Event()
        self.filled = 0
        self.unfilled = 0
        self.failed_rounds_in_a_row = 0
        self.records: list[GapRecord] = []
        self._max_ahead_us = int(settings.producer_max_event_ahead_s * 1_000_000)
        self._rejected: set[tuple[str, int]] = set()

    def poke(self) -> None:
        """A gap may have become due earlier (tests, shutdown)."""
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            try:
                if await self._broker_ready():
                    self._sink.resend_failed()
                    await self.fill_due()
            except FatalSinkError:
                raise  # the producer ends (app.Producer.run)
            except Exception:
                # A bug in one fill must not stop all future fills (the feed goes on either
                # way); the range stays pending and is retried on the next round.
                log.exception("gap filler round failed; retrying in 1 s")
                await asyncio.sleep(1.0)
            next_due = self._tracker.next_due()
            delay = 1.0 if next_due is None else max(0.0, min(1.0, next_due - time.monotonic()))
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _broker_ready(self) -> bool:
        """After a failed delivery, fill nothing until the broker answers a metadata request:
        REST trades produced into an outage would only fail (and be reopened) again."""
        if not self._sink.outage_suspected:
            return True
        if await asyncio.to_thread(self._sink.broker_answers, 5.0):
            return True
        log.warning("Kafka does not answer; gap fills and resends wait for it")
        return False

    async def fill_due(self, everything: bool = False) -> None:
        now = float("inf") if everything else time.monotonic()
        for symbol, window in self._tracker.due_ranges(now):
            await self._fill(symbol, window)

    async def drain(self, timeout_s: float = 60.0) -> None:
        """Fill every pending range now, ignoring grace (end of recording, shutdown).

        Ranges whose REST fill keeps failing stay pending (reported unfilled) when time is up.
        """
        deadline = time.monotonic() + timeout_s
        while self._tracker.has_pending() and time.monotonic() < deadline:
            if not await self._broker_ready():
                await asyncio.sleep(1.0)
                continue
            self._sink.resend_failed()
            await self.fill_due(everything=True)
            if self.failed_rounds_in_a_row >= 3:
                break

    async def _fill(self, symbol: str, window: PendingRange) -> None:
        first, last = window.first, window.last
        if last is not None and last - first + 1 > self._settings.producer_gap_max_trades:
            self._too_large(symbol, window)
            return
        page_size = self._settings.producer_rest_page_size
        filled = 0
        last_filled: int | None = None
        error: str | None = None
        from_id = first
        self._metrics.gaps_detected.labels(symbol).inc()
        try:
            for _ in range(self._settings.producer_gap_max_pages):
                trades = await self._rest.historical_trades(symbol, from_id, page_size)
                received_at_us = time.time_ns() // 1000
                page_last: int | None = None
                for trade in trades:
                    event = event_from_rest_trade(symbol, trade, received_at_us)
                    page_last = event.sequence_id
                    if event.sequence_id < from_id:
                        continue
                    if last is not None and event.sequence_id > last:
                        break
                    if self._out_of_range(symbol, trade, event.price_time_us, received_at_us):
                        continue
                    if self._tracker.accept(
                        symbol, STREAM_TRADE, event.sequence_id, event.price_time_us
                    ):
                        self._sink.produce_event(symbol, event.to_json())
                        filled += 1
                        last_filled = event.sequence_id
                if page_last is None or len(trades) < page_size:
                    break
                from_id = page_last + 1
                if last is not None and from_id > last:
                    break
                if last is None:
                    # Open window: stop once REST has caught up with what the live feed delivered.
                    target = self._tracker.high_water_mark(symbol)
                    if target is not None and from_id > target:
                        break
        except (RestError, RestTradeError) as err:
            error = str(err)
            log.error("gap fill for %s from id %s failed: %s", symbol, first, err)
        self._sink.poll(0)
        if error is not None:
            self._failed(symbol, window, filled, last_filled, error)
            return
        self.failed_rounds_in_a_row = 0

        if last is None:
            # Reconnect window: whatever REST did not return is not known to be missing,
            # except ids between the window start and trades the live feed delivered later
            # (those became a closed range through accept and are counted below).
            upper = last_filled if last_filled is not None else first - 1
            unfilled = self._tracker.missing_ids(symbol, first, upper) if upper >= first else 0
            if upper >= first:
                self._tracker.give_up(symbol, first, upper)
            self._tracker.remove(symbol, window)  # only this window: other ranges stay
            if filled == 0 and unfilled == 0 and window.filled == 0 and not window.attempts:
                return
            last_missing = last_filled
        else:
            unfilled = self._tracker.missing_ids(symbol, first, last)
            self._tracker.give_up(symbol, first, last)
            last_missing = last
        total_filled = window.filled + filled
        status: GapStatus = (
            "filled" if unfilled == 0 else ("partially_filled" if total_filled else "unfilled")
        )
        self._report(symbol, window, last_missing, total_filled, unfilled, status, window.reason)
        self.filled += filled
        self.unfilled += unfilled
        self._metrics.gap_trades_filled.labels(symbol).inc(filled)
        if unfilled:
            self._metrics.gap_trades_unfilled.labels(symbol).inc(unfilled)

    def note_rejected(self, symbol: str, trade_id: int) -> bool:
        """Remember a dead-lettered trade id; False if it was dead-lettered before."""
        key = (symbol, trade_id)
        if key in self._rejected:
            return False
        if len(self._rejected) >= 10_000:
            self._rejected.clear()
        self._rejected.add(key)
        return True

    def _out_of_range(
        self, symbol: str, trade: Any, price_time_us: int, received_at_us: int
    ) -> bool:
        """A REST trade from the future is dead-lettered like a live one (never produced).

        Only the AHEAD bound applies: REST trades are old by nature. Each id is dead-lettered
        once, however often a window is probed again.
        """
        why = time_bound_violation(price_time_us, received_at_us, self._max_ahead_us, 0)
        if why is None:
            return False
        if self.note_rejected(symbol, int(trade["id"])):
            self._metrics.dead_letters.labels(TIME_OUT_OF_RANGE).inc()
            log.warning("dead letter (%s) from REST: %s", TIME_OUT_OF_RANGE, why)
            self._sink.produce_dead_letter(
                f"{TIME_OUT_OF_RANGE}: {why}",
                orjson.dumps(trade).decode(),
                symbol,
                received_at_us,
                self._rest.historical_trades_url(symbol, int(trade["id"]), 1),
            )
        return True

    def _failed(
        self,
        symbol: str,
        window: PendingRange,
        filled: int,
        last_filled: int | None,
        error: str,
    ) -> None:
        """REST failed: the range stays pending (what was filled is no longer in it), it is
        reported unfilled now and retried with backoff; never reported as filled."""
        self.failed_rounds_in_a_row += 1
        self.filled += filled
        self._metrics.gap_trades_filled.labels(symbol).inc(filled)
        self._metrics.gap_fill_failures.labels(symbol).inc()
        window.attempts += 1
        window.filled += filled
        settings = self._settings
        delay = min(
            settings.producer_gap_retry_cap_s,
            settings.producer_gap_retry_base_s * 2 ** min(window.attempts - 1, 30),
        )
        window.due_monotonic = time.monotonic() + delay
        last = window.last
        upper = last if last is not None else self._tracker.high_water_mark(symbol)
        first = window.origin_first
        unfilled = self._tracker.missing_ids(symbol, first, upper) if upper is not None else 0
        status: GapStatus = "partially_filled" if window.filled else "unfilled"
        reason = (
            f"{window.reason}; REST failed (attempt {window.attempts}, "
            f"retry in {delay:.0f} s): {error}"
        )
        self._report(symbol, window, last, window.filled, unfilled, status, reason)
        log.warning(
            "gap %s from %s: REST attempt %s failed, %s unfilled, retry in %.0f s",
            symbol,
            first,
            window.attempts,
            unfilled,
            delay,
        )
        if last is None:
            self._tracker.keep_open(symbol, window)  # REST got this far: retry from the mark

    def _too_large(self, symbol: str, window: PendingRange) -> None:
        """A gap REST cannot fill in reasonable time: record it unfilled with its size."""
        assert window.last is not None  # noqa: S101 - only closed ranges have a size
        size = window.last - window.first + 1
        self._tracker.give_up(symbol, window.first, window.last)
        reason = (
            f"{window.reason}; {size} missing trade ids exceed PRODUCER_GAP_MAX_TRADES "
            f"({self._settings.producer_gap_max_trades}): not fetched from REST"
        )
        self._report(symbol, window, window.last, window.filled, size, "unfilled", reason)
        self.unfilled += size
        self._metrics.gap_trades_unfilled.labels(symbol).inc(size)

    def _report(
        self,
        symbol: str,
        window: PendingRange,
        last_missing: int | None,
        filled: int,
        unfilled: int,
        status: GapStatus,
        reason: str,
    ) -> None:
        # Same (symbol, stream, window start, first id) for every report of one gap, and a
        # later detected_at, so the consumer's upsert keeps the latest verdict.
        now_us = time.time_ns() // 1000
        record = GapRecord(
            symbol=symbol,
            stream=STREAM_TRADE,
            first_missing_id=window.origin_first,
            last_missing_id=last_missing,
            window_start_us=window.window_start_us,
            window_end_us=window.window_end_us or now_us,
            filled_count=filled,
            unfilled_count=unfilled,
            status=status,
            reason=reason[:500],
            detected_at_us=max(window.detected_at_us, now_us),
        )
        self._sink.produce_gap(record)
        self.records.append(record)
        log.info(
            "gap %s %s..%s: %s filled from REST, %s unfilled (%s)",
            symbol,
            window.origin_first,
            last_missing,
            filled,
            unfilled,
            status,
        )
