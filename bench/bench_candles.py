"""Benchmark of analytics.candles (issue 13): one symbol, a 10M-row day, and 30 days of candles_1m.

Creates a throw-away database (default `bench_candles`) on the PostgreSQL server the stack runs,
applies init.sql, generates one symbol's trades for one UTC day in SQL (generate_series), and
times, --runs times each:

1. `analytics.candles(symbol, '1 minute' | '1 hour', day, day + 1)` from staging.raw_prices
   (the day not materialised yet, as today's minutes are);
2. `CALL analytics.refresh_candles_1m(day)` (what the DAG does after the summary);
3. the same two queries again, now served from analytics.candles_1m;
4. the day being written (today, as the DAG refresh_recent_candles keeps it): candles_1m
   covers the day up to 23:50, the last 10 minutes exist only as raw rows, and 20 earlier
   minutes got a late trade each after they were materialised (marked dirty by the triggers
   on staging.raw_prices): the same two queries, now a mix of candles_1m, the dirty minutes
   and the open tail read from raw rows; then one `CALL analytics.refresh_candles_1m_recent()`
   step (the consumer's progress at 23:57, a 2-minute grace: 5 new minutes + the 20 dirty);
5. `analytics.candles(symbol, '1 day', ...)` over 30 days of materialised candles_1m
   (43,200 one-minute rows, generated in SQL).

Queries over raw rows are slow by nature (tens of seconds for a 10M-row day): --raw-runs
(default 1) sets how often those run, --runs the others.

Prints every figure and the machine; drops the database at the end (unless --keep).
Not a test: run it by hand, e.g. `.venv/bin/python bench/bench_candles.py`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_warehouse import day_start, default_admin_dsn, machine, timed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DAY = date(2026, 11, 20)

GENERATE_DAY = """
insert into staging.raw_prices (symbol, stream, sequence_id, event_time, exchange_event_time,
    price, quantity, is_buyer_maker, received_at, source)
select 'BTCUSDT', 'trade', i, ts, ts,
       round((30000 + 5000 * sin(i / 1000000.0) + random() * 100)::numeric, 2),
       round((random() * 2)::numeric + 0.00000001, 8), random() < 0.5, ts, 'ws'
from (
    select i,
           %(day_start)s::timestamptz
               + (i * (86400000000 / %(rows)s)) * interval '1 microsecond' as ts
    from generate_series(0, %(rows)s - 1) as i
) as g
"""

GENERATE_MONTH_1M = """
insert into analytics.candles_1m (symbol, bucket_start, open_price, high_price, low_price,
    close_price, volume, quote_volume, trade_count, first_trade_id, last_trade_id, candle_source)
select 'ETHUSDT', m, 3000 + s, 3001 + s, 2999 + s, 3000.5 + s, 10, 30000, 7000, n * 7000,
       n * 7000 + 6999, 'trade'
from (
    select m, row_number() over (order by m) as n, sin(extract(epoch from m) / 86400) as s
    from generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 minute',
                         interval '1 minute') as m
) as g
"""

OPEN_TAIL_MINUTES = 10
LATE_MINUTES = 20

# The day being written: the minutes from 23:50 on not materialised yet (as between two runs
# of refresh_recent_candles), then one late trade in each of 20 earlier minutes (new ids past
# the day's last; the statement triggers mark those minutes dirty).
OPEN_TAIL = (
    "delete from analytics.candles_1m where symbol = 'BTCUSDT' and bucket_start >= %(until)s",
    "update analytics.candles_1m_coverage set materialised_until = %(until)s "
    "where event_date = %(day)s",
)

LATE_TRADES = """
insert into staging.raw_prices (symbol, stream, sequence_id, event_time, exchange_event_time,
    price, quantity, is_buyer_maker, received_at, source)
select 'BTCUSDT', 'trade', %(rows)s + n, ts, ts, 31000.5, 0.5, false, now(), 'rest'
from (
    select n, %(day_start)s::timestamptz + n * interval '67 minutes' + interval '30 seconds' as ts
    from generate_series(1, %(late)s) as n
) as g
"""

PROGRESS_AT = """
insert into staging.consumer_symbol_progress (symbol, stream, newest_event_time, changed_at,
    updated_at)
values ('BTCUSDT', 'trade', %(newest)s, now(), now())
on conflict (symbol, stream) do update set newest_event_time = excluded.newest_event_time
"""

COVER_MONTH = """
insert into analytics.candles_1m_coverage (event_date, materialised_until)
select d::date, d + interval '1 day'
from generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 day',
                     interval '1 day') as d
