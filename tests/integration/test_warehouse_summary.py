"""CALL analytics.get_daily_summary against a real PostgreSQL (the pg_dsn fixture).

Rows go straight into staging.raw_prices with binary COPY (no consumer involved). Expected
candles come from independent sources: hand-written trades, a plain-Python recomputation,
Binance's published daily candle and the official 1-minute klines in tests/fixtures/.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KLINES_ZIP = ROOT / "tests" / "fixtures" / "BTCUSDT-1m-2020-01-01.zip"
BTC_RECORDING = ROOT / "recordings" / "btcusdt-trade-2020-01-01.jsonl.gz"

COPY_COLUMNS = (
    "symbol",
    "stream",
    "sequence_id",
    "event_time",
    "exchange_event_time",
    "price",
    "quantity",
    "is_buyer_maker",
    "received_at",
    "source",
)
COPY_TYPES = (
    "text",
    "text",
    "int8",
    "timestamptz",
    "timestamptz",
    "numeric",
    "numeric",
    "bool",
    "timestamptz",
    "text",
)
SUMMARY_COLUMNS = (
    "event_date",
    "symbol",
    "open_price",
    "high_price",
    "low_price",
    "close_price",
    "avg_price",
    "volume",
    "quote_volume",
    "vwap",
    "trade_count",
    "first_event_time",
    "last_event_time",
    "candle_source",
)


@dataclass(frozen=True)
class Row:
    """One staging.raw_prices row as a test writes it."""

    symbol: str
    sequence_id: int
    event_time: datetime
    price: Decimal
    quantity: Decimal | None = Decimal("1")
    stream: str = "trade"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc,arg-type]


def copy_rows(conn: psycopg.Connection, rows: Iterable[Row]) -> None:
    """Binary COPY into staging.raw_prices, creating the day partitions the rows need."""
    rows = list(rows)
    days = sorted({r.event_time.astimezone(UTC).date() for r in rows})
    if days:
        conn.execute("call staging.create_raw_prices_partitions(%s, %s)", (days[0], days[-1]))
    columns = ", ".join(COPY_COLUMNS)
    with (
        conn.cursor() as cur,
        cur.copy(
            f"copy staging.raw_prices ({columns}) from stdin (format binary)"  # noqa: S608 - constant
        ) as copy,
    ):
        copy.set_types(list(COPY_TYPES))
        for r in rows:
            copy.write_row(
                (
                    r.symbol,
                    r.stream,
                    r.sequence_id,
                    r.event_time,
                    r.event_time,
                    r.price,
                    r.quantity if r.stream == "trade" else None,
                    False if r.stream == "trade" else None,
                    r.event_time,
                    "ws",
                )
            )


def summarize(conn: psycopg.Connection, day: date | None = None) -> None:
    if day is None:
        conn.execute("call analytics.get_daily_summary()")
    else:
        conn.execute("call analytics.get_daily_summary(%s)", (day,))


def summary(conn: psycopg.Connection, day: date) -> dict[str, dict[str, object]]:
    cols = ", ".join(SUMMARY_COLUMNS)
    cur = conn.execute(
        f"select {cols} from analytics.daily_summary_dw where event_date = %s order by symbol",  # noqa: S608
        (day,),
    )
    return {row[1]: dict(zip(SUMMARY_COLUMNS, row, strict=True)) for row in cur.fetchall()}


def assert_vwap(actual: object, quote_volume: Decimal, volume: Decimal) -> None:
    """PostgreSQL divides numerics to >= 16 significant digits, Python to 28: compare to 1e-12."""
    assert isinstance(actual, Decimal)
    assert abs(actual - quote_volume / volume) < Decimal("1e-12"), (actual, quote_volume / volume)


def expected_candle(rows: Sequence[Row]) -> dict[str, object]:
    """Plain-Python daily candle from trades: the independent recomputation."""
    trades = sorted(
        (r for r in rows if r.stream == "trade"), key=lambda r: (r.event_time, r.sequence_id)
    )
    prices = [t.price for t in trades]
    volume = sum((t.quantity or Decimal(0) for t in trades), Decimal(0))
    quote = sum((t.price * (t.quantity or Decimal(0)) for t in trades), Decimal(0))
    return {
        "open_price": prices[0],
        "high_price": max(prices),
        "low_price": min(prices),
        "close_price": prices[-1],
        "volume": volume,
        "quote_volume": quote,
        "trade_count": len(trades),
        "first_event_time": trades[0].event_time,
        "last_event_time": trades[-1].event_time,
    }


@pytest.fixture
def conn(pg_dsn: str) -> Iterable[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


# --- edge cases -------------------------------------------------------------------------


def test_trades_sharing_one_millisecond_are_ordered_by_trade_id(conn: psycopg.Connection) -> None:
    first_ms = utc(2024, 5, 1, 0, 0, 0, 5000)
    last_ms = utc(2024, 5, 1, 23, 59, 59, 999000)
    # Written in an order where neither insertion order nor price order gives the answer.
    copy_rows(
        conn,
        [
            Row("BTCUSDT", 102, first_ms, Decimal("60002.00")),
            Row("BTCUSDT", 100, first_ms, Decimal("60000.00")),  # open: lowest id at the first ms
            Row("BTCUSDT", 101, first_ms, Decimal("59999.00")),
            Row("BTCUSDT", 150, utc(2024, 5, 1, 12), Decimal("60500.00")),
            Row("BTCUSDT", 201, last_ms, Decimal("60100.00")),  # close: highest id at the last ms
            Row("BTCUSDT", 199, last_ms, Decimal("60300.00")),
            Row("BTCUSDT", 200, last_ms, Decimal("60200.00")),
        ],
    )
    summarize(conn, date(2024, 5, 1))
    candle = summary(conn, date(2024, 5, 1))["BTCUSDT"]
    assert candle["open_price"] == Decimal("60000.00")
    assert candle["close_price"] == Decimal("60100.00")
    assert candle["high_price"] == Decimal("60500.00")
    assert candle["low_price"] == Decimal("59999.00")
    assert candle["trade_count"] == 7
    assert candle["first_event_time"] == first_ms
    assert candle["last_event_time"] == last_ms


def test_single_trade_day(conn: psycopg.Connection) -> None:
    copy_rows(
        conn,
        [
            Row(
                "ETHUSDT",
                7,
                utc(2024, 5, 2, 8, 30),
                Decimal("3012.34000000"),
                Decimal("0.12345678"),
            )
        ],
    )
    summarize(conn, date(2024, 5, 2))
    candle = summary(conn, date(2024, 5, 2))["ETHUSDT"]
    for column in ("open_price", "high_price", "low_price", "close_price", "avg_price", "vwap"):
        assert candle[column] == Decimal("3012.34"), column
    assert candle["volume"] == Decimal("0.12345678")
    assert candle["quote_volume"] == Decimal("3012.34") * Decimal("0.12345678")
    assert candle["trade_count"] == 1
    assert candle["candle_source"] == "trade"


def test_rows_inserted_out_of_order_give_the_time_ordered_candle(conn: psycopg.Connection) -> None:
    rng = random.Random(7)  # noqa: S311 - seeded, deterministic data
    start = utc(2024, 5, 3)
    rows = [
        Row(
            symbol,
            1000 + i,
            start + timedelta(milliseconds=i * 997 + rng.randrange(3)),  # some ms shared
            Decimal(rng.randint(100_00, 200_00)) / 100,
            Decimal(rng.randint(1, 10**8)) / 10**8,
        )
        for symbol in ("BTCUSDT", "BNBUSDT")
        for i in range(2000)
    ]
    shuffled = rows[:]
    rng.shuffle(shuffled)
    for chunk_start in range(0, len(shuffled), 500):  # several "micro-batches", each unordered
        copy_rows(conn, shuffled[chunk_start : chunk_start + 500])
    summarize(conn, date(2024, 5, 3))
    got = summary(conn, date(2024, 5, 3))
    assert sorted(got) == ["BNBUSDT", "BTCUSDT"]
    for symbol in got:
        want = expected_candle([r for r in rows if r.symbol == symbol])
        for column, value in want.items():
            assert got[symbol][column] == value, (symbol, column)
        assert_vwap(got[symbol]["vwap"], want["quote_volume"], want["volume"])  # type: ignore[arg-type]


@pytest.mark.parametrize("session_time_zone", ["America/New_York", "Asia/Tokyo", "UTC"])
def test_utc_day_boundaries_whatever_the_session_time_zone(
    conn: psycopg.Connection, session_time_zone: str
) -> None:
    # 2024-03-10 is a daylight-saving switch in New York: a local day there is 23 hours.
    day = date(2024, 3, 10)
    copy_rows(
        conn,
        [
            Row("BTCUSDT", 1, utc(2024, 3, 9, 23, 59, 59, 999999), Decimal("1.00")),  # previous day
            Row(
                "BTCUSDT", 2, utc(2024, 3, 10, 0, 0, 0), Decimal("2.00")
            ),  # exactly 00:00:00.000 UTC: open
            Row(
                "BTCUSDT", 3, utc(2024, 3, 10, 4, 59, 59), Decimal("5.00")
            ),  # = 23:59:59 New York, previous local day
            Row(
                "BTCUSDT", 4, utc(2024, 3, 10, 15, 0, 0), Decimal("9.00")
            ),  # = 00:00 Tokyo next local day
            Row("BTCUSDT", 5, utc(2024, 3, 10, 23, 59, 59, 999999), Decimal("3.00")),  # close
            Row("BTCUSDT", 6, utc(2024, 3, 11, 0, 0, 0), Decimal("4.00")),  # next UTC day
        ],
    )
    conn.execute("select set_config('TimeZone', %s, false)", (session_time_zone,))
    summarize(conn, day)
    candle = summary(conn, day)["BTCUSDT"]
    assert (
        candle["open_price"],
        candle["high_price"],
        candle["low_price"],
        candle["close_price"],
    ) == (
        Decimal("2.00"),
        Decimal("9.00"),
        Decimal("2.00"),
        Decimal("3.00"),
    )
    assert candle["trade_count"] == 4
    assert candle["first_event_time"] == utc(2024, 3, 10)


def test_default_day_is_yesterday_in_utc_even_in_tokyo(conn: psycopg.Connection) -> None:
    today_utc = conn.execute("select (now() at time zone 'utc')::date").fetchone()[0]  # type: ignore[index]
    yesterday = today_utc - timedelta(days=1)
    start = datetime.combine(yesterday, datetime.min.time(), tzinfo=UTC)
    copy_rows(
        conn,
        [
            Row("BTCUSDT", 1, start, Decimal("10")),
            Row("BTCUSDT", 2, start + timedelta(hours=23, minutes=59), Decimal("11")),
        ],
    )
    conn.execute("set time zone 'Asia/Tokyo'")
    summarize(conn)
    candle = summary(conn, yesterday)["BTCUSDT"]
    assert (candle["open_price"], candle["close_price"], candle["trade_count"]) == (
        Decimal("10"),
        Decimal("11"),
        2,
    )


def test_day_with_no_rows_changes_nothing(conn: psycopg.Connection) -> None:
    summarize(conn, date(2024, 5, 4))  # no partition, no rows
    assert summary(conn, date(2024, 5, 4)) == {}
    # A summarised day whose raw rows were purged keeps its candle when re-run.
    copy_rows(conn, [Row("BTCUSDT", 1, utc(2024, 5, 5, 1), Decimal("42.5"))])
    summarize(conn, date(2024, 5, 5))
    before = summary(conn, date(2024, 5, 5))
    conn.execute("call analytics.purge_raw_prices(1, %s)", (date(2024, 5, 6),))
    assert conn.execute("select count(*) from staging.raw_prices").fetchone() == (0,)
    summarize(conn, date(2024, 5, 5))
    assert summary(conn, date(2024, 5, 5)) == before
    assert len(before) == 1


def test_tickers_give_prices_only(conn: psycopg.Connection) -> None:
    day_start = utc(2024, 5, 6)
    copy_rows(
        conn,
        [
            # BTCUSDT has trades: its ticker prices (even outside the trade range) do not count.
            Row("BTCUSDT", 1, day_start + timedelta(hours=1), Decimal("100"), Decimal("2")),
            Row("BTCUSDT", 2, day_start + timedelta(hours=2), Decimal("110"), Decimal("1")),
            Row("BTCUSDT", 1714953600000, day_start, Decimal("1"), stream="miniTicker"),
            Row(
                "BTCUSDT",
                1715039999000,
                day_start + timedelta(hours=23),
                Decimal("999"),
                stream="miniTicker",
            ),
            # XRPUSDT only has tickers: the candle comes from them, with no volume.
            Row(
                "XRPUSDT",
                1714953601000,
                day_start + timedelta(seconds=1),
                Decimal("0.51"),
                stream="miniTicker",
            ),
            Row(
                "XRPUSDT",
                1714960000000,
                day_start + timedelta(hours=3),
                Decimal("0.55"),
                stream="miniTicker",
            ),
            Row(
                "XRPUSDT",
                1714990000000,
                day_start + timedelta(hours=12),
                Decimal("0.49"),
                stream="miniTicker",
            ),
            Row(
                "XRPUSDT",
                1715030000000,
                day_start + timedelta(hours=20),
                Decimal("0.50"),
                stream="miniTicker",
            ),
        ],
    )
    summarize(conn, date(2024, 5, 6))
    got = summary(conn, date(2024, 5, 6))
    btc = got["BTCUSDT"]
    assert (btc["open_price"], btc["high_price"], btc["low_price"], btc["close_price"]) == (
        Decimal("100"),
        Decimal("110"),
        Decimal("100"),
        Decimal("110"),
    )
    assert (btc["volume"], btc["quote_volume"], btc["trade_count"]) == (
        Decimal("3"),
        Decimal("310"),
        2,
    )
    assert_vwap(btc["vwap"], Decimal("310"), Decimal("3"))
    assert btc["candle_source"] == "trade"
    xrp = got["XRPUSDT"]
    assert (xrp["open_price"], xrp["high_price"], xrp["low_price"], xrp["close_price"]) == (
        Decimal("0.51"),
        Decimal("0.55"),
        Decimal("0.49"),
        Decimal("0.50"),
    )
    assert (xrp["volume"], xrp["quote_volume"], xrp["vwap"], xrp["trade_count"]) == (0, 0, None, 0)
    assert xrp["candle_source"] == "miniTicker"


# --- idempotency --------------------------------------------------------------------------


def test_rerun_gives_identical_rows(conn: psycopg.Connection) -> None:
    rng = random.Random(11)  # noqa: S311 - seeded, deterministic data
    start = utc(2024, 5, 7)
    copy_rows(
        conn,
        [
            Row(
                symbol,
                i,
                start + timedelta(seconds=rng.randrange(86400)),
                Decimal(rng.randint(1, 99999)) / 100,
                Decimal(rng.randint(1, 10**6)) / 10**6,
            )
            for symbol in ("BTCUSDT", "ETHUSDT", "BNBUSDT")
            for i in range(3000)
        ],
    )
    summarize(conn, date(2024, 5, 7))
    first = conn.execute(
        "select * from analytics.daily_summary_dw where event_date = %s order by symbol",
        (date(2024, 5, 7),),
    ).fetchall()
    summarize(conn, date(2024, 5, 7))
    summarize(conn, date(2024, 5, 7))
    second = conn.execute(
        "select * from analytics.daily_summary_dw where event_date = %s order by symbol",
        (date(2024, 5, 7),),
    ).fetchall()
    assert len(first) == 3
    assert second == first  # every column, computed_at too: an unchanged candle is not rewritten
    # A late trade changes the candle, and the upsert replaces the row in place.
    copy_rows(conn, [Row("BTCUSDT", 99999, utc(2024, 5, 7, 23, 59, 59), Decimal("123456.78"))])
    summarize(conn, date(2024, 5, 7))
    changed = summary(conn, date(2024, 5, 7))["BTCUSDT"]
    assert changed["close_price"] == Decimal("123456.78")
    assert changed["high_price"] == Decimal("123456.78")
    assert changed["trade_count"] == 3001
    assert conn.execute("select count(*) from analytics.daily_summary_dw").fetchone() == (3,)


# --- real data ----------------------------------------------------------------------------


def _recording_rows() -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    with gzip.open(BTC_RECORDING, "rt", encoding="ascii") as handle:
        for line in handle:
            data = json.loads(line)["data"]
            trade_time = datetime.fromtimestamp(data["T"] / 1000, tz=UTC)
            event_time = datetime.fromtimestamp(data["E"] / 1000, tz=UTC)
            rows.append(
                (
                    data["s"],
                    "trade",
                    data["t"],
                    trade_time,
                    event_time,
                    Decimal(data["p"]),
                    Decimal(data["q"]),
                    data["m"],
                    event_time,
                    "ws",
                )
            )
    return rows


def _klines_day_candle() -> dict[str, object]:
    """Binance's 1-minute klines aggregated to the day: a second, independent expectation."""
    with zipfile.ZipFile(KLINES_ZIP) as archive:
        text = archive.read("BTCUSDT-1m-2020-01-01.csv").decode("ascii")
    klines = list(csv.reader(io.StringIO(text)))
    return {
        "open_price": Decimal(klines[0][1]),
        "high_price": max(Decimal(k[2]) for k in klines),
        "low_price": min(Decimal(k[3]) for k in klines),
        "close_price": Decimal(klines[-1][4]),
        "volume": sum((Decimal(k[5]) for k in klines), Decimal(0)),
        "trade_count": sum(int(k[8]) for k in klines),
    }


