"""Each process's database role can do what that process does, and nothing it must not.

The roles are the real login roles of the local stack (pipeline_writer, pipeline_dag,
pipeline_analyst, airflow: scripts/stack.sh gives them LOGIN and the passwords of .env) on a
fresh database with init.sql applied (pg_dsn, then init.sql once more, as the owner, so the
database-level grants are there too). The consumer's part runs consumer_app's own sink
(PostgresSink: partitions, ledger, COPY, the merge path, the gap upsert, the Redis-recovery
read) logged in as pipeline_writer; the DAG's part runs the DAG's statements as pipeline_dag.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from psycopg import sql

from consumer_app.dead_letters import RejectedRecord
from consumer_app.sink import PostgresSink
from consumer_app.state import last_prices_from_postgres

pytestmark = pytest.mark.integration

INIT_SQL = Path(__file__).resolve().parents[2] / "init.sql"
UTC = dt.UTC
DAY = dt.date(2025, 3, 4)
PASSWORDS = {
    "pipeline_writer": "PIPELINE_WRITER_PASSWORD",
    "pipeline_dag": "PIPELINE_DAG_PASSWORD",
    "pipeline_analyst": "PIPELINE_ANALYST_PASSWORD",
    "airflow": "AIRFLOW_DB_PASSWORD",
}


RoleDsn = Callable[..., str]


@pytest.fixture
def role_dsn(stack_env: dict[str, str], warehouse: str) -> RoleDsn:
    """role_dsn(role, dbname=None): conninfo of the test database (or dbname) as that role."""

    def make(role: str, dbname: str | None = None) -> str:
        password = stack_env.get(PASSWORDS[role], "")
        if not password:
            pytest.fail(f"{PASSWORDS[role]} is not in .env; run `make services`", pytrace=False)
        params = {"user": role, "password": password, "application_name": f"test-{role}"}
        if dbname:
            params["dbname"] = dbname
        return psycopg.conninfo.make_conninfo(warehouse, **params)

    return make


@pytest.fixture
def warehouse(pg_dsn: str) -> Iterator[str]:
    """pg_dsn with init.sql applied once more, so its database-level grants hold too."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(INIT_SQL.read_text())  # a trusted repository file, not user input
    yield pg_dsn


def trades_table(first_id: int, count: int) -> pa.Table:
    """A consumer batch as job.py hands it to the sink (RAW_PRICES_COLUMNS + helpers)."""
    start = dt.datetime(2025, 3, 4, 10, tzinfo=UTC)
    ids = range(first_id, first_id + count)  # trade id n: at 10:00 + (n - 1) s, 0.2312 + ...
    times = [start + dt.timedelta(seconds=n - 1) for n in ids]
    prices = [Decimal("0.2312") + Decimal(n - 1) / 10000 for n in ids]
    ts = pa.timestamp("us", tz="UTC")
    dec = pa.decimal128(38, 18)
    return pa.table(
        {
            "symbol": ["TRXUSDT"] * count,
            "stream": ["trade"] * count,
            "sequence_id": pa.array(ids, pa.int64()),
            "event_time": pa.array(times, ts),
            "exchange_event_time": pa.array(times, ts),
            "price": pa.array(prices, dec),
            "quantity": pa.array([Decimal("10")] * count, dec),
            "is_buyer_maker": [True] * count,
            "previous_price": pa.array([None] * count, dec),
            "price_change": pa.array([None] * count, dec),
            "price_change_pct": pa.array([None] * count, pa.decimal128(38, 8)),
            "received_at": pa.array(times, ts),
            "source": ["ws"] * count,
            "price_time_us": pa.array([int(t.timestamp()) * 1_000_000 for t in times], pa.int64()),
            "is_key_last": [False] * (count - 1) + [True],
        }
    )


def gap_row(detected_minute: int, status: str) -> tuple[object, ...]:
    start = dt.datetime(2025, 3, 4, 9, tzinfo=UTC)
    return (
        "TRXUSDT",
        "trade",
        100,
        110,
        start,
        start + dt.timedelta(seconds=5),
        0 if status == "unfilled" else 11,
        11 if status == "unfilled" else 0,
        status,
        "reconnect",
        start + dt.timedelta(minutes=detected_minute),
    )


