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
from producer_app.parser import RestTradeError, event_from_rest_trade
from producer_app.sequence import PendingRange, SequenceTracker
from producer_app.sink import KafkaSink

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
        self.records: list[GapRecord] = []

    def poke(self) -> None:
        """A gap may have become due earlier (tests, shutdown)."""
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            try:
                await self.fill_due()
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

    async def fill_due(self, everything: bool = False) -> None:
        now = float("inf") if everything else time.monotonic()
        for symbol, window in self._tracker.due_ranges(now):
            await self._fill(symbol, window)

    async def drain(self, timeout_s: float = 60.0) -> None:
        """Fill every pending range now, ignoring grace (end of recording, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._tracker.has_pending() and time.monotonic() < deadline:
            await self.fill_due(everything=True)

    async def _fill(self, symbol: str, window: PendingRange) -> None:
        first, last = window.first, window.last
        page_size = self._settings.producer_rest_page_size
        filled = 0
        last_filled: int | None = None
        error: str | None = None
        from_id = first
        target = last if last is not None else self._tracker.high_water_mark(symbol)
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

        if last is None:
            # Reconnect window: whatever REST did not return is not known to be missing,
            # except ids between the window start and trades the live feed delivered later
            # (those became a closed range through accept and are counted below).
            upper = last_filled if last_filled is not None else first - 1
            unfilled = self._tracker.missing_ids(symbol, first, upper) if upper >= first else 0
            self._tracker.give_up(symbol, first, None)
            if filled == 0 and unfilled == 0 and error is None:
                return
            last_missing = last_filled
        else:
            unfilled = self._tracker.missing_ids(symbol, first, last)
            self._tracker.give_up(symbol, first, last)
            last_missing = last
        status: GapStatus = (
            "filled" if unfilled == 0 else ("partially_filled" if filled else "unfilled")
        )
        reason = window.reason if error is None else f"{window.reason}; REST: {error}"
        record = GapRecord(
            symbol=symbol,
            stream=STREAM_TRADE,
            first_missing_id=first,
            last_missing_id=last_missing,
            window_start_us=window.window_start_us,
            window_end_us=window.window_end_us or time.time_ns() // 1000,
            filled_count=filled,
            unfilled_count=unfilled,
            status=status,
            reason=reason[:500],
            detected_at_us=window.detected_at_us,
        )
        self._sink.produce_gap(record)
        self.records.append(record)
        self.filled += filled
        self.unfilled += unfilled
        self._metrics.gap_trades_filled.labels(symbol).inc(filled)
        if unfilled:
            self._metrics.gap_trades_unfilled.labels(symbol).inc(unfilled)
        log.info(
            "gap %s %s..%s: %s filled from REST, %s unfilled (%s)",
            symbol,
            first,
            last_missing,
            filled,
            unfilled,
            status,
        )
