"""`airflow dags test get_daily_summary 2020-01-01` against the real PostgreSQL test database.

Airflow runs as a real CLI process with its own AIRFLOW_HOME (sqlite metadata, migrated once
per session) and the connection `pipeline_postgres` pointed at the pg_dsn database through
AIRFLOW_CONN_PIPELINE_POSTGRES; the exchange is the real replay server (`--rest-only`) on the
bundled recording. Raw trades are loaded straight into staging.raw_prices from the recording;
the consumer's progress record is written by the test (no Spark here); the expected candle is
Binance's official one for 2020-01-01.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = ROOT / "airflow" / "dags"
AIRFLOW_BIN = Path(sys.executable).parent / "airflow"
BTC_RECORDING = ROOT / "recordings" / "btcusdt-trade-2020-01-01.jsonl.gz"
COPY_SQL = (
    "copy staging.raw_prices (symbol, stream, sequence_id, event_time, exchange_event_time, "
    "price, quantity, is_buyer_maker, received_at, source) from stdin (format binary)"
)
COPY_TYPES = [
    "text", "text", "int8", "timestamptz", "timestamptz", "numeric",
    "numeric", "bool", "timestamptz", "text",
]  # fmt: skip


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of an isolated Airflow (sqlite metadata under tmp), migrated once."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }
    migrate = subprocess.run(  # noqa: S603 - fixed argv
        [str(AIRFLOW_BIN), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    return env


@pytest.fixture
def airflow_env(
    airflow_home: dict[str, str], tmp_path: Path, kafka_bootstrap: str, make_topic: Any
) -> dict[str, str]:
    """Per test: a copy of the migrated metadata database (runs of one day never collide) and a
    Kafka topic of its own for REST refills (never the stack's, never another port)."""
    home = tmp_path / "airflow_home"
    home.mkdir()
    shutil.copy(Path(airflow_home["AIRFLOW_HOME"]) / "airflow.db", home / "airflow.db")
    return {
        **airflow_home,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC_PRICES": make_topic(1),
    }


def _connection_json(pg_dsn: str) -> str:
    """Airflow's JSON connection form (no URL-encoding of the password needed)."""
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": params.get("host", "127.0.0.1"),
            "port": int(str(params.get("port") or 5432)),
            "schema": params["dbname"],
            "login": params.get("user"),
            "password": params.get("password") or None,
        }
    )


