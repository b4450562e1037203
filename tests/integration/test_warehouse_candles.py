"""analytics.candles, analytics.candles_1m and the completeness columns on a real PostgreSQL.

Rows go straight into staging.raw_prices with binary COPY (test_warehouse_summary's helper).
Expected candles are computed here in plain Python from the same rows (bucket keys from epoch
microseconds, no SQL), or come from Binance's official 1-minute klines in tests/fixtures/.
"""

from __future__ import annotations

import csv
import io
import random
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from test_warehouse_summary import BTC_RECORDING, Row, copy_rows, utc

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KLINES_ZIP = ROOT / "tests" / "fixtures" / "BTCUSDT-1m-2020-01-01.zip"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MONDAY = datetime(1970, 1, 5, tzinfo=UTC)
Candle = tuple[datetime, Decimal, Decimal, Decimal, Decimal, Decimal, Decimal, int]
BUCKETS = {
    "1 minute": timedelta(minutes=1),
    "5 minutes": timedelta(minutes=5),
    "15 minutes": timedelta(minutes=15),
    "1 hour": timedelta(hours=1),
    "4 hours": timedelta(hours=4),
    "1 day": timedelta(days=1),
    "7 days": timedelta(days=7),
}


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def bucket_of(bucket: str, when: datetime) -> datetime:
    """The UTC-aligned start of the bucket holding `when`, by integer arithmetic."""
    if bucket == "1 month":
        return datetime(when.year, when.month, 1, tzinfo=UTC)
    stride = BUCKETS[bucket]
    origin = MONDAY if stride == timedelta(days=7) else EPOCH
    return origin + stride * ((when - origin) // stride)


def reference_candles(rows: Iterable[Row], bucket: str, symbol: str = "BTCUSDT") -> list[Candle]:
    """Candles from plain Python: trades when the bucket has any, else ticker prices."""
    groups: dict[datetime, list[Row]] = {}
    for row in rows:
        if row.symbol == symbol:
            groups.setdefault(bucket_of(bucket, row.event_time), []).append(row)
    out: list[Candle] = []
    for start in sorted(groups):
        trades = [r for r in groups[start] if r.stream == "trade"]
        chosen = sorted(trades or groups[start], key=lambda r: (r.event_time, r.sequence_id))
        prices = [r.price for r in chosen]
        volume = sum((r.quantity or Decimal(0) for r in trades), Decimal(0))
        quote = sum((r.price * (r.quantity or Decimal(0)) for r in trades), Decimal(0))
        out.append(
            (start, prices[0], max(prices), min(prices), prices[-1], volume, quote, len(trades))
        )
    return out


def candles(
    conn: psycopg.Connection, bucket: str, start: datetime, end: datetime, symbol: str = "BTCUSDT"
) -> list[Candle]:
    rows = conn.execute(
        "select bucket_start, open_price, high_price, low_price, close_price, volume, "
        "quote_volume, trade_count from analytics.candles(%s, %s::interval, %s, %s)",
        (symbol, bucket, start, end),
    ).fetchall()
    return [tuple(r) for r in rows]


def random_rows(seed: int, days: Sequence[date], per_day: int) -> list[Row]:
    """Trades with many same-millisecond ties, ticker-only stretches and quiet gaps."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    rows: list[Row] = []
    trade_id = 1000
    for day in days:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        offsets = sorted(rng.randrange(0, 86_400_000_000) for _ in range(per_day))
        for offset in offsets:
            when = start + timedelta(microseconds=offset - offset % 1000)  # ms, so ties happen
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                trade_id += 1
                price = Decimal(rng.randrange(9_000_00, 11_000_00)) / 100
                rows.append(
                    Row("BTCUSDT", trade_id, when, price, Decimal(rng.randrange(1, 999)) / 1000)
                )
        # ticker prices: some in minutes that have trades, some in hours that have none
        for hour in (3, 17):
            for minute in (0, 1, 30):
                when = start + timedelta(hours=hour, minutes=minute, seconds=7)
                ms = int((when - EPOCH).total_seconds() * 1000)
                rows.append(
                    Row(
                        "BTCUSDT", ms, when, Decimal(rng.randrange(9000, 11000)), None, "miniTicker"
                    )
                )
    # the ticker-only hours: no trades there
    return [r for r in rows if r.stream == "miniTicker" or r.event_time.hour not in (17,)] + [
        Row("ETHUSDT", 1, utc(2024, 5, 1, 12), Decimal("3000"))
    ]


# --- exact answers on hand-made rows ------------------------------------------------------


def test_same_millisecond_trades_are_ordered_by_trade_id_in_every_bucket(
    conn: psycopg.Connection,
) -> None:
    first_ms = utc(2024, 5, 1, 10, 0, 0, 5000)
    last_ms = utc(2024, 5, 1, 10, 0, 59, 999000)
    # neither insertion order nor price order gives the answer: only (time, trade id) does
    rows = [
        Row("BTCUSDT", 102, first_ms, Decimal("60002.00")),
        Row("BTCUSDT", 100, first_ms, Decimal("60000.00")),  # open: lowest id at the first ms
        Row("BTCUSDT", 101, first_ms, Decimal("59999.00")),
        Row("BTCUSDT", 201, last_ms, Decimal("60100.00")),  # close: highest id at the last ms
        Row("BTCUSDT", 199, last_ms, Decimal("60300.00")),
        Row("BTCUSDT", 200, last_ms, Decimal("60200.00")),
    ]
    copy_rows(conn, rows)
    for bucket in ("1 minute", "5 minutes", "1 hour", "1 day"):
        got = candles(conn, bucket, utc(2024, 5, 1), utc(2024, 5, 2))
        assert len(got) == 1
        assert got[0][1:5] == (
            Decimal("60000.00"), Decimal("60300.00"), Decimal("59999.00"), Decimal("60100.00"),
        )  # fmt: skip
        assert got[0][7] == 6
    assert got == reference_candles(rows, "1 day")


def test_bucket_edges_at_exact_boundaries(conn: psycopg.Connection) -> None:
    rows = [
        Row("BTCUSDT", 1, utc(2024, 5, 1, 0, 0, 0), Decimal("10")),  # first instant of everything
        Row("BTCUSDT", 2, utc(2024, 5, 1, 0, 4, 59, 999999), Decimal("11")),  # last µs of 00:00-05
        Row("BTCUSDT", 3, utc(2024, 5, 1, 0, 5, 0), Decimal("12")),  # first µs of 00:05-10
        Row("BTCUSDT", 4, utc(2024, 5, 1, 3, 59, 59, 999999), Decimal("13")),  # last of 00-04 h
        Row("BTCUSDT", 5, utc(2024, 5, 1, 4, 0, 0), Decimal("14")),  # first of 04-08 h
        Row("BTCUSDT", 6, utc(2024, 5, 1, 23, 59, 59, 999999), Decimal("15")),  # last of the day
        Row("BTCUSDT", 7, utc(2024, 5, 2, 0, 0, 0), Decimal("16")),  # next day
    ]
    copy_rows(conn, rows)
    for bucket in ("1 minute", "5 minutes", "15 minutes", "1 hour", "4 hours", "1 day"):
        got = candles(conn, bucket, utc(2024, 5, 1), utc(2024, 5, 3))
        assert got == reference_candles(rows, bucket), bucket
    starts = [c[0] for c in candles(conn, "5 minutes", utc(2024, 5, 1), utc(2024, 5, 3))]
    assert starts[:3] == [utc(2024, 5, 1, 0, 0), utc(2024, 5, 1, 0, 5), utc(2024, 5, 1, 3, 55)]
    assert [c[7] for c in candles(conn, "4 hours", utc(2024, 5, 1), utc(2024, 5, 3))] == [
        2 + 1 + 1, 1, 1, 1,
    ]  # fmt: skip
    # buckets STARTING in [from, to), each complete: from 00:05 drops the 00:00 bucket;
    # to = 00:05:00.000001 keeps the 00:05 bucket whole; from = 00:04 starts at 00:05
    assert [
        c[0] for c in candles(conn, "5 minutes", utc(2024, 5, 1, 0, 5), utc(2024, 5, 1, 0, 10))
    ] == [utc(2024, 5, 1, 0, 5)]
    assert candles(conn, "1 day", utc(2024, 5, 1), utc(2024, 5, 1, 0, 0, 0, 1))[0][7] == 6
    assert candles(conn, "1 hour", utc(2024, 5, 1, 0, 30), utc(2024, 5, 1, 1)) == []
    assert candles(conn, "1 day", utc(2024, 5, 2), utc(2024, 5, 2)) == []


def test_empty_buckets_are_absent_not_zero_rows(conn: psycopg.Connection) -> None:
    rows = [
        Row("BTCUSDT", 1, utc(2024, 5, 1, 9, 0, 10), Decimal("10")),
        Row("BTCUSDT", 2, utc(2024, 5, 1, 9, 10, 10), Decimal("11")),
        Row("BTCUSDT", 3, utc(2024, 5, 3, 9, 10, 10), Decimal("12")),  # 2024-05-02 has nothing
    ]
    copy_rows(conn, rows)
    assert [c[0] for c in candles(conn, "1 minute", utc(2024, 5, 1), utc(2024, 5, 4))] == [
        utc(2024, 5, 1, 9, 0), utc(2024, 5, 1, 9, 10), utc(2024, 5, 3, 9, 10),
    ]  # fmt: skip
    assert [c[0] for c in candles(conn, "1 day", utc(2024, 5, 1), utc(2024, 5, 4))] == [
        utc(2024, 5, 1), utc(2024, 5, 3),
    ]  # fmt: skip
    assert candles(conn, "1 minute", utc(2024, 5, 1), utc(2024, 5, 4), symbol="NOPEUSDT") == []


def test_a_session_in_another_time_zone_gets_the_same_utc_buckets(
    conn: psycopg.Connection, pg_dsn: str
) -> None:
    rows = random_rows(7, [date(2024, 5, 1), date(2024, 5, 2)], per_day=400)
    copy_rows(conn, rows)
    conn.execute("call analytics.refresh_candles_1m('2024-05-01')")  # one day from candles_1m
    expected = {
        b: candles(conn, b, utc(2024, 4, 29), utc(2024, 5, 4))
        for b in ("1 hour", "1 day", "1 month")
    }
    for zone in ("Asia/Kathmandu", "America/St_Johns", "Pacific/Kiritimati"):
        with psycopg.connect(pg_dsn, autocommit=True, options=f"-c TimeZone={zone}") as other:
            assert other.execute("show timezone").fetchone() == (zone,)
            for bucket, want in expected.items():
                # the same instants, passed as timestamptz: same rows whatever the session zone
                assert candles(other, bucket, utc(2024, 4, 29), utc(2024, 5, 4)) == want, (
                    zone,
                    bucket,
                )
            day_starts = other.execute(
                "select bucket_start at time zone 'utc' from analytics.candles("
                "'BTCUSDT', '1 day', '2024-05-01 00:00+00', '2024-05-03 00:00+00')"
            ).fetchall()
            naive = [datetime(2024, 5, 1), datetime(2024, 5, 2)]  # noqa: DTZ001 - UTC wall clock
            assert day_starts == [(d,) for d in naive]
    assert expected["1 day"] == reference_candles(rows, "1 day")


def test_every_timeframe_equals_plain_python_from_raw_from_candles_1m_and_mixed(
    conn: psycopg.Connection,
) -> None:
    days = [date(2024, 4, 30), date(2024, 5, 1), date(2024, 5, 2)]
    rows = random_rows(11, days, per_day=600)
    copy_rows(conn, rows)
    span = (utc(2024, 4, 1), utc(2024, 6, 1))
    from_raw = {b: candles(conn, b, *span) for b in [*BUCKETS, "1 month"]}
    for bucket, got in from_raw.items():
        assert got == reference_candles(rows, bucket), bucket
    # one day fully materialised, one up to 13:37 only, one not at all: same answers
    conn.execute("call analytics.refresh_candles_1m('2024-04-30')")
    conn.execute("call analytics.refresh_candles_1m('2024-05-01', '2024-05-01 13:37:30+00')")
    assert conn.execute(
        "select event_date, materialised_until from analytics.candles_1m_coverage order by 1"
    ).fetchall() == [
        (date(2024, 4, 30), utc(2024, 5, 1)),
        (date(2024, 5, 1), utc(2024, 5, 1, 13, 37)),
    ]
    for bucket, want in from_raw.items():
        assert candles(conn, bucket, *span) == want, bucket
    # the ticker-only hour 17: ticker candles (no volume, no trades), never mixed with trades
    hour_17 = [c for c in from_raw["1 hour"] if c[0] == utc(2024, 5, 2, 17)]
    assert len(hour_17) == 1 and hour_17[0][5:] == (Decimal(0), Decimal(0), 0)
    assert all(c[7] > 0 for c in from_raw["1 hour"] if c[0].hour == 3)  # trades beat tickers
    assert candles(conn, "1 day", utc(2024, 5, 1), utc(2024, 5, 2), symbol="ETHUSDT")[0][7] == 1


def test_one_day_bucket_equals_the_daily_summary(conn: psycopg.Connection) -> None:
    rows = random_rows(5, [date(2024, 5, 1)], per_day=500)
    copy_rows(conn, rows)
    conn.execute("call analytics.get_daily_summary('2024-05-01')")
    summary = conn.execute(
        "select analytics.utc_day_start(event_date), open_price, high_price, low_price, "
        "close_price, volume, quote_volume, vwap, trade_count from analytics.daily_summary_dw "
        "where symbol = 'BTCUSDT'"
    ).fetchall()
    got = conn.execute(
        "select * from analytics.candles('BTCUSDT', '1 day', '2024-05-01', '2024-05-02')"
    ).fetchall()
    assert got == summary


def test_unsupported_buckets_and_nulls_are_clear_errors(conn: psycopg.Connection) -> None:
    for bucket in ("7 minutes", "90 seconds", "25 hours", "2 months", "0 minutes", "-1 hour"):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="unsupported bucket"):
            candles(conn, bucket, utc(2024, 5, 1), utc(2024, 5, 2))
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        conn.execute("select * from analytics.candles(null, '1 minute', now(), now())")
    # '30 days' is whole days (epoch-aligned), not a month
    assert candles(conn, "30 days", utc(2024, 5, 1), utc(2024, 6, 1)) == []


# --- candles_1m: materialised, idempotent, kept after the purge --------------------------


def test_candles_1m_survive_the_purge_and_longer_buckets_come_from_them(
    conn: psycopg.Connection,
) -> None:
    days = [date(2024, 5, 1) + timedelta(days=i) for i in range(3)]
    rows = random_rows(3, days, per_day=300)
    copy_rows(conn, rows)
    span = (utc(2024, 5, 1), utc(2024, 5, 4))
    before = {b: candles(conn, b, *span) for b in ("1 minute", "1 hour", "1 day", "7 days")}
    conn.execute("call analytics.refresh_candles_1m('2024-05-01')")  # day 1 by the DAG
    # the purge materialises what is not yet (days 2 and 3), then drops all three partitions
    conn.execute("call analytics.purge_raw_prices(1, '2024-05-10')")
    assert conn.execute("select count(*) from staging.raw_prices").fetchone() == (0,)
    assert conn.execute(
        "select count(*) from analytics.candles_1m_coverage where raw_purged_at is not null"
    ).fetchone() == (3,)
    for bucket, want in before.items():
        assert candles(conn, bucket, *span) == want, bucket
    assert before["1 day"] == reference_candles(rows, "1 day")
    # late rows recreating a purged day must not shrink its history
    copy_rows(conn, [Row("BTCUSDT", 1, utc(2024, 5, 2, 12), Decimal("1"))])
    conn.execute("call analytics.refresh_candles_1m('2024-05-02')")
    conn.execute("call analytics.get_daily_summary('2024-05-02')")
    assert candles(conn, "1 day", *span) == before["1 day"]


def test_refresh_is_idempotent_and_follows_changed_rows(conn: psycopg.Connection) -> None:
    rows = random_rows(9, [date(2024, 5, 1)], per_day=200)
    copy_rows(conn, rows)
    conn.execute("call analytics.refresh_candles_1m('2024-05-01')")
    first = conn.execute("select * from analytics.candles_1m order by 1, 2").fetchall()
    conn.execute("call analytics.refresh_candles_1m('2024-05-01')")
    assert conn.execute("select * from analytics.candles_1m order by 1, 2").fetchall() == first
    # a late trade in a materialised minute, and a minute whose rows disappeared
    late = Row("BTCUSDT", 99_999_999, utc(2024, 5, 1, 5, 0, 30), Decimal("99999"))
    copy_rows(conn, [late])
    gone = rows[0]
    conn.execute(
        "delete from staging.raw_prices where symbol = %s and event_time >= %s and event_time < %s",
        (
            gone.symbol,
            bucket_of("1 minute", gone.event_time),
            bucket_of("1 minute", gone.event_time) + timedelta(minutes=1),
        ),
    )
    gone_minute = bucket_of("1 minute", gone.event_time)
    remaining = [
        r
        for r in rows
        if not (r.symbol == gone.symbol and bucket_of("1 minute", r.event_time) == gone_minute)
    ] + [late]
    conn.execute("call analytics.refresh_candles_1m('2024-05-01')")
    stored = conn.execute(
        "select bucket_start, open_price, high_price, low_price, close_price, volume, "
        "quote_volume, trade_count from analytics.candles_1m where symbol = 'BTCUSDT' "
        "order by bucket_start"
    ).fetchall()
    assert [tuple(r) for r in stored] == reference_candles(remaining, "1 minute")


# --- during the day: incremental materialisation, exact under late rows ------------------

RECORD_PROGRESS = "call staging.record_consumer_progress('consumer_prices', 'q1', 1, 0, now())"


def stored_1m(conn: psycopg.Connection, symbol: str = "BTCUSDT") -> list[Candle]:
    rows = conn.execute(
        "select bucket_start, open_price, high_price, low_price, close_price, volume, "
        "quote_volume, trade_count from analytics.candles_1m where symbol = %s "
        "order by bucket_start",
        (symbol,),
    ).fetchall()
    return [tuple(r) for r in rows]


def covered_until(conn: psycopg.Connection, day: date) -> datetime | None:
    row = conn.execute(
        "select materialised_until from analytics.candles_1m_coverage where event_date = %s",
        (day,),
    ).fetchone()
    return None if row is None else row[0]


def test_the_recent_refresh_materialises_closed_minutes_up_to_the_consumer_progress(
    conn: psycopg.Connection,
) -> None:
    day = date(2024, 5, 1)
    rows = [r for r in random_rows(21, [day], per_day=600) if r.symbol == "BTCUSDT"]
    morning = [r for r in rows if r.event_time < utc(2024, 5, 1, 10)]
    copy_rows(conn, morning)
    conn.execute(RECORD_PROGRESS)  # the consumer's newest committed event: the morning's last
    conn.execute("call analytics.refresh_candles_1m_recent(interval '2 minutes')")
    newest = max(r.event_time for r in morning)
    until = bucket_of("1 minute", newest - timedelta(minutes=2))
    assert covered_until(conn, day) == until
    assert stored_1m(conn) == [c for c in reference_candles(morning, "1 minute") if c[0] < until]
    span = (utc(2024, 5, 1), utc(2024, 5, 2))
    for bucket in ("1 minute", "1 hour"):
        assert candles(conn, bucket, *span) == reference_candles(morning, bucket), bucket

    # the rest of the day arrives; the next run goes on from where the last one stopped
    copy_rows(conn, [r for r in rows if r.event_time >= utc(2024, 5, 1, 10)])
    conn.execute(RECORD_PROGRESS)
    conn.execute("call analytics.refresh_candles_1m_recent(interval '0 seconds')")
    newest = max(r.event_time for r in rows)
    until = bucket_of("1 minute", newest)
    assert covered_until(conn, day) == until
    assert stored_1m(conn) == [c for c in reference_candles(rows, "1 minute") if c[0] < until]
    for bucket in ("1 minute", "1 hour", "1 day"):
        assert candles(conn, bucket, *span) == reference_candles(rows, bucket), bucket
    with pytest.raises(psycopg.errors.RaiseException, match="p_grace must be >= 0"):
        conn.execute("call analytics.refresh_candles_1m_recent(interval '-1 minute')")


def test_a_late_row_into_a_materialised_minute_is_served_exactly_then_re_materialised(
    conn: psycopg.Connection,
) -> None:
    day = date(2024, 5, 1)
    rows = [r for r in random_rows(22, [day], per_day=400) if r.symbol == "BTCUSDT"]
    copy_rows(conn, rows)
    conn.execute("call analytics.refresh_candles_1m('2024-05-01')")
    assert conn.execute("select count(*) from analytics.candles_1m_dirty").fetchone() == (0,)
    # a late trade into a materialised minute (a REST fill, a late event): the highest price,
    # the same millisecond as the minute's first trade with a lower trade id (the new open)
    first = min(rows, key=lambda r: (r.event_time, r.sequence_id))
    late = Row("BTCUSDT", first.sequence_id - 500, first.event_time, Decimal("123456.78"))
    copy_rows(conn, [late])
    # and a minute whose rows are deleted
    gone = bucket_of("1 minute", rows[len(rows) // 2].event_time)
    conn.execute(
        "delete from staging.raw_prices where symbol = 'BTCUSDT' and event_time >= %s "
        "and event_time < %s",
        (gone, gone + timedelta(minutes=1)),
    )
    now_rows = [r for r in rows if bucket_of("1 minute", r.event_time) != gone] + [late]
    assert conn.execute(
        "select symbol, bucket_start from analytics.candles_1m_dirty order by 2"
    ).fetchall() == [("BTCUSDT", bucket_of("1 minute", late.event_time)), ("BTCUSDT", gone)]
    span = (utc(2024, 5, 1), utc(2024, 5, 2))
    for bucket in ("1 minute", "1 hour", "1 day"):
        assert candles(conn, bucket, *span) == reference_candles(now_rows, bucket), bucket
    # the next incremental run re-materialises exactly the marked minutes
    conn.execute(RECORD_PROGRESS)
    conn.execute("call analytics.refresh_candles_1m_recent()")
    assert conn.execute("select count(*) from analytics.candles_1m_dirty").fetchone() == (0,)
    assert stored_1m(conn) == reference_candles(now_rows, "1 minute")
    assert candles(conn, "1 hour", *span) == reference_candles(now_rows, "1 hour")


def test_a_writer_in_flight_during_a_refresh_is_never_lost(pg_dsn: str) -> None:
    """A refresh waits for the writers that checked the coverage before it; a writer during a
    refresh marks its minutes, materialised or not."""
    with (
        psycopg.connect(pg_dsn, autocommit=True) as conn,
        psycopg.connect(pg_dsn) as writer,
        psycopg.connect(pg_dsn, autocommit=True) as refresher,
    ):
        base = [Row("BTCUSDT", i, utc(2024, 5, 1, 1, i), Decimal(100 + i)) for i in range(10)]
        copy_rows(conn, base)
        conn.execute("call analytics.refresh_candles_1m('2024-05-01', '2024-05-01 01:05+00')")
        # an open writer transaction: a row in 01:07, not materialised yet
        in_flight = Row("BTCUSDT", 100, utc(2024, 5, 1, 1, 7, 30), Decimal("999"))
        copy_rows(writer, [in_flight])
        refresher.execute("set lock_timeout = '2s'")
        with pytest.raises(psycopg.errors.LockNotAvailable):  # it waits for the writer
            refresher.execute("call analytics.refresh_candles_1m('2024-05-01')")
        writer.commit()
        refresher.execute("set lock_timeout = 0")
        refresher.execute("call analytics.refresh_candles_1m('2024-05-01')")
        assert stored_1m(conn) == reference_candles([*base, in_flight], "1 minute")

        # a refresh reading the rows (it holds the lock) while a writer adds to a minute it
        # may not see: the writer marks that minute although it is not materialised yet
        refresher.execute("begin")
        refresher.execute("select pg_advisory_xact_lock(hashtext('candles_1m.refresh'))")
        during = Row("BTCUSDT", 200, utc(2024, 5, 2, 0, 0, 1), Decimal("5"))
        copy_rows(writer, [during])
        writer.commit()
        refresher.execute("rollback")
        assert conn.execute(
            "select symbol, bucket_start from analytics.candles_1m_dirty"
        ).fetchall() == [("BTCUSDT", utc(2024, 5, 2))]


# --- Binance's own klines ----------------------------------------------------------------


def official_klines() -> list[list[str]]:
    with zipfile.ZipFile(KLINES_ZIP) as archive:
        (name,) = archive.namelist()
        return list(csv.reader(io.TextIOWrapper(archive.open(name), encoding="ascii")))


def load_btc_day(conn: psycopg.Connection) -> None:
    import gzip
    import json

    rows = []
    with gzip.open(BTC_RECORDING, "rt", encoding="ascii") as handle:
        for line in handle:
            data = json.loads(line)["data"]
            when = datetime.fromtimestamp(data["T"] / 1000, tz=UTC)
            rows.append(Row(data["s"], data["t"], when, Decimal(data["p"]), Decimal(data["q"])))
    copy_rows(conn, rows)


def test_all_1440_minutes_of_2020_01_01_equal_binance_from_raw_and_materialised(
    conn: psycopg.Connection,
) -> None:
    load_btc_day(conn)
    official = [
        (
            datetime.fromtimestamp(int(k[0]) / 1000, tz=UTC),
            Decimal(k[1]), Decimal(k[2]), Decimal(k[3]), Decimal(k[4]), Decimal(k[5]), int(k[8]),
        )
        for k in official_klines()
    ]  # fmt: skip
    assert len(official) == 1440

    def ours() -> list[tuple[object, ...]]:
        got = candles(conn, "1 minute", utc(2020, 1, 1), utc(2020, 1, 2))
        return [(c[0], *c[1:6], c[7]) for c in got]

    assert ours() == official  # from staging.raw_prices
    conn.execute("call analytics.refresh_candles_1m('2020-01-01')")
    assert ours() == official  # from analytics.candles_1m
    day = candles(conn, "1 day", utc(2020, 1, 1), utc(2020, 1, 2))
    assert [(c[1], c[2], c[3], c[4], c[5], c[7]) for c in day] == [
        (
            Decimal("7195.24"), Decimal("7255.00"), Decimal("7175.15"), Decimal("7200.85"),
            Decimal("16792.388165"), 194_010,
        )
    ]  # fmt: skip


# --- completeness stored with the candle -------------------------------------------------


def test_trade_id_completeness_is_stored_with_the_candle(conn: psycopg.Connection) -> None:
    day = utc(2024, 5, 1)
    ids = [*range(100, 110), *range(113, 120), 150]  # missing 110..112 and 120..149
    rows = [Row("BTCUSDT", i, day + timedelta(seconds=i), Decimal("10")) for i in ids]
    rows.append(Row("ETHUSDT", 7, day, Decimal("3000")))
    copy_rows(conn, rows)
    conn.execute(
        "update staging.raw_prices set source = 'rest' where symbol = 'BTCUSDT' "
        "and sequence_id in (113, 114)"
    )
    copy_rows(conn, [Row("XRPUSDT", 1, day, Decimal("0.5"), None, "miniTicker")])
    conn.execute("call analytics.get_daily_summary('2024-05-01')")
    got = {
        r[0]: r[1:]
        for r in conn.execute(
            "select symbol, first_trade_id, last_trade_id, expected_trade_ids, trade_count, "
            "missing_trade_ids, missing_trade_ranges, rest_filled_trades "
            "from analytics.daily_candles where event_date = '2024-05-01'"
        )
    }
    assert got["BTCUSDT"] == (100, 150, 51, 18, 33, [[110, 112], [120, 149]], 2)
    assert got["ETHUSDT"] == (7, 7, 1, 1, 0, [], 0)
    assert got["XRPUSDT"] == (None, None, None, 0, None, None, None)  # ticker candle


# --- reconciliation ----------------------------------------------------------------------


def store_official_klines(conn: psycopg.Connection, drop_minute: int | None = None) -> None:
    """Binance's official 1m klines for 2020-01-01 and the 1d kline they add up to."""
    klines = official_klines()
    with conn.cursor() as cur:
        for k in klines:
            if drop_minute is not None and int(k[0]) == 1577836800000 + drop_minute * 60_000:
                continue
            cur.execute(
                "insert into analytics.exchange_klines values ('BTCUSDT', '1m', "
                "to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0), %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s)",
                (int(k[0]), int(k[6]), *k[1:6], k[7], int(k[8]), k[9], k[10]),
            )
        cur.execute(
            "insert into analytics.exchange_klines values ('BTCUSDT', '1d', '2020-01-01', "
            "'2020-01-01 23:59:59.999+00', %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                klines[0][1],
                max(Decimal(k[2]) for k in klines),
                min(Decimal(k[3]) for k in klines),
                klines[-1][4],
                *(sum(Decimal(k[i]) for k in klines) for i in (5, 7)),
                sum(int(k[8]) for k in klines),
                *(sum(Decimal(k[i]) for k in klines) for i in (9, 10)),
            ),
        )


