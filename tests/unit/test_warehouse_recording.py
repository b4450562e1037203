"""Checks the bundled recordings against the real Binance data they were made from.

The BTCUSDT recording is synthetic at the trade level, so these tests hold it to the
official 1-minute klines in tests/fixtures/ (read here with plain csv + Decimal, not with
the generator's code) and to Binance's published daily candle; the TRXUSDT recording must
carry the real captured trades unchanged.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import zipfile
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
BTC_RECORDING = ROOT / "recordings" / "btcusdt-trade-2020-01-01.jsonl.gz"
TRX_RECORDING = ROOT / "recordings" / "trxusdt-trade-2025-03-04.jsonl.gz"
TRX_CSV = FIXTURES / "trxusdt-trade-2025-03-04.csv"  # copy of the shared real capture

# Binance's own daily candle for BTCUSDT spot on 2020-01-01.
BINANCE_DAY = {
    "open": Decimal("7195.24"),
    "high": Decimal("7255.00"),
    "low": Decimal("7175.15"),
    "close": Decimal("7200.85"),
    "volume": Decimal("16792.388165"),
    "trades": 194_010,
}


def _klines() -> list[list[str]]:
    with zipfile.ZipFile(FIXTURES / "BTCUSDT-1m-2020-01-01.zip") as archive:
        text = archive.read("BTCUSDT-1m-2020-01-01.csv").decode("ascii")
    return list(csv.reader(io.StringIO(text)))


def _frames(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="ascii") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def btc_frames() -> list[dict[str, Any]]:
    return _frames(BTC_RECORDING)


def test_fixture_zip_matches_binance_checksum() -> None:
    expected = (FIXTURES / "BTCUSDT-1m-2020-01-01.zip.CHECKSUM").read_text().split()[0]
    actual = hashlib.sha256((FIXTURES / "BTCUSDT-1m-2020-01-01.zip").read_bytes()).hexdigest()
    assert actual == expected


def test_btc_frames_are_combined_stream_trades(btc_frames: list[dict[str, Any]]) -> None:
    assert len(btc_frames) == BINANCE_DAY["trades"]
    first = btc_frames[0]
    assert first["stream"] == "btcusdt@trade"
    data = first["data"]
    assert isinstance(data, dict)
    assert list(data) == ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
    assert data["e"] == "trade" and data["s"] == "BTCUSDT" and data["M"] is True
    assert isinstance(data["p"], str) and isinstance(data["q"], str)


def test_btc_trade_ids_contiguous_and_times_ordered(btc_frames: list[dict[str, Any]]) -> None:
    ids = [f["data"]["t"] for f in btc_frames]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    times = [f["data"]["T"] for f in btc_frames]
    assert times == sorted(times)
    assert all(f["data"]["E"] >= f["data"]["T"] for f in btc_frames)


def test_btc_every_minute_reproduces_its_kline(btc_frames: list[dict[str, Any]]) -> None:
    by_minute: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for frame in btc_frames:
        data = frame["data"]
        assert isinstance(data, dict)
        by_minute[data["T"] // 60_000 * 60_000].append(data)
    klines = _klines()
    assert len(by_minute) == len(klines) == 1440
    for row in klines:
        trades = by_minute[int(row[0])]
        prices = [Decimal(t["p"]) for t in trades]
        quantities = [Decimal(t["q"]) for t in trades]
        assert len(trades) == int(row[8]), row[0]
        assert prices[0] == Decimal(row[1]), row[0]
        assert max(prices) == Decimal(row[2]), row[0]
        assert min(prices) == Decimal(row[3]), row[0]
        assert prices[-1] == Decimal(row[4]), row[0]
        assert sum(quantities) == Decimal(row[5]), row[0]
        assert all(q > 0 and q == q.quantize(Decimal("1e-8")) for q in quantities)
        assert all(int(row[0]) <= t["T"] <= int(row[6]) for t in trades)


def test_btc_day_candle_equals_binance(btc_frames: list[dict[str, Any]]) -> None:
    prices = [Decimal(f["data"]["p"]) for f in btc_frames]
    volume = sum(Decimal(f["data"]["q"]) for f in btc_frames)
    assert prices[0] == BINANCE_DAY["open"]
    assert max(prices) == BINANCE_DAY["high"]
    assert min(prices) == BINANCE_DAY["low"]
    assert prices[-1] == BINANCE_DAY["close"]
    assert volume == BINANCE_DAY["volume"]


@pytest.mark.skipif(not TRX_CSV.exists(), reason="shared TRXUSDT capture not on this machine")
def test_trx_recording_carries_the_captured_trades_unchanged() -> None:
    frames = _frames(TRX_RECORDING)
    with TRX_CSV.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(frames) == len(rows) == 10_000
    for frame, row in zip(frames, rows, strict=True):
        data = frame["data"]
        assert isinstance(data, dict)
        assert frame["stream"] == "trxusdt@trade"
        assert data["t"] == int(row["TradeId"])
        assert data["p"] == row["Price"] and data["q"] == row["Quantity"]
        assert data["T"] == int(row["TransactionTime"])  # µs, as recorded
        assert data["E"] == int(row["EventTime"])
        assert data["m"] is (row["IsBuyerMarketMaker"] == "1")
