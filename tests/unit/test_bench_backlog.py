"""The issue-11 benchmark's backlogs (bench/backlog.py) hold what the benchmark claims they hold.

Expectations come from the kline file read here with csv/zipfile, not from the generator.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import sys
import zipfile
from collections import Counter
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import backlog  # noqa: E402

pytestmark = pytest.mark.unit
KLINES = ROOT / "tests" / "fixtures" / "BTCUSDT-1m-2020-01-01.zip"
DAY_MS = 86_400_000


def minute_ranges() -> dict[int, tuple[Decimal, Decimal, Decimal, Decimal]]:
    """open time ms -> (open, high, low, close), for both days (the second shifted by a day)."""
    with zipfile.ZipFile(KLINES) as archive:
        text = archive.read(archive.namelist()[0]).decode()
    ranges = {}
    for row in csv.reader(io.StringIO(text)):
        values = (Decimal(row[1]), Decimal(row[2]), Decimal(row[3]), Decimal(row[4]))
        ranges[int(row[0])] = values
        ranges[int(row[0]) + DAY_MS] = values
    return ranges


def test_single_symbol_backlog_spans_two_utc_days_inside_the_real_candles() -> None:
    trades = list(backlog.backlog_trades(20_000, backlog.SYMBOLS_ONE))
    assert len(trades) == 20_000
    assert {t.symbol for t in trades} == {"BTCUSDT"}
    assert [t.trade_id for t in trades] == list(range(1, 20_001))
    days = {dt.datetime.fromtimestamp(t.trade_time_ms / 1000, dt.UTC).date() for t in trades}
    assert days == {dt.date(2020, 1, 1), dt.date(2020, 1, 2)}
    ranges = minute_ranges()
    for trade in trades:
        _, high, low, _ = ranges[trade.trade_time_ms - trade.trade_time_ms % 60_000]
        assert low <= Decimal(trade.price) <= high
        assert 0 <= trade.event_time_ms - trade.trade_time_ms <= 5
    times = [t.trade_time_ms for t in trades]
    assert times == sorted(times)


def test_three_symbol_backlog_has_contiguous_ids_per_symbol() -> None:
    trades = list(backlog.backlog_trades(9_000, backlog.SYMBOLS_THREE))
    counts = Counter(t.symbol for t in trades)
    assert sum(counts.values()) == 9_000
    assert set(counts) == {"BTCUSDT", "ETHUSDT", "BNBUSDT"}
    assert min(counts.values()) > 2_500  # equal odds
    for symbol in counts:
        ids = [t.trade_id for t in trades if t.symbol == symbol]
        assert ids == list(range(1, counts[symbol] + 1))
    eth = [Decimal(t.price) for t in trades if t.symbol == "ETHUSDT"]
    assert Decimal("120") < min(eth) and max(eth) < Decimal("140")  # ETH was ~130 USDT


def test_wire_formats_are_each_designs_own() -> None:
    trade = next(backlog.backlog_trades(1_000))
    ours = orjson.loads(backlog.ours_value(trade))
    assert list(ours) == [
        "symbol",
        "stream",
        "event_time_us",
        "trade_time_us",
        "sequence_id",
        "price",
        "quantity",
        "is_buyer_maker",
        "received_at_us",
        "source",
    ]
    assert ours["trade_time_us"] == trade.trade_time_ms * 1000
    assert ours["price"] == trade.price
    assert orjson.loads(backlog.original_value(trade)) == {
        "timestamp": trade.event_time_ms,
        "symbol": "BTCUSDT",
        "price": trade.price,
    }