def dags_test(
    env: dict[str, str],
    pg_dsn: str,
    symbols: str,
    rest_url: str,
    *,
    dag_run: tuple[str, str] = ("get_daily_summary", "2020-01-01"),
    **extra: str,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv
        [str(AIRFLOW_BIN), "dags", "test", *dag_run],
        env=run_env(env, pg_dsn, symbols, rest_url, **extra), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def run_env(
    env: dict[str, str], pg_dsn: str, symbols: str, rest_url: str, **extra: str
) -> dict[str, str]:
    return {
        **env,
        "AIRFLOW_CONN_PIPELINE_POSTGRES": _connection_json(pg_dsn),
        "BINANCE_SYMBOLS": symbols,
        "BINANCE_REST_URL": rest_url,
        "RAW_RETENTION_DAYS": "7",
        "DAILY_SUMMARY_IDLE_S": "0",
        # the tests write the consumer's progress record once (caught_up), and Airflow takes
        # minutes to start on a loaded machine: a record older than the default 120 s made the
        # sensor wait for a consumer "not running" until the run timed out
        "DAILY_SUMMARY_PROGRESS_MAX_AGE_S": "3600",
        "DAILY_SUMMARY_POKE_S": "3",
        "DAILY_SUMMARY_REFILL_WAIT_S": "20",
        **extra,
    }


def start_exchange(*args: str) -> tuple[subprocess.Popen[str], str]:
    """The replay server as the exchange: the whole recording past, REST only."""
    process = subprocess.Popen(  # noqa: S603 - fixed argv, our own module
        [sys.executable, "-m", "producer_app.replay_server", "--recording", str(BTC_RECORDING),
         "--rest-only", "--port", "0", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        found = re.search(r"REST (http://\S+)\)", line)
        if found:
            return process, found.group(1)
    process.kill()
    raise AssertionError("the replay server did not start")


@pytest.fixture(scope="module")
def exchange() -> Iterator[str]:
    process, url = start_exchange()
    yield url
    process.terminate()
    process.wait(timeout=30)


def caught_up(conn: psycopg.Connection, lag: int = 0) -> None:
    """The consumer's progress record as consumer_app/progress.py writes it."""
    conn.execute(
        "call staging.record_consumer_progress('consumer_prices', 'test', 1, %s, now())", (lag,)
    )


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def load_recording(conn: psycopg.Connection, limit: int | None = None) -> int:
    conn.execute("call staging.create_raw_prices_partitions('2020-01-01', '2020-01-01')")
    count = 0
    with gzip.open(BTC_RECORDING, "rt", encoding="ascii") as handle, conn.cursor() as cur:
        with cur.copy(COPY_SQL) as copy:
            copy.set_types(COPY_TYPES)
            for line in handle:
                data = json.loads(line)["data"]
                trade_time = datetime.fromtimestamp(data["T"] / 1000, tz=UTC)
                event_time = datetime.fromtimestamp(data["E"] / 1000, tz=UTC)
                copy.write_row((
                    data["s"], "trade", data["t"], trade_time, event_time, Decimal(data["p"]),
                    Decimal(data["q"]), data["m"], event_time, "ws",
                ))  # fmt: skip
                count += 1
                if limit is not None and count >= limit:
                    break
    return count


def partitions(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
        "where i.inhparent = 'staging.raw_prices'::regclass order by 1"
    ).fetchall()
    return [r[0] for r in rows]


def test_dags_test_summarises_and_reconciles_2020_01_01_like_binance(
    airflow_env: dict[str, str], pg_dsn: str, conn: psycopg.Connection, exchange: str
) -> None:
    assert load_recording(conn) == 194_010
    conn.execute("call staging.create_raw_prices_partitions('2019-12-01', '2019-12-01')")  # old
    caught_up(conn)

    result = dags_test(airflow_env, pg_dsn, "BTCUSDT", exchange)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "data quality ok for 2020-01-01: 1 candle(s)" in output, output[-5000:]

    row = conn.execute(
        "select open, high, low, close, volume, trade_count, reconciliation_status, "
        "exchange_open, exchange_close, exchange_volume, exchange_trade_count, "
        "missing_trade_ids from analytics.daily_candles "
        "where event_date = '2020-01-01' and symbol = 'BTCUSDT'"
    ).fetchone()
    assert row == (
        Decimal("7195.24"), Decimal("7255"), Decimal("7175.15"), Decimal("7200.85"),
        Decimal("16792.388165"), 194_010, "reconciled", Decimal("7195.24"), Decimal("7200.85"),
        Decimal("16792.388165"), 194_010, 0,
    )  # fmt: skip
    assert conn.execute("select count(*) from analytics.candles_1m").fetchone() == (1440,)
    assert conn.execute(
        "select count(*) from analytics.exchange_klines where kline_interval = '1m'"
    ).fetchone() == (1440,)
    # make_partitions: the day .. day + 4; purge: 7 days up to 2020-01-02.
    assert partitions(conn) == [f"raw_prices_p202001{d:02d}" for d in range(1, 6)]

    first = conn.execute("select * from analytics.daily_summary_dw").fetchall()
    again = dags_test(airflow_env, pg_dsn, "BTCUSDT", exchange)
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    assert conn.execute("select * from analytics.daily_summary_dw").fetchall() == first


def test_the_dag_waits_while_the_consumer_is_behind_and_runs_when_it_catches_up(
    airflow_env: dict[str, str],
    pg_dsn: str,
    conn: psycopg.Connection,
    tmp_path: Path,
) -> None:
    load_recording(conn, limit=1000)
    caught_up(conn, lag=4321)
    exchange = "http://127.0.0.1:1"  # unreachable: this test is about waiting, not reconciling
    # behind for good: the sensor gives up after its limit, naming the lag
    failed = dags_test(airflow_env, pg_dsn, "BTCUSDT", exchange, DAILY_SUMMARY_WAIT_LIMIT_S="8")
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output[-5000:]
    assert "day 2020-01-01 still incomplete after waiting" in output, output[-5000:]
    assert "the consumer is 4321 event(s) behind Kafka" in output
    assert conn.execute("select count(*) from analytics.daily_summary_dw").fetchone() == (0,)

    # behind, then caught up while the run waits: the run goes on and summarises the day
    log_path = tmp_path / "dags-test.log"
    with log_path.open("w") as log_file:  # a file, not a pipe: Airflow writes a lot
        env = run_env(airflow_env, pg_dsn, "BTCUSDT", exchange, DAILY_SUMMARY_WAIT_LIMIT_S="900")
        run = subprocess.Popen(  # noqa: S603 - fixed argv
            [str(AIRFLOW_BIN), "dags", "test", "get_daily_summary", "2020-01-01"],
            env=env,
            stdout=log_file, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while (
            time.monotonic() < deadline and "waiting for day 2020-01-01" not in log_path.read_text()
        ):
            time.sleep(2)
        caught_up(conn, lag=0)  # the consumer catches up while the sensor waits
        returncode = run.wait(timeout=300)
    output = log_path.read_text()
    assert returncode == 0, output[-5000:]
    assert "waiting for day 2020-01-01" in output, output[-5000:]
    assert "the consumer is 4321 event(s) behind Kafka" in output
    assert conn.execute(
        "select trade_count from analytics.daily_summary_dw where symbol = 'BTCUSDT'"
    ).fetchone() == (1000,)


def test_a_minute_the_exchange_cannot_give_back_fails_naming_that_minute(
    airflow_env: dict[str, str], pg_dsn: str, conn: psycopg.Connection
) -> None:
    load_recording(conn)
    caught_up(conn)
    minute_37 = [
        data["t"]
        for data in (json.loads(line)["data"] for line in gzip.open(BTC_RECORDING, "rt"))
        if 1577839020000 <= data["T"] < 1577839080000  # 2020-01-01 00:37
    ]
    conn.execute(
        "delete from staging.raw_prices where event_time >= '2020-01-01 00:37+00' "
        "and event_time < '2020-01-01 00:38+00'"
    )
    process, url = start_exchange("--rest-missing-ids", ",".join(map(str, minute_37)))
    try:
        result = dags_test(airflow_env, pg_dsn, "BTCUSDT", url)
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-5000:]
    assert "differ from the exchange's klines after a REST refill" in output, output[-5000:]
    assert "the exchange gave back no trades for 1 differing minute(s)" in output
    assert "BTCUSDT 1m 2020-01-01T00:37: open_price ours - / exchange" in output
    assert f"trade_count ours - / exchange {len(minute_37)}" in output
    assert conn.execute(
        "select reconciliation_status, mismatched_minutes from analytics.daily_candles"
    ).fetchone() == ("mismatch", 1)


def test_failed_quality_check_names_the_problem_and_skips_the_purge(
    airflow_env: dict[str, str], pg_dsn: str, conn: psycopg.Connection
) -> None:
    load_recording(conn, limit=1000)
    conn.execute("call staging.create_raw_prices_partitions('2019-12-01', '2019-12-31')")  # old
    # ETHUSDT had data before 2020-01-01, so a day without it is a problem
    conn.execute(
        "insert into staging.raw_prices (symbol, stream, sequence_id, event_time, "
        "exchange_event_time, price, quantity, is_buyer_maker, received_at) values "
        "('ETHUSDT', 'trade', 1, '2019-12-31 12:00+00', '2019-12-31 12:00+00', 130, 1, false, "
        "now())"
    )
    caught_up(conn)

    # the exchange unreachable: candles stay unverified, the run goes on to the checks
    result = dags_test(airflow_env, pg_dsn, "BTCUSDT,ETHUSDT", "http://127.0.0.1:1")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-5000:]
    assert "DagRun failed" in output
    assert "data quality failed for 2020-01-01 (1 problem(s))" in output, output[-5000:]
    assert "ETHUSDT: no rows in staging.raw_prices that day (no candle)" in output
    # The summary ran (BTCUSDT's candle is there); the purge did not (old partition kept).
    assert conn.execute(
        "select symbol, trade_count, reconciliation_status from analytics.daily_candles"
    ).fetchall() == [("BTCUSDT", 1000, "unverified")]
    assert "raw_prices_p20191201" in partitions(conn)


def test_a_minute_removed_is_refilled_through_kafka_and_the_consumer_and_ends_reconciled(
    airflow_env: dict[str, str],
    pg_dsn: str,
    conn: psycopg.Connection,
    exchange: str,
    redis_url: str,
    redis_prefix: str,
    spark_jars: str,
    tmp_path: Path,
) -> None:
    """The whole loop: mismatch naming 00:37, its trades fetched from the replay server's REST,
    produced to Kafka, written by the real consumer (a subprocess), re-summarised, reconciled.
    A ticker-only symbol beside it gets the checks that fit it: unverified, no volume check."""
    from test_consumer_pipeline import ConsumerRun, consumer_env

    load_recording(conn)
    minute_37 = sorted(
        data["t"]
        for data in (json.loads(line)["data"] for line in gzip.open(BTC_RECORDING, "rt"))
        if 1577839020000 <= data["T"] < 1577839080000  # 2020-01-01 00:37
    )
    conn.execute(
        "delete from staging.raw_prices where event_time >= '2020-01-01 00:37+00' "
        "and event_time < '2020-01-01 00:38+00'"
    )
    conn.execute(
        "insert into staging.raw_prices (symbol, stream, sequence_id, event_time, "
        "exchange_event_time, price, received_at) select 'XRPUSDT', 'miniTicker', ms, "
        "to_timestamp(ms / 1000.0), to_timestamp(ms / 1000.0), 0.19 + (ms % 7) / 1000.0, now() "
        "from generate_series(1577836800000, 1577923199999, 3600000) as ms"
    )
    run = ConsumerRun(
        consumer_env(
            dsn=pg_dsn, redis_url=redis_url, prefix=redis_prefix,
            bootstrap=airflow_env["KAFKA_BOOTSTRAP_SERVERS"],
            topic=airflow_env["KAFKA_TOPIC_PRICES"], jars=spark_jars,
            checkpoint=tmp_path / "checkpoint", max_offsets=5000,
        ) | {"CONSUMER_PROGRESS_INTERVAL_S": "2"},
        tmp_path / "consumer.log",
    )  # fmt: skip
    run.start()
    try:
        deadline = time.monotonic() + 300
        while conn.execute("select count(*) from staging.consumer_progress").fetchone() == (0,):
            assert run.process is not None and run.process.poll() is None, run.tail()
            assert time.monotonic() < deadline, f"no consumer progress in 300 s:\n{run.tail()}"
            time.sleep(1)
        result = dags_test(
            airflow_env, pg_dsn, "BTCUSDT,XRPUSDT", exchange, DAILY_SUMMARY_REFILL_WAIT_S="300"
        )
    finally:
        run.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:] + "\n--- consumer:\n" + run.tail()
    # the first comparison named the minute, the refill fetched exactly its trades
    assert "reconcile_day: BTCUSDT 2020-01-01 (UTC): mismatch (1 minute(s) differ" in output
    assert f"BTCUSDT: {len(minute_37)} trade(s) of 1 minute(s) refilled from REST" in output
    assert conn.execute(
        "select sequence_id from staging.raw_prices where source = 'rest' order by 1"
    ).fetchall() == [(t,) for t in minute_37]
    rows = conn.execute(
        "select symbol, open, high, low, close, volume, trade_count, reconciliation_status, "
        "exchange_trade_count, missing_trade_ids, rest_filled_trades, candle_source "
        "from analytics.daily_candles where event_date = '2020-01-01' order by symbol"
    ).fetchall()
    assert rows[0] == (
        "BTCUSDT", Decimal("7195.24"), Decimal("7255"), Decimal("7175.15"), Decimal("7200.85"),
        Decimal("16792.388165"), 194_010, "reconciled", 194_010, 0, len(minute_37), "trade",
    )  # fmt: skip
    assert rows[1][0] == "XRPUSDT" and rows[1][6:8] == (0, "unverified")
    assert rows[1][11] == "miniTicker"
    assert "data quality ok for 2020-01-01: 2 candle(s)" in output


def test_refresh_recent_candles_materialises_the_closed_minutes(
    airflow_env: dict[str, str], pg_dsn: str, conn: psycopg.Connection
) -> None:
    load_recording(conn, limit=20_000)
    caught_up(conn)
    newest = conn.execute("select max(event_time) from staging.raw_prices").fetchone()
    assert newest is not None
    result = dags_test(
        airflow_env, pg_dsn, "BTCUSDT", "http://127.0.0.1:1",
        dag_run=("refresh_recent_candles", "2026-12-01T00:05:00+00:00"),
        DAILY_SUMMARY_RECENT_GRACE_S="60",
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    until = conn.execute(
        "select materialised_until from analytics.candles_1m_coverage "
        "where event_date = '2020-01-01'"
    ).fetchone()
    cutoff = newest[0] - timedelta(seconds=60)
    assert until == (cutoff.replace(second=0, microsecond=0),)
    assert (
        conn.execute(
            "select count(*) from analytics.candles_1m where bucket_start < %s", until
        ).fetchone()
        == conn.execute(
            "select count(distinct date_trunc('minute', event_time)) from staging.raw_prices "
            "where event_time < %s",
            until,
        ).fetchone()
    )


TICKERS_SQL = (
    "insert into staging.raw_prices (symbol, stream, sequence_id, event_time, "
    "exchange_event_time, price, received_at) select 'XRPUSDT', 'miniTicker', ms, "
    "to_timestamp(ms / 1000.0), to_timestamp(ms / 1000.0), 0.19 + (ms %% 7) / 1000.0, now() "
    "from generate_series(%s::int8, %s::int8, 60000) as ms"
)


def ticker_only_symbol(conn: psycopg.Connection, *days_ms: tuple[int, int]) -> None:
    """XRPUSDT as a feed of mini-tickers only (no trades, no quantities), one a minute."""
    conn.execute("call staging.create_raw_prices_partitions('2019-12-31', '2020-01-01')")
    for first_ms, last_ms in days_ms:
        conn.execute(TICKERS_SQL, (first_ms, last_ms))
    caught_up(conn)


def test_a_ticker_only_symbol_passes_the_checks_that_fit_it(
    airflow_env: dict[str, str], pg_dsn: str, conn: psycopg.Connection
) -> None:
    """Prices ordered; no volume check (tickers carry none), no reconciliation: unverified."""
    ticker_only_symbol(conn, (1577750400000, 1577836799999), (1577836800000, 1577923199999))
    good = dags_test(airflow_env, pg_dsn, "XRPUSDT", "http://127.0.0.1:1")
    output = good.stdout + good.stderr
    assert good.returncode == 0, output[-5000:]
    assert "data quality ok for 2020-01-01: 1 candle(s)" in output, output[-5000:]
    prices = [
        Decimal("0.19") + Decimal(ms % 7) / 1000
        for ms in range(1577836800000, 1577923199999, 60000)
    ]
    assert conn.execute(
        "select open, high, low, close, volume, trade_count, candle_source, "
        "reconciliation_status from analytics.daily_candles where event_date = '2020-01-01'"
    ).fetchone() == (
        prices[0], max(prices), min(prices), prices[-1], 0, 0, "miniTicker", "unverified",
    )  # fmt: skip


def test_a_ticker_only_symbol_that_had_tickers_fails_on_a_day_without_any(
    airflow_env: dict[str, str], pg_dsn: str, conn: psycopg.Connection
) -> None:
    ticker_only_symbol(conn, (1577750400000, 1577836799999))  # 2019-12-31 only
    missing = dags_test(airflow_env, pg_dsn, "XRPUSDT", "http://127.0.0.1:1")
    output = missing.stdout + missing.stderr
    assert missing.returncode == 1, output[-5000:]
    assert "data quality failed for 2020-01-01 (1 problem(s))" in output, output[-5000:]
    assert "XRPUSDT: no rows in staging.raw_prices that day (no candle)" in output
