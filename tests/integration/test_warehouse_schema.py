"""init.sql on a real PostgreSQL: re-applying it, partitions, retention, roles and the views.

Uses the pg_dsn fixture (a fresh database with init.sql applied, connected as the owner).
Expected partition sets and view rows are written out by hand in each test.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.integration

INIT_SQL = Path(__file__).resolve().parents[2] / "init.sql"


@pytest.fixture
def conn(pg_dsn: str) -> Iterable[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def insert_trade(
    conn: psycopg.Connection,
    symbol: str,
    trade_id: int,
    event_time: datetime,
    price: str,
    stream: str = "trade",
    price_change: str | None = None,
) -> None:
    day = event_time.astimezone(UTC).date()
    conn.execute("call staging.create_raw_prices_partitions(%s, %s)", (day, day))
    conn.execute(
        """
        insert into staging.raw_prices (symbol, stream, sequence_id, event_time,
            exchange_event_time,
            price, quantity, is_buyer_maker, previous_price, price_change, received_at, source)
        values (%s, %s, %s, %s, %s, %s, %s, %s, null, %s, %s, 'ws')
        """,
        (
            symbol,
            stream,
            trade_id,
            event_time,
            event_time,
            Decimal(price),
            Decimal("1") if stream == "trade" else None,
            False if stream == "trade" else None,
            Decimal(price_change) if price_change is not None else None,
            event_time,
        ),
    )


def partition_days(conn: psycopg.Connection) -> list[date]:
    names = conn.execute(
        """
        select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent = 'staging.raw_prices'::regclass order by 1
        """
    ).fetchall()
    return [date.fromisoformat(name.removeprefix("raw_prices_p")) for (name,) in names]


def test_init_sql_applies_twice_and_keeps_data(conn: psycopg.Connection) -> None:
    insert_trade(conn, "BTCUSDT", 1, datetime(2024, 6, 1, 12, tzinfo=UTC), "100.5")
    conn.execute(INIT_SQL.read_text())  # second application, as the owner like the stack does
    assert conn.execute("select count(*) from staging.raw_prices").fetchone() == (1,)
    assert partition_days(conn) == [date(2024, 6, 1)]


def test_raw_prices_rejects_a_duplicate_event(conn: psycopg.Connection) -> None:
    moment = datetime(2024, 6, 1, 12, tzinfo=UTC)
    insert_trade(conn, "BTCUSDT", 1, moment, "100.5")
    with pytest.raises(psycopg.errors.UniqueViolation):
        insert_trade(conn, "BTCUSDT", 1, moment, "100.5")


def test_partitions_cover_utc_days_whatever_the_session_time_zone(conn: psycopg.Connection) -> None:
    conn.execute("set time zone 'Asia/Tokyo'")
    conn.execute("call staging.create_raw_prices_partitions('2024-06-01', '2024-06-03')")
    conn.execute(
        "call staging.create_raw_prices_partitions('2024-06-02', '2024-06-04')"
    )  # overlap: no error
    assert partition_days(conn) == [date(2024, 6, d) for d in (1, 2, 3, 4)]
    conn.execute("set time zone 'UTC'")
    bounds = conn.execute(
        "select pg_get_expr(c.relpartbound, c.oid) from pg_class c "
        "where c.relname = 'raw_prices_p20240602'"
    ).fetchone()
    assert bounds == ("FOR VALUES FROM ('2024-06-02 00:00:00+00') TO ('2024-06-03 00:00:00+00')",)
    # The last microsecond of a day and midnight land in different partitions.
    insert_trade(conn, "BTCUSDT", 1, datetime(2024, 6, 2, 23, 59, 59, 999999, tzinfo=UTC), "1")
    insert_trade(conn, "BTCUSDT", 2, datetime(2024, 6, 3, tzinfo=UTC), "1")
    rows = conn.execute(
        "select tableoid::regclass::text, sequence_id from staging.raw_prices order by sequence_id"
    ).fetchall()
    assert rows == [("staging.raw_prices_p20240602", 1), ("staging.raw_prices_p20240603", 2)]


def test_ensure_partitions_makes_today_to_today_plus_three(conn: psycopg.Connection) -> None:
    today = conn.execute("select (now() at time zone 'utc')::date").fetchone()[0]  # type: ignore[index]
    conn.execute("call staging.ensure_raw_prices_partitions()")
    assert partition_days(conn) == [today + timedelta(days=d) for d in range(4)]


def test_purge_keeps_exactly_the_last_seven_days(conn: psycopg.Connection) -> None:
    reference = date(2024, 6, 10)
    days = [reference - timedelta(days=d) for d in range(9, -1, -1)]  # 2024-06-01 .. 2024-06-10
    for n, day in enumerate(days):
        insert_trade(
            conn, "BTCUSDT", n, datetime.combine(day, datetime.min.time(), tzinfo=UTC), "10"
        )
    conn.execute("call staging.create_raw_prices_partitions('2024-06-11', '2024-06-13')")  # ahead
    conn.execute("call analytics.get_daily_summary('2024-06-01')")
    conn.execute("set time zone 'America/New_York'")
    conn.execute("call analytics.purge_raw_prices(7, '2024-06-10')")
    kept = [date(2024, 6, d) for d in range(4, 14)]  # 06-04 .. 06-10 (7 days) + 3 ahead
    assert partition_days(conn) == kept
    remaining = conn.execute(
        "select (event_time at time zone 'utc')::date from staging.raw_prices order by 1"
    ).fetchall()
    assert [r[0] for r in remaining] == [date(2024, 6, d) for d in range(4, 11)]
    # Candles are never purged.
    assert conn.execute("select count(*) from analytics.daily_summary_dw").fetchone() == (1,)
    conn.execute("call analytics.purge_raw_prices(7, '2024-06-10')")  # again: nothing more
    assert partition_days(conn) == kept


def test_purge_default_window_is_relative_to_the_utc_date(conn: psycopg.Connection) -> None:
    today = conn.execute("select (now() at time zone 'utc')::date").fetchone()[0]  # type: ignore[index]
    conn.execute(
        "call staging.create_raw_prices_partitions(%s, %s)", (today - timedelta(days=9), today)
    )
    conn.execute("call analytics.purge_raw_prices()")
    assert partition_days(conn) == [today - timedelta(days=d) for d in range(6, -1, -1)]
    with pytest.raises(psycopg.errors.RaiseException, match="keep_days must be >= 1"):
        conn.execute("call analytics.purge_raw_prices(0)")


def test_roles_writer_inserts_analyst_only_reads(conn: psycopg.Connection) -> None:
    insert_trade(conn, "BTCUSDT", 1, datetime(2024, 6, 1, 1, tzinfo=UTC), "100")
    conn.execute("call analytics.get_daily_summary('2024-06-01')")

    conn.execute("set role pipeline_writer")
    conn.execute("call staging.create_raw_prices_partitions('2024-06-02', '2024-06-02')")
    insert_trade(conn, "BTCUSDT", 2, datetime(2024, 6, 2, 1, tzinfo=UTC), "101")
    assert conn.execute("select count(*) from staging.raw_prices").fetchone() == (2,)
    conn.execute("update staging.feed_gaps set reason = reason")  # its gap upsert may update
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("delete from staging.raw_prices")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("update staging.raw_prices set price = price")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from analytics.daily_summary_dw")
    conn.execute("reset role")

    conn.execute("set role pipeline_analyst")
    assert conn.execute("select count(*) from analytics.daily_candles").fetchone() == (1,)
    assert conn.execute("select count(*) from analytics.latest_prices").fetchone() == (1,)
    assert conn.execute("select count(*) from staging.raw_prices").fetchone() == (2,)
    # A partition made later (by the writer through the procedure) is readable directly too.
    assert conn.execute("select count(*) from staging.raw_prices_p20240602").fetchone() == (1,)
    for statement in (
        "insert into analytics.daily_summary_dw (event_date, symbol) values ('2024-01-01', 'X')",
        "delete from staging.raw_prices",
        "call analytics.purge_raw_prices(1)",
        "call staging.create_raw_prices_partitions('2030-01-01', '2030-01-01')",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
    conn.execute("reset role")


def test_latest_prices_is_the_newest_row_per_symbol_and_stream(conn: psycopg.Connection) -> None:
    t0 = datetime(2024, 6, 1, 10, tzinfo=UTC)
    insert_trade(conn, "BTCUSDT", 5, t0, "100")
    insert_trade(conn, "BTCUSDT", 7, t0 + timedelta(days=1), "103", price_change="1")  # newest ms
    insert_trade(conn, "BTCUSDT", 6, t0 + timedelta(days=1), "102")  # same ms, lower id
    insert_trade(conn, "ETHUSDT", 1, t0 + timedelta(hours=1), "50")
    insert_trade(
        conn,
        "ETHUSDT",
        int(t0.timestamp() * 1000),
        t0 + timedelta(hours=2),
        "51",
        stream="miniTicker",
    )
    rows = conn.execute(
        "select symbol, stream, last_price, price_change, sequence_id "
        "from analytics.latest_prices order by 1, 2"
    ).fetchall()
    assert rows == [
        ("BTCUSDT", "trade", Decimal("103"), Decimal("1"), 7),
        ("ETHUSDT", "miniTicker", Decimal("51"), None, int(t0.timestamp() * 1000)),
        ("ETHUSDT", "trade", Decimal("50"), None, 1),
    ]


def test_daily_candles_view_formats_the_summary(conn: psycopg.Connection) -> None:
    insert_trade(conn, "BTCUSDT", 1, datetime(2024, 6, 1, 0, 0, 1, tzinfo=UTC), "7195.24000000")
    insert_trade(conn, "BTCUSDT", 2, datetime(2024, 6, 1, 23, 59, tzinfo=UTC), "7200.85000000")
    conn.execute("call analytics.get_daily_summary('2024-06-01')")
    conn.execute("set time zone 'Asia/Tokyo'")
    row = conn.execute(
        "select open::text, close::text, change::text, change_pct::text, volume::text, "
        "trade_count, "
        "first_event_utc::text from analytics.daily_candles"
    ).fetchone()
    assert row == ("7195.24", "7200.85", "5.61", "0.0780", "2", 2, "2024-06-01 00:00:01")


def test_unfilled_gaps_view_lists_only_gaps_left_open(conn: psycopg.Connection) -> None:
    start = datetime(2024, 6, 1, 23, 59, tzinfo=UTC)
    for first_id, status, unfilled in (
        (100, "filled", 0),
        (200, "partially_filled", 3),
        (300, "unfilled", 9),
    ):
        conn.execute(
            """
            insert into staging.feed_gaps (symbol, stream, first_missing_id, last_missing_id,
                window_start,
                window_end, filled_count, unfilled_count, status, reason, detected_at)
            values ('BTCUSDT', 'trade', %s, %s, %s, %s, 0, %s, %s, 'reconnect', %s)
            """,
            (first_id, first_id + 9, start, start + timedelta(minutes=2), unfilled, status, start),
        )
    rows = conn.execute(
        "select first_missing_id, unfilled_count, first_day, last_day "
        "from analytics.unfilled_gaps order by 1"
    ).fetchall()
    assert rows == [
        (200, 3, date(2024, 6, 1), date(2024, 6, 2)),
        (300, 9, date(2024, 6, 1), date(2024, 6, 2)),
    ]


def test_feed_gaps_counts_fit_a_gap_between_two_id_spaces(conn: psycopg.Connection) -> None:
    """Issue 12 item 3: a database made with integer counts is migrated in place, safely twice."""
    conn.execute("drop view analytics.unfilled_gaps")  # back to the schema before the change
    conn.execute(
        "alter table staging.feed_gaps alter column filled_count type integer,"
        " alter column unfilled_count type integer"
    )
    conn.execute(INIT_SQL.read_text())
    conn.execute(INIT_SQL.read_text())
    # BTCUSDT's live ids (~4.6e9) after a 2020 replay's (~2.3e8): a gap of billions.
    size = 4_600_000_000 - 226_000_000
    conn.execute(
        """
        insert into staging.feed_gaps (symbol, stream, first_missing_id, last_missing_id,
            window_start, window_end, filled_count, unfilled_count, status, reason, detected_at)
        values ('BTCUSDT', 'trade', 226000001, 4599999999, now(), now(), 0, %s, 'unfilled',
                'too large', now())
        """,
        (size,),
    )
    row = conn.execute("select unfilled_count from analytics.unfilled_gaps").fetchone()
    assert row == (size,)