on conflict (event_date) do nothing
"""


def run(  # noqa: PLR0913 - the command line's options
    admin_dsn: str, database: str, rows: int, runs: int, raw_runs: int, keep: bool
) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database))
        )
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=database)
    results: dict[str, float] = {}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            print(f"machine: {machine(conn)}")
            conn.execute((ROOT / "init.sql").read_text())  # a trusted repository file
            conn.execute("call staging.create_raw_prices_partitions(%s, %s)", (DAY, DAY))
            with timed(f"generate {rows:,} BTCUSDT trades on {DAY}", results):
                conn.execute(GENERATE_DAY, {"day_start": day_start(DAY), "rows": rows})
                conn.execute("vacuum analyze staging.raw_prices")
            query = "select count(*) from analytics.candles('BTCUSDT', %s::interval, %s, %s)"
            span = (day_start(DAY), day_start(DAY + timedelta(days=1)))
            for source in ("raw rows", "candles_1m"):
                if source == "candles_1m":
                    with timed(f"call analytics.refresh_candles_1m('{DAY}')", results):
                        conn.execute("call analytics.refresh_candles_1m(%s)", (DAY,))
                for bucket, expected in (("1 minute", 1440), ("1 hour", 24)):
                    for i in range(raw_runs if source == "raw rows" else runs):
                        with timed(
                            f"candles {bucket} over the day from {source}, run {i + 1}", results
                        ):
                            got = conn.execute(query, (bucket, *span)).fetchone()
                        if got != (expected,):
                            raise SystemExit(f"candles {bucket}: {got} rows, expected {expected}")
            the_day_being_written(conn, rows, runs, results)
            start = day_start(date(2026, 10, 1))
            end = start + timedelta(days=30)
            with timed("generate 30 days of ETHUSDT candles_1m (43,200 rows)", results):
                conn.execute(GENERATE_MONTH_1M, {"start": start, "end": end})
                conn.execute(COVER_MONTH, {"start": start, "end": end})
                conn.execute("analyze analytics.candles_1m")
            for i in range(runs):
                with timed(f"candles 1 day over 30 days of candles_1m, run {i + 1}", results):
                    got = conn.execute(
                        query.replace("BTCUSDT", "ETHUSDT"), ("1 day", start, end)
                    ).fetchone()
                if got != (30,):
                    raise SystemExit(f"candles 1 day over 30 days: {got} rows, expected 30")
    finally:
        if not keep:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("drop database if exists {} with (force)").format(
                        sql.Identifier(database)
                    )
                )


def the_day_being_written(
    conn: psycopg.Connection, rows: int, runs: int, results: dict[str, float]
) -> None:
    """Step 4 of the module doc: candles over today while it is written."""
    start = day_start(DAY)
    until = start + timedelta(days=1, minutes=-OPEN_TAIL_MINUTES)
    for statement in OPEN_TAIL:
        conn.execute(statement, {"until": until, "day": DAY})
    conn.execute(LATE_TRADES, {"rows": rows, "day_start": start, "late": LATE_MINUTES})
    marks = conn.execute("select count(*) from analytics.candles_1m_dirty").fetchone()
    print(
        f"  today: candles_1m up to {until:%H:%M}, {OPEN_TAIL_MINUTES} open minutes, "
        f"{marks[0] if marks else 0} dirty minute(s)"
    )
    query = "select count(*) from analytics.candles('BTCUSDT', %s::interval, %s, %s)"
    for bucket, expected in (("1 minute", 1440), ("1 hour", 24)):
        for i in range(runs):
            with timed(f"candles {bucket} over today (candles_1m + raw), run {i + 1}", results):
                got = conn.execute(query, (bucket, start, start + timedelta(days=1))).fetchone()
            if got != (expected,):
                raise SystemExit(f"candles {bucket} over today: {got} rows, expected {expected}")
    conn.execute(PROGRESS_AT, {"newest": until + timedelta(minutes=7)})
    with timed("call analytics.refresh_candles_1m_recent() (5 + 20 minutes)", results):
        conn.execute("call analytics.refresh_candles_1m_recent(interval '2 minutes')")
    left = conn.execute(
        "select count(*), (select materialised_until from analytics.candles_1m_coverage "
        "where event_date = %s) from analytics.candles_1m_dirty",
        (DAY,),
    ).fetchone()
    if left is None:
        raise SystemExit("no answer from analytics.candles_1m_dirty")
    print(f"  after the refresh: {left[0]} dirty minute(s), candles_1m up to {left[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description="analytics.candles benchmark")
    parser.add_argument("--admin-dsn", default=default_admin_dsn(), help="superuser conninfo")
    parser.add_argument("--database", default="bench_candles")
    parser.add_argument("--rows", type=int, default=10_000_000, help="trades of the day")
    parser.add_argument("--runs", type=int, default=3, help="calls of each query")
    parser.add_argument("--raw-runs", type=int, default=1, help="calls of each raw-rows query")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    run(args.admin_dsn, args.database, args.rows, args.runs, args.raw_runs, args.keep)


if __name__ == "__main__":
    main()