def reconciliation(conn: psycopg.Connection) -> tuple[object, ...]:
    row = conn.execute(
        "select reconciliation_status, exchange_open, exchange_high, exchange_low, "
        "exchange_close, exchange_volume, exchange_trade_count, mismatched_minutes "
        "from analytics.daily_candles where event_date = '2020-01-01' and symbol = 'BTCUSDT'"
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_reconcile_day_statuses_and_the_minute_that_differs(conn: psycopg.Connection) -> None:
    load_btc_day(conn)
    conn.execute("call analytics.get_daily_summary('2020-01-01')")
    conn.execute("call analytics.refresh_candles_1m('2020-01-01')")
    assert reconciliation(conn)[0] is None  # not checked yet
    conn.execute("call analytics.reconcile_day('2020-01-01', 'BTCUSDT')")
    assert reconciliation(conn)[0] == "unverified"  # no exchange klines stored
    store_official_klines(conn)
    conn.execute("call analytics.reconcile_day('2020-01-01', 'BTCUSDT')")
    assert reconciliation(conn) == (
        "reconciled", Decimal("7195.24"), Decimal("7255.00"), Decimal("7175.15"),
        Decimal("7200.85"), Decimal("16792.388165"), 194_010, 0,
    )  # fmt: skip

    # minute 00:37's trades vanish: the day and exactly that minute differ
    conn.execute(
        "delete from staging.raw_prices where event_time >= '2020-01-01 00:37+00' "
        "and event_time < '2020-01-01 00:38+00'"
    )
    conn.execute("call analytics.get_daily_summary('2020-01-01')")
    assert reconciliation(conn)[0] is None  # the candle changed: its old check no longer counts
    conn.execute("call analytics.refresh_candles_1m('2020-01-01')")
    conn.execute("call analytics.reconcile_day('2020-01-01', 'BTCUSDT')")
    assert reconciliation(conn)[0] == "mismatch"
    assert reconciliation(conn)[7] == 1
    (diffs,) = conn.execute(
        "select differences from analytics.daily_reconciliation where symbol = 'BTCUSDT'"
    ).fetchone()  # type: ignore[misc]
    assert [(d["interval"], d["open_time"][:16]) for d in diffs] == [
        ("1d", "2020-01-01T00:00"), ("1m", "2020-01-01T00:37"),
    ]  # fmt: skip
    assert diffs[1]["ours"] is None and diffs[1]["fields"][-1] == "trade_count"

    conn.execute("call analytics.reconcile_day('2020-01-01', 'BTCUSDT', 'unreachable', 'HTTP 503')")
    assert conn.execute(
        "select reconciliation_status, reconciliation_detail from analytics.daily_candles"
    ).fetchone() == ("unverified", "HTTP 503")
    conn.execute("call analytics.reconcile_day('2020-01-01', 'BTCUSDT', 'open')")
    assert reconciliation(conn)[0] == "incomplete"


def test_ticker_only_candles_are_unverified(conn: psycopg.Connection) -> None:
    copy_rows(conn, [Row("XRPUSDT", 1, utc(2024, 5, 1, 1), Decimal("0.5"), None, "miniTicker")])
    conn.execute("call analytics.get_daily_summary('2024-05-01')")
    conn.execute("call analytics.reconcile_day('2024-05-01', 'XRPUSDT')")
    assert conn.execute(
        "select reconciliation_status from analytics.daily_candles where symbol = 'XRPUSDT'"
    ).fetchone() == ("unverified",)


# --- the consumer's progress record (CONTRACT 3) ------------------------------------------


def test_consumer_progress_moves_changed_at_only_when_the_newest_event_moves(
    conn: psycopg.Connection,
) -> None:
    copy_rows(conn, [Row("BTCUSDT", 1, utc(2024, 5, 1, 1), Decimal("1"))])
    record = "call staging.record_consumer_progress('consumer_prices', 'q1', %s, %s, now())"
    conn.execute(record, (1, 5))
    first = conn.execute(
        "select newest_event_time, changed_at from staging.consumer_symbol_progress"
    ).fetchone()
    assert first is not None and first[0] == utc(2024, 5, 1, 1)
    conn.execute(record, (2, 0))  # nothing new: changed_at stays
    assert (
        conn.execute(
            "select newest_event_time, changed_at from staging.consumer_symbol_progress"
        ).fetchone()
        == first
    )
    copy_rows(conn, [Row("BTCUSDT", 2, utc(2024, 5, 1, 2), Decimal("1"))])
    conn.execute(record, (3, 0))
    newest, changed = conn.execute(
        "select newest_event_time, changed_at from staging.consumer_symbol_progress"
    ).fetchone()  # type: ignore[misc]
    assert newest == utc(2024, 5, 1, 2) and changed > first[1]
    assert conn.execute(
        "select consumer, query_id, last_batch_id, kafka_lag from staging.consumer_progress"
    ).fetchall() == [("consumer_prices", "q1", 3, 0)]
