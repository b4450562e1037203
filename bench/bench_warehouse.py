"""Benchmark of the warehouse: the daily summary and the retention, new vs original.

Creates a throw-away database (default `bench_warehouse`) on the PostgreSQL server the stack
runs, applies init.sql, generates trades in SQL (generate_series, seeded random()), and times:

1. `CALL analytics.get_daily_summary(day)` on a day of N rows (default 10 million), against a
   reconstruction of the original procedure (no date parameter: it summarises CURRENT_DATE,
   double precision prices, no tie-breaker, DELETE + INSERT) on an unpartitioned, unindexed
   double-precision copy of the same rows;
2. retention: `CALL analytics.purge_raw_prices(7, day)` dropping the oldest of 8 day
   partitions (7 kept) of N rows each, against `DELETE` of one day from an unpartitioned,
   unindexed table holding --delete-days days (scaled down from 8 by default: say so).

Prints every figure and the machine; drops the database at the end (unless --keep).
Not a test: run it by hand, e.g. `.venv/bin/python bench/bench_warehouse.py`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe_machine  # noqa: E402

logger = logging.getLogger("bench_warehouse")

ROOT = Path(__file__).resolve().parent.parent
INIT_SQL = ROOT / "init.sql"

GENERATE_DAY = """
insert into {target} (symbol, stream, sequence_id, event_time, exchange_event_time, price,
    quantity, is_buyer_maker, received_at, source)
select
    (array['BTCUSDT', 'ETHUSDT', 'BNBUSDT'])[1 + i %% 3],
    'trade',
    i,
    ts,
    ts,
    round((30000 + 5000 * sin(i / 1000000.0) + random() * 100)::numeric, 2),
    round((random() * 2)::numeric + 0.00000001, 8),
    random() < 0.5,
    ts,
    'ws'
from (
    select
        i,
        %(day_start)s::timestamptz + (i * (86400000000 / %(rows)s)) * interval '1 microsecond' as ts
    from generate_series(0, %(rows)s - 1) as i
) as g
"""

ORIGINAL_SCHEMA = """
create schema bench_original;

-- The original warehouse, reconstructed from the issue: floats, no partitions, no indexes.
create table bench_original.raw_prices (
    symbol      text,
    price       double precision,
    quantity    double precision,
    event_time  timestamptz,
    ingested_at timestamptz default now()
);

create table bench_original.daily_summary_dw (
    event_date  date,
    symbol      text,
    open_price  double precision,
    high_price  double precision,
    low_price   double precision,
    close_price double precision,
    avg_price   double precision,
    volume      double precision,
    trade_count bigint
);

