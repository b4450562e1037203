"""The DAG's pure helpers: the completeness rule, minute runs, refill events, kline parsing."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "airflow" / "dags"))

from warehouse_checks.exchange import ExchangeError, parse_kline  # noqa: E402
from warehouse_checks.readiness import (  # noqa: E402
    ConsumerProgress,
    SymbolProgress,
    day_readiness,
)
from warehouse_checks.refill import MinuteRun, minute_runs, trade_event  # noqa: E402

from producer_app.events import PriceEvent  # noqa: E402

pytestmark = pytest.mark.unit

DAY = date(2020, 1, 1)
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
RULE = {
    "grace": timedelta(minutes=5),
    "idle": timedelta(minutes=2),
    "max_age": timedelta(minutes=2),
}


def consumer(lag: int | None, age_s: float = 5) -> ConsumerProgress:
    at = NOW - timedelta(seconds=age_s)
    return ConsumerProgress("consumer_prices", lag, at, at)


def symbol(name: str, newest: datetime, changed_ago_s: float) -> SymbolProgress:
    return SymbolProgress(name, "trade", newest, NOW - timedelta(seconds=changed_ago_s))


def test_a_busy_symbol_is_past_the_day_once_its_events_pass_day_end_plus_grace() -> None:
    before = symbol("BTCUSDT", datetime(2020, 1, 2, 0, 4, 59, tzinfo=UTC), 0)
    after = symbol("BTCUSDT", datetime(2020, 1, 2, 0, 5, tzinfo=UTC), 0)
    waiting = day_readiness(DAY, ["BTCUSDT"], consumer(9000), [before], now=NOW, **RULE)
    assert not waiting.complete
    assert "BTCUSDT" in waiting.waiting[0] and "9000 event(s) behind" in waiting.waiting[0]
    assert day_readiness(DAY, ["BTCUSDT"], consumer(9000), [after], now=NOW, **RULE).complete


def test_a_rare_symbol_or_an_ended_replay_is_past_when_caught_up_and_idle() -> None:
    quiet = symbol("TRXUSDT", datetime(2020, 1, 1, 23, 10, tzinfo=UTC), 600)
    assert day_readiness(DAY, ["TRXUSDT"], consumer(0), [quiet], now=NOW, **RULE).complete
    # still receiving (changed 30 s ago): wait
    busy = symbol("TRXUSDT", datetime(2020, 1, 1, 23, 10, tzinfo=UTC), 30)
    assert not day_readiness(DAY, ["TRXUSDT"], consumer(0), [busy], now=NOW, **RULE).complete
    # a configured symbol never seen, consumer caught up: nothing to wait for
    assert day_readiness(DAY, ["NEWUSDT"], consumer(0), [], now=NOW, **RULE).complete


def test_a_stale_or_missing_progress_record_means_wait_and_says_why() -> None:
    quiet = symbol("BTCUSDT", datetime(2020, 1, 1, 23, tzinfo=UTC), 600)
    stale = day_readiness(DAY, ["BTCUSDT"], consumer(0, age_s=900), [quiet], now=NOW, **RULE)
    assert not stale.complete and "900 s old" in stale.describe()
    missing = day_readiness(DAY, ["BTCUSDT"], None, [quiet], now=NOW, **RULE)
    assert "staging.consumer_progress is empty" in missing.describe()
    unknown = day_readiness(DAY, ["BTCUSDT"], consumer(None), [quiet], now=NOW, **RULE)
    assert "lag is unknown" in unknown.describe()


def test_minute_runs_merge_adjacent_minutes() -> None:
    m = 60_000
    assert minute_runs([5 * m, 3 * m, 4 * m, 9 * m, 4 * m]) == [
        MinuteRun(3 * m, 6 * m),
        MinuteRun(9 * m, 10 * m),
    ]


def test_refill_events_follow_the_producers_event_contract() -> None:
    trade = {"id": 28457, "price": "4.00000100", "qty": "12.00000000", "quoteQty": "48.000012",
             "time": 1499865549590, "isBuyerMaker": True, "isBestMatch": True}  # fmt: skip
    event = PriceEvent.from_json(trade_event("BNBBTC", trade, 1_700_000_000_000_000))
    assert event == PriceEvent(
        "BNBBTC", "trade", 1499865549590000, 1499865549590000, 28457, "4.00000100",
        "12.00000000", True, 1_700_000_000_000_000, "rest",
    )  # fmt: skip
    with pytest.raises(ExchangeError):
        trade_event("BNBBTC", {**trade, "isBuyerMaker": "yes"}, 0)


def test_klines_parse_exactly_or_not_at_all() -> None:
    row = [1577836800000, "7195.24", "7196.25", "7183.14", "7186.68", "51.642812", 1577836859999,
           "371233.63574567", 493, "19.205108", "138049.94391155", "0"]  # fmt: skip
    kline = parse_kline(row)
    assert (kline.open_price, kline.volume, kline.trade_count) == (
        Decimal("7195.24"), Decimal("51.642812"), 493,
    )  # fmt: skip
    for bad in ([1, 2], [*row[:1], "NaN", *row[2:]], {"o": 1}):
        with pytest.raises(ExchangeError):
            parse_kline(bad)
