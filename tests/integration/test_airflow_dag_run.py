"""`airflow dags test get_daily_summary 2020-01-02` against the real PostgreSQL test database.

Airflow runs as a real CLI process with its own AIRFLOW_HOME (sqlite metadata, migrated once
per session) and the connection `pipeline_postgres` pointed at the pg_dsn database through
AIRFLOW_CONN_PIPELINE_POSTGRES. Raw trades are loaded straight into staging.raw_prices from
the bundled recording; the expected candle is Binance's official one for 2020-01-01.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

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


def dags_test(env: dict[str, str], pg_dsn: str, symbols: str) -> subprocess.CompletedProcess[str]:
    run_env = {
        **env,
        "AIRFLOW_CONN_PIPELINE_POSTGRES": _connection_json(pg_dsn),
        "BINANCE_SYMBOLS": symbols,
        "RAW_RETENTION_DAYS": "7",
        # 2020-01-02 is before the DAG's fixed start date: Airflow creates no task for such a
        # manual run unless the start date is moved back (see the DAG's doc).
        "DAILY_SUMMARY_START_DATE": "2020-01-01",
    }
    return subprocess.run(  # noqa: S603 - fixed argv
        [str(AIRFLOW_BIN), "dags", "test", "get_daily_summary", "2020-01-02"],
        env=run_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


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


def test_dags_test_summarises_2020_01_01_like_binance(
    airflow_home: dict[str, str], pg_dsn: str, conn: psycopg.Connection
) -> None:
    assert load_recording(conn) == 194_010
    conn.execute("call staging.create_raw_prices_partitions('2019-12-01', '2019-12-01')")  # old

    result = dags_test(airflow_home, pg_dsn, "BTCUSDT")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "data quality ok for 2020-01-01: 1 candle(s)" in output, output[-5000:]

    row = conn.execute(
        "select open_price, high_price, low_price, close_price, volume, trade_count "
        "from analytics.daily_summary_dw where event_date = '2020-01-01' and symbol = 'BTCUSDT'"
    ).fetchone()
    assert row == (
        Decimal("7195.24"), Decimal("7255.00"), Decimal("7175.15"), Decimal("7200.85"),
        Decimal("16792.388165"), 194_010,
    )  # fmt: skip
    assert conn.execute("select count(*) from analytics.daily_summary_dw").fetchone() == (1,)
    # make_partitions: the day .. data-interval end + 3; purge: 7 days up to 2020-01-02.
    assert partitions(conn) == [f"raw_prices_p202001{d:02d}" for d in range(1, 6)]

    first = conn.execute("select * from analytics.daily_summary_dw").fetchall()
    again = dags_test(airflow_home, pg_dsn, "BTCUSDT")
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    assert conn.execute("select * from analytics.daily_summary_dw").fetchall() == first


def test_failed_quality_check_names_the_problem_and_skips_the_purge(
    airflow_home: dict[str, str], pg_dsn: str, conn: psycopg.Connection
) -> None:
    load_recording(conn, limit=1000)
    conn.execute("call staging.create_raw_prices_partitions('2019-12-01', '2019-12-01')")  # old

    result = dags_test(airflow_home, pg_dsn, "BTCUSDT,ETHUSDT")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-5000:]
    assert "DagRun failed" in output
    assert "data quality failed for 2020-01-01 (1 problem(s))" in output, output[-5000:]
    assert "ETHUSDT: no rows in staging.raw_prices that day (no candle)" in output
    # The summary ran (BTCUSDT's candle is there); the purge did not (old partition kept).
    assert conn.execute(
        "select symbol, trade_count from analytics.daily_summary_dw"
    ).fetchall() == [("BTCUSDT", 1000)]
    assert "raw_prices_p20191201" in partitions(conn)
