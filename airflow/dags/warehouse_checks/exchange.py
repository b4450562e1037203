"""A small client of the exchange's public REST API (Binance, or the local replay server).

Data comes from ``BINANCE_REST_URL``: ``GET /api/v3/time``, ``/api/v3/klines`` (Binance's
"Kline/Candlestick data": arrays ``[open time, open, high, low, close, volume, close time,
quote volume, trades, taker buy base, taker buy quote, ignore]``, decimals as strings) and
``/api/v3/historicalTrades`` ("Old trade lookup"). It goes to the DAG, which stores klines in
``analytics.exchange_klines`` and turns trades into refill events (refill.py).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000  # Binance's maximum for klines and historicalTrades


class ExchangeError(Exception):
    """The exchange did not answer, or answered something that is not its documented shape."""


@dataclass(frozen=True)
class Kline:
    """One kline, exact decimals, times in ms since the epoch (UTC)."""

    open_time_ms: int
    close_time_ms: int
    open_price: Decimal
    high_price: Decimal
    low_price: Decimal
    close_price: Decimal
    volume: Decimal
    quote_volume: Decimal
    trade_count: int
    taker_buy_volume: Decimal
    taker_buy_quote_volume: Decimal


def parse_kline(row: Any) -> Kline:
    """One element of a /api/v3/klines answer; raises ExchangeError on any other shape."""
    if not isinstance(row, list) or len(row) < 11:
        raise ExchangeError(f"not a kline: {row!r:.200}")
    try:
        decimals = [Decimal(str(row[i])) for i in (1, 2, 3, 4, 5, 7, 9, 10)]
        if not all(d.is_finite() for d in decimals):
            raise ExchangeError(f"kline with a non-finite decimal: {row!r:.200}")
        o, h, low, c, volume, quote, taker, taker_quote = decimals
        return Kline(
            int(row[0]), int(row[6]), o, h, low, c, volume, quote, int(row[8]), taker, taker_quote
        )
    except (InvalidOperation, TypeError, ValueError) as err:
        raise ExchangeError(f"bad kline {row!r:.200}: {err}") from err


class ExchangeClient:
    """GETs with a timeout and a few quick retries; every failure is an ExchangeError."""

    def __init__(self, base_url: str, timeout_s: float = 10.0, attempts: int = 3) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ExchangeError(f"BINANCE_REST_URL must be http(s): {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._attempts = max(attempts, 1)

    def get(self, path: str, params: dict[str, object]) -> Any:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        last: Exception | None = None
        for attempt in range(self._attempts):
            try:
                request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked
                with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode("utf-8", "replace")
                last = ExchangeError(f"HTTP {err.code} from {url}: {detail}")
                if err.code < 500 and err.code != 429:
                    break  # a client error does not go away by asking again
            except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
                last = ExchangeError(f"cannot reach {url}: {err}")
            log.warning("exchange attempt %d of %d failed: %s", attempt + 1, self._attempts, last)
            time.sleep(min(0.5 * 2**attempt, 5.0))
        assert last is not None  # noqa: S101 - the loop ran at least once
        raise last

    def server_time_ms(self) -> int:
        answer = self.get("/api/v3/time", {})
        if not isinstance(answer, dict) or not isinstance(answer.get("serverTime"), int):
            raise ExchangeError(f"unexpected /api/v3/time answer: {answer!r:.200}")
        return int(answer["serverTime"])

    def klines(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> list[Kline]:
        """Every kline whose open time lies in [start_ms, end_ms], paging by 1000."""
        out: list[Kline] = []
        cursor = start_ms
        while cursor <= end_ms:
            page = self.get(
                "/api/v3/klines",
                {"symbol": symbol, "interval": interval, "startTime": cursor,
                 "endTime": end_ms, "limit": PAGE_LIMIT},
            )  # fmt: skip
            if not isinstance(page, list):
                raise ExchangeError(f"unexpected /api/v3/klines answer: {page!r:.200}")
            klines = [parse_kline(row) for row in page]
            out.extend(k for k in klines if start_ms <= k.open_time_ms <= end_ms)
            if len(klines) < PAGE_LIMIT:
                break
            cursor = klines[-1].open_time_ms + 1
        return out

    def historical_trades(self, symbol: str, from_id: int) -> list[dict[str, Any]]:
        page = self.get(
            "/api/v3/historicalTrades", {"symbol": symbol, "fromId": from_id, "limit": PAGE_LIMIT}
        )
        if not isinstance(page, list) or not all(isinstance(t, dict) for t in page):
            raise ExchangeError(f"unexpected /api/v3/historicalTrades answer: {page!r:.200}")
        return page