def dead_letter(offset: int) -> RejectedRecord:
    """A record of the gaps topic at `offset` (reason missing_field: a dead letter)."""
    return RejectedRecord(
        topic="binance.gaps",
        partition=0,
        offset=offset,
        reason="missing_field",
        detail="first_missing_id is missing, null or not an integer",
        key=b"TRXUSDT",
        value=b'{"symbol":"TRXUSDT"}',
        timestamp=None,
    )


def write_trades(writer_dsn: str, count: int) -> None:
    """One consumer batch of `count` trades, written as the consumer writes it."""
    sink = PostgresSink(writer_dsn, retry_seconds=5)
    try:
        sink.write_batch("query-a", 0, trades_table(1, count))
    finally:
        sink.close()


def refused(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def cannot_connect(dsn: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(dsn, connect_timeout=5).close()


def test_the_consumer_as_pipeline_writer_writes_a_whole_batch_and_nothing_else(
    warehouse: str, role_dsn: RoleDsn, stack_env: dict[str, str]
) -> None:
    writer = role_dsn("pipeline_writer")
    sink = PostgresSink(writer, retry_seconds=5)
    try:
        # partition creation (the day does not exist yet), ledger and COPY in one transaction
        written = sink.write_batch("query-a", 0, trades_table(1, 50))
        assert (written.rows_inserted, written.skipped) == (50, False)
        assert sink.ledger_position("query-a", 0) == (0, True)
        # a re-executed batch is skipped through the ledger
        assert sink.write_batch("query-a", 0, trades_table(1, 50)).skipped
        # a lost checkpoint: same rows under a new query -> the merge path (temp table)
        merged = sink.write_batch("query-b", 0, trades_table(41, 20))
        assert (merged.rows_inserted, merged.merged) == (10, True)
        # gap reports: insert, then a later report of the same gap updates it; a report
        # that cannot be stored becomes a dead letter (staging.rejected_records)
        assert sink.write_gaps([gap_row(1, "unfilled")], [dead_letter(1)], []) == (1, {})
        assert sink.write_gaps([gap_row(2, "filled")], [dead_letter(2)], [dead_letter(3)]) == (
            1,
            {"missing_field": 1},
        )
        # a batch's dead letters commit with its rows
        with_dead = sink.write_batch("query-a", 1, trades_table(51, 10), [dead_letter(4)])
        assert with_dead.rejected == {"missing_field": 1}
        # Redis recovery reads analytics.latest_prices
        last = sink.run("last price recovery", last_prices_from_postgres)
        assert last[("TRXUSDT", "trade")].sequence_id == 60
    finally:
        sink.close()
    with psycopg.connect(warehouse) as conn:
        assert conn.execute("select count(*) from staging.raw_prices").fetchone() == (60,)
        assert conn.execute(
            "select kafka_offset from staging.rejected_records order by 1"
        ).fetchall() == [(3,), (4,)]
        assert conn.execute("select status from staging.feed_gaps").fetchall() == [("filled",)]
        owner = conn.execute(
            "select pg_get_userbyid(relowner) from pg_class where relname = %s",
            (f"raw_prices_p{DAY:%Y%m%d}",),
        ).fetchone()
    assert owner == (stack_env["POSTGRES_USER"],), "partitions belong to the owner"

    for statement in (
        "delete from staging.raw_prices",
        "update staging.raw_prices set price = price",
        "truncate staging.consumer_batches",
        "delete from staging.consumer_batches",
        "delete from staging.rejected_records",
        "select * from staging.rejected_records",
        f"drop table staging.raw_prices_p{DAY:%Y%m%d}",
        "select * from analytics.daily_summary_dw",
        "insert into analytics.daily_summary_dw (event_date, symbol) values ('2025-01-01', 'X')",
        "call analytics.get_daily_summary('2025-03-04')",
        "call analytics.purge_raw_prices(1)",
        "create table staging.mine (x int)",
        "create table public.mine (x int)",
    ):
        refused(writer, statement)
    cannot_connect(role_dsn("pipeline_writer", dbname="airflow"))
    cannot_connect(role_dsn("pipeline_writer", dbname="postgres"))


def test_the_dag_as_pipeline_dag_makes_partitions_summarises_and_purges(
    warehouse: str, role_dsn: RoleDsn
) -> None:
    write_trades(role_dsn("pipeline_writer"), 30)
    dag = role_dsn("pipeline_dag")
    with psycopg.connect(dag, autocommit=True) as conn:  # the DAG's tasks, in order
        conn.execute("call staging.ensure_raw_prices_partitions(%s, %s)", (4, DAY))
        conn.execute("call analytics.get_daily_summary(%s)", (DAY,))
        candle = conn.execute(
            "select open_price, close_price, trade_count from analytics.daily_summary_dw"
            " where event_date = %s and symbol = 'TRXUSDT'",
            (DAY,),
        ).fetchone()
        conn.execute(
            "select symbol, first_missing_id from analytics.unfilled_gaps"
            " where first_day <= %s and last_day >= %s",
            (DAY, DAY),
        )
        conn.execute("call analytics.refresh_candles_1m(%s)", (DAY,))  # a temp table inside
        minutes = conn.execute(
            "select count(*) from analytics.candles_1m where symbol = 'TRXUSDT'"
        ).fetchone()
        conn.execute("call analytics.purge_raw_prices(%s, %s)", (2, DAY + dt.timedelta(days=2)))
    assert candle == (Decimal("0.2312"), Decimal("0.2341"), 30)
    assert minutes == (1,)  # 30 trades one second apart from 10:00:00: one minute
    with psycopg.connect(warehouse) as conn:
        days = [
            row[0]
            for row in conn.execute(
                "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
                " where i.inhparent = 'staging.raw_prices'::regclass order by 1"
            )
        ]
    assert days == [f"raw_prices_p{DAY + dt.timedelta(days=d):%Y%m%d}" for d in (1, 2, 3, 4)]

    for statement in (
        "insert into staging.raw_prices (symbol, stream, sequence_id, event_time,"
        " exchange_event_time, price, received_at)"
        " values ('X', 'trade', 1, now(), now(), 1, now())",
        "delete from analytics.daily_summary_dw",
        "truncate analytics.daily_summary_dw",
        "delete from staging.consumer_batches",
        "insert into staging.feed_gaps (symbol) values ('X')",
        f"drop table staging.raw_prices_p{DAY + dt.timedelta(days=4):%Y%m%d}",
        "create table analytics.mine (x int)",
    ):
        refused(dag, statement)
    cannot_connect(role_dsn("pipeline_dag", dbname="airflow"))


def test_the_analyst_reads_everything_and_changes_nothing(
    warehouse: str, role_dsn: RoleDsn
) -> None:
    write_trades(role_dsn("pipeline_writer"), 5)
    with psycopg.connect(warehouse, autocommit=True) as conn:
        conn.execute("call analytics.get_daily_summary(%s)", (DAY,))
    analyst = role_dsn("pipeline_analyst")
    with psycopg.connect(analyst) as conn:
        for relation in (
            "staging.raw_prices",
            f"staging.raw_prices_p{DAY:%Y%m%d}",
            "staging.consumer_batches",
            "staging.feed_gaps",
            "analytics.daily_summary_dw",
            "analytics.daily_candles",
            "analytics.latest_prices",
            "analytics.unfilled_gaps",
        ):
            conn.execute(sql.SQL("select count(*) from {}").format(sql.SQL(relation)))
        assert conn.execute("select trade_count from analytics.daily_candles").fetchone() == (5,)
    for statement in (
        "insert into analytics.daily_summary_dw (event_date, symbol) values ('2025-01-01', 'X')",
        "update analytics.daily_summary_dw set volume = 0",
        "delete from staging.raw_prices",
        "call analytics.get_daily_summary('2025-03-04')",
        "call analytics.purge_raw_prices(1)",
        "call staging.create_raw_prices_partitions('2030-01-01', '2030-01-01')",
        "create temp table mine (x int)",
        "create table staging.mine (x int)",
    ):
        refused(analyst, statement)
    cannot_connect(role_dsn("pipeline_analyst", dbname="airflow"))


def test_airflows_role_owns_its_metadata_and_cannot_reach_the_warehouse(
    warehouse: str, role_dsn: RoleDsn
) -> None:
    with psycopg.connect(role_dsn("airflow", dbname="airflow")) as conn:
        owner = conn.execute(
            "select pg_get_userbyid(datdba) from pg_database where datname = 'airflow'"
        ).fetchone()
    assert owner == ("airflow",)
    cannot_connect(role_dsn("airflow"))
    cannot_connect(psycopg.conninfo.make_conninfo(warehouse, dbname="airflow"))  # the owner