-- No date parameter (always CURRENT_DATE in the session's time zone), no tie-breaker.
create procedure bench_original.get_daily_summary()
language plpgsql
as $$
begin
    delete from bench_original.daily_summary_dw where event_date = current_date;
    insert into bench_original.daily_summary_dw
    select distinct on (symbol)
        current_date,
        symbol,
        first_value(price) over (partition by symbol order by event_time),
        max(price) over (partition by symbol),
        min(price) over (partition by symbol),
        first_value(price) over (partition by symbol order by event_time desc),
        avg(price) over (partition by symbol),
        sum(quantity) over (partition by symbol),
        count(*) over (partition by symbol)
    from bench_original.raw_prices
    where event_time::date = current_date;
end
$$;
"""


def default_admin_dsn() -> str:
    """POSTGRES_ADMIN_DSN, else the local stack's superuser socket (as tests/conftest.py does)."""
    configured = os.environ.get("POSTGRES_ADMIN_DSN")
    if configured:
        return configured
    port = os.environ.get("POSTGRES_PORT", "5432")
    return f"host={ROOT / '.local' / 'run' / 'postgres'} port={port} user=postgres dbname=postgres"


@contextmanager
def timed(label: str, results: dict[str, float]) -> Iterator[None]:
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    results[label] = elapsed
    print(f"  {label:<58} {elapsed * 1000:>12.1f} ms", flush=True)


def machine(conn: psycopg.Connection) -> str:
    settings = {
        name: conn.execute(sql.SQL("show {}").format(sql.Identifier(name))).fetchone()[0]  # type: ignore[index]
        for name in (
            "server_version",
            "shared_buffers",
            "work_mem",
            "max_parallel_workers_per_gather",
        )
    }
    return (
        f"{describe_machine()}; "
        f"PostgreSQL {settings['server_version']}, shared_buffers={settings['shared_buffers']}, "
        f"work_mem={settings['work_mem']}, "
        f"max_parallel_workers_per_gather={settings['max_parallel_workers_per_gather']}"
    )


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def generate(conn: psycopg.Connection, target: str, day: date, rows: int) -> None:
    schema, table = target.split(".")
    conn.execute(
        sql.SQL(GENERATE_DAY).format(target=sql.Identifier(schema, table)),
        {"day_start": day_start(day), "rows": rows},
    )


def run(  # noqa: PLR0915 - one linear script
    admin_dsn: str,
    db_name: str,
    rows: int,
    retention_rows: int,
    delete_days: int,
    runs: int,
    keep: bool,
) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(db_name))
        )
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(db_name)))
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=db_name)
    results: dict[str, float] = {}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            print(f"machine: {machine(conn)}")
            load = os.getloadavg()
            print(
                f"date: {datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC; load average at start "
                f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
            )
            conn.execute(INIT_SQL.read_text())  # a trusted repository file
            conn.execute(ORIGINAL_SCHEMA)
            conn.execute("set synchronous_commit = off")
            conn.execute("select setseed(0.42)")
            today = conn.execute("select (now() at time zone 'utc')::date").fetchone()[0]  # type: ignore[index]
            conn.execute("set time zone 'UTC'")  # the original uses the session's CURRENT_DATE

            print("\n[1] daily summary of one day")
            conn.execute("call staging.create_raw_prices_partitions(%s, %s)", (today, today))
            with timed(f"generate {rows:,} rows into today's partition (1 index)", results):
                generate(conn, "staging.raw_prices", today, rows)
            conn.execute("vacuum analyze staging.raw_prices")
            with timed("copy them into the original's float table (no index)", results):
                conn.execute(
                    "insert into bench_original.raw_prices (symbol, price, quantity, event_time) "
                    "select symbol, price::float8, quantity::float8, event_time "
                    "from staging.raw_prices"
                )
            conn.execute("vacuum analyze bench_original.raw_prices")
            for attempt in range(1, runs + 1):
                with timed(f"new: call analytics.get_daily_summary(today) #{attempt}", results):
                    conn.execute("call analytics.get_daily_summary(%s)", (today,))
            for attempt in range(1, runs + 1):
                with timed(
                    f"original: call bench_original.get_daily_summary() #{attempt}", results
                ):
                    conn.execute("call bench_original.get_daily_summary()")
            new_rows = conn.execute(
                "select symbol, open_price, close_price, volume, trade_count "
                "from analytics.daily_summary_dw order by symbol"
            ).fetchall()
            old_rows = conn.execute(
                "select symbol, open_price, close_price, volume, trade_count "
                "from bench_original.daily_summary_dw order by symbol"
            ).fetchall()
            for new, old in zip(new_rows, old_rows, strict=True):
                print(f"    new      {new}")
                print(f"    original {old}")

            if retention_rows <= 0:
                return
            print(f"\n[2] retention: 7 days kept, the 8th dropped ({retention_rows:,} rows a day)")
            oldest = today - timedelta(days=7)
            conn.execute("call staging.create_raw_prices_partitions(%s, %s)", (oldest, today))
            for offset in range(7, 0, -1):
                day = today - timedelta(days=offset)
                with timed(f"generate {retention_rows:,} rows for {day}", results):
                    generate(conn, "staging.raw_prices", day, retention_rows)
            total = conn.execute("select count(*) from staging.raw_prices").fetchone()[0]  # type: ignore[index]
            print(
                f"    staging.raw_prices holds {total:,} rows in 8 day partitions (today: {rows:,})"
            )
            conn.execute("checkpoint")
            with timed(
                "new: call analytics.purge_raw_prices(7, today) (drop 1 partition)", results
            ):
                conn.execute("call analytics.purge_raw_prices(7, %s)", (today,))
            left = conn.execute("select count(*) from staging.raw_prices").fetchone()[0]  # type: ignore[index]
            print(f"    rows left: {left:,}")

            print(
                f"\n[3] retention the original way: DELETE, unindexed table of {delete_days} days"
            )
            conn.execute("truncate bench_original.raw_prices")
            for offset in range(delete_days):  # days kept by the purge: today-6, today-5, ...
                day = today - timedelta(days=6 - offset)
                conn.execute(
                    "insert into bench_original.raw_prices (symbol, price, quantity, event_time) "
                    "select symbol, price::float8, quantity::float8, event_time "
                    "from staging.raw_prices "
                    "where event_time >= %s and event_time < %s",
                    (day_start(day), day_start(day + timedelta(days=1))),
                )
            conn.execute("vacuum analyze bench_original.raw_prices")
            conn.execute("checkpoint")
            held = conn.execute("select count(*) from bench_original.raw_prices").fetchone()[0]  # type: ignore[index]
            cutoff = day_start(today - timedelta(days=5))  # removes the oldest day, today-6
            with timed(f"original: delete the oldest day ({held:,} rows held)", results):
                deleted = conn.execute(
                    "delete from bench_original.raw_prices where event_time < %s", (cutoff,)
                ).rowcount
            print(f"    rows deleted: {deleted:,}")
    finally:
        if not keep:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("drop database if exists {} with (force)").format(
                        sql.Identifier(db_name)
                    )
                )
            print(f"\ndropped database {db_name}")


def main() -> None:
    parser = argparse.ArgumentParser(description="warehouse benchmark (summary and retention)")
    parser.add_argument("--admin-dsn", default=default_admin_dsn(), help="superuser conninfo")
    parser.add_argument("--database", default="bench_warehouse")
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the summarised day")
    parser.add_argument(
        "--retention-rows",
        type=int,
        default=10_000_000,
        help="rows per day of the 7 older days (0: skip)",
    )
    parser.add_argument(
        "--delete-days", type=int, default=2, help="days in the DELETE comparison table"
    )
    parser.add_argument("--runs", type=int, default=3, help="summary calls of each procedure")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    if args.delete_days < 2:
        parser.error("--delete-days must be >= 2 (the oldest day is deleted, the others stay)")
    run(
        args.admin_dsn,
        args.database,
        args.rows,
        args.retention_rows,
        args.delete_days,
        args.runs,
        args.keep,
    )


if __name__ == "__main__":
    main()