def test_binance_2020_01_01_candle_from_the_expanded_klines(conn: psycopg.Connection) -> None:
    rows = _recording_rows()
    conn.execute("call staging.create_raw_prices_partitions('2020-01-01', '2020-01-01')")
    columns = ", ".join(COPY_COLUMNS)
    with (
        conn.cursor() as cur,
        cur.copy(
            f"copy staging.raw_prices ({columns}) from stdin (format binary)"  # noqa: S608 - constant
        ) as copy,
    ):
        copy.set_types(list(COPY_TYPES))
        for row in rows:
            copy.write_row(row)
    conn.execute("set time zone 'America/New_York'")
    summarize(conn, date(2020, 1, 1))
    candle = summary(conn, date(2020, 1, 1))["BTCUSDT"]

    # Binance's official 1d candle for BTCUSDT on 2020-01-01.
    assert candle["open_price"] == Decimal("7195.24")
    assert candle["high_price"] == Decimal("7255.00")
    assert candle["low_price"] == Decimal("7175.15")
    assert candle["close_price"] == Decimal("7200.85")
    assert candle["volume"] == Decimal("16792.388165")
    assert candle["trade_count"] == 194_010
    # The same, recomputed from the zip's 1-minute klines.
    for column, value in _klines_day_candle().items():
        assert candle[column] == value, column
    # Quote volume and VWAP against a plain-Python sum over the same trades.
    quote = sum((r[5] * r[6] for r in rows), Decimal(0))  # type: ignore[operator]
    assert candle["quote_volume"] == quote
    assert_vwap(candle["vwap"], quote, Decimal("16792.388165"))
    assert candle["first_event_time"] == rows[0][3]
    assert candle["last_event_time"] == rows[-1][3]
