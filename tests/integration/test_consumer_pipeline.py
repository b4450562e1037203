"""Integration tests and fault drills of consumer_app on real Kafka, Spark, Redis and PostgreSQL.

A recording of 10,000 real TRXUSDT trades (tests/fixtures/trxusdt-trade-2025-03-04.csv,
µs times) is turned into contract events here, independently of producer_app, produced
into a fresh topic, and consumed by `python -m consumer_app` running as a subprocess
(its own process group, so kill -9 takes the JVM with it). The expected table is
computed in plain Python from the recording: previous price = price of the preceding
trade in (trade time, trade id) order, change = price - previous, pct = change * 100 /
previous rounded half-up to 8 decimals. Every drill must end with exactly that table.

The PostgreSQL-restart drill runs against a private throw-away server (initdb in
tmp_path, a port in 25000-25999) so restarting it cannot disturb other test sessions
that share the stack's server.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis
from confluent_kafka import Producer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECORDING = ROOT / "tests" / "fixtures" / "trxusdt-trade-2025-03-04.csv"
UTC = dt.UTC
RUN_TIMEOUT_S = 420


# ----------------------------------------------------------------------------- expected rows
@dataclass(frozen=True)
class Trade:
    symbol: str
    trade_id: int
    event_time_us: int
    trade_time_us: int
    price: str
    quantity: str
    is_buyer_maker: bool
    received_at_us: int


def load_recording() -> list[Trade]:
    with RECORDING.open(newline="") as handle:
        return [
            Trade(
                symbol=row["Symbol"],
                trade_id=int(row["TradeId"]),
                event_time_us=int(row["EventTime"]),
                trade_time_us=int(row["TransactionTime"]),
                price=row["Price"],
                quantity=row["Quantity"],
                is_buyer_maker=row["IsBuyerMarketMaker"] == "1",
                received_at_us=int(row["TimestampOfReceive"]),
            )
            for row in csv.DictReader(handle)
        ]


def to_event(trade: Trade) -> bytes:
    """The contract's JSON (docs/architecture.md), built here without producer_app."""
    return orjson.dumps(
        {
            "symbol": trade.symbol,
            "stream": "trade",
            "event_time_us": trade.event_time_us,
            "trade_time_us": trade.trade_time_us,
            "sequence_id": trade.trade_id,
            "price": trade.price,
            "quantity": trade.quantity,
            "is_buyer_maker": trade.is_buyer_maker,
            "received_at_us": trade.received_at_us,
            "source": "ws",
        }
    )


def _utc(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=us)


def expected_rows(trades: list[Trade]) -> list[tuple[Any, ...]]:
    """All columns of staging.raw_prices except ingested_at, computed in plain Python."""
    rows = []
    last: dict[str, Decimal] = {}  # previous price per symbol
    for trade in sorted(trades, key=lambda t: (t.symbol, t.trade_time_us, t.trade_id)):
        previous = last.get(trade.symbol)
        price = Decimal(trade.price)
        change = None if previous is None else price - previous
        pct = (
            None
            if previous is None or change is None
            else (change * 100 / previous).quantize(Decimal("1e-8"), rounding=ROUND_HALF_UP)
        )
        rows.append(
            (
                trade.symbol,
                "trade",
                trade.trade_id,
                _utc(trade.trade_time_us),
                _utc(trade.event_time_us),
                price,
                Decimal(trade.quantity),
                trade.is_buyer_maker,
                previous,
                change,
                pct,
                _utc(trade.received_at_us),
                "ws",
            )
        )
        last[trade.symbol] = price
    return rows


TABLE_QUERY = """
select symbol, stream, sequence_id, event_time, exchange_event_time, price, quantity,
       is_buyer_maker, previous_price, price_change, price_change_pct, received_at, source
from staging.raw_prices order by symbol, stream, event_time, sequence_id
"""
CHECKSUM_QUERY = """
select count(*), md5(string_agg(concat_ws('|', symbol, stream, sequence_id, event_time,
       exchange_event_time, price::numeric, quantity, is_buyer_maker, previous_price,
       price_change, price_change_pct, received_at, source), ',' order by symbol, stream,
       event_time, sequence_id))
from staging.raw_prices
"""


def table_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute(TABLE_QUERY)]


def assert_table_equals_recording(dsn: str, trades: list[Trade]) -> str:
    rows = table_rows(dsn)
    expected = expected_rows(trades)
    assert len(rows) == len(trades)
    keys = [(r[0], r[1], r[2], r[3]) for r in rows]
    assert len(set(keys)) == len(keys), "duplicate rows"
    # Decimal equality ignores the stored scale (0.2312 == 0.231200000000000000)
    mismatches = [(got, want) for got, want in zip(rows, expected, strict=True) if got != want]
    assert not mismatches, f"{len(mismatches)} rows differ, first: {mismatches[0]}"
    with psycopg.connect(dsn) as conn:
        count, checksum = conn.execute(CHECKSUM_QUERY).fetchone()  # type: ignore[misc]
    assert count == len(trades)
    return str(checksum)


# ----------------------------------------------------------------------------- running the job
def produce(bootstrap: str, topic: str, trades: list[Trade]) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    for trade in trades:
        producer.produce(topic, key=trade.symbol.encode(), value=to_event(trade))
        producer.poll(0)
    assert producer.flush(60) == 0


@dataclass
class ConsumerRun:
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, **overrides: str) -> None:
        env = self.env | overrides
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "consumer_app"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill9(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            pytest.fail(f"consumer did not finish in {timeout}s; log:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill9()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def run_to_end(self) -> None:
        """Drain the topic with the availableNow trigger and check the exit code."""
        self.start(SPARK_TRIGGER_INTERVAL="availableNow")
        code = self.wait()
        assert code == 0, f"consumer exited with {code}; log:\n{self.tail()}"


def consumer_env(
    *,
    dsn: str,
    redis_url: str,
    prefix: str,
    bootstrap: str,
    topic: str,
    jars: str,
    checkpoint: Path,
    max_offsets: int,
) -> dict[str, str]:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    redis_params = redis.connection.parse_url(redis_url)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTGRES_", "REDIS_", "KAFKA_", "SPARK_", "CONSUMER_"))
    }
    return env | {
        "POSTGRES_HOST": str(params.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(params.get("port", "5432")),
        "POSTGRES_DB": str(params["dbname"]),
        "POSTGRES_USER": str(params.get("user", "")),
        "POSTGRES_PASSWORD": str(params.get("password", "")),
        "REDIS_HOST": str(redis_params.get("host", "127.0.0.1")),
        "REDIS_PORT": str(redis_params.get("port", 6379)),
        "REDIS_DB": str(redis_params.get("db", 0)),
        "REDIS_PASSWORD": str(redis_params.get("password") or ""),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PRICES": topic,
        "KAFKA_TOPIC_GAPS": f"{topic}.gaps.absent",
        "SPARK_MASTER": "local[2]",
        "SPARK_JARS": jars,
        "SPARK_CHECKPOINT_DIR": str(checkpoint),
        "SPARK_MAX_OFFSETS_PER_TRIGGER": str(max_offsets),
        "SPARK_TRIGGER_INTERVAL": "",
        "CONSUMER_REDIS_PREFIX": prefix.rstrip(":") + ":last_price",
        "CONSUMER_METRICS_PORT": "0",
        "CONSUMER_RETRY_SECONDS": "120",
    }


def ledger_batches(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        return int(conn.execute("select count(*) from staging.consumer_batches").fetchone()[0])  # type: ignore[index]


def wait_for(
    condition: Callable[[], bool], run: ConsumerRun, timeout: float = RUN_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (psycopg.OperationalError, redis.ConnectionError):
            pass
        if run.process is not None and run.process.poll() is not None:
            pytest.fail(f"consumer exited early ({run.process.returncode}); log:\n{run.tail()}")
        time.sleep(0.2)
    pytest.fail(f"condition not met in {timeout}s; log:\n{run.tail()}")


@pytest.fixture(scope="module")
def trades() -> list[Trade]:
    return load_recording()


@pytest.fixture
def setup(
    pg_dsn: str,
    redis_url: str,
    redis_prefix: str,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    spark_jars: str,
    trades: list[Trade],
    tmp_path: Path,
) -> Iterator[Callable[..., ConsumerRun]]:
    """Factory: a topic holding the recording and a ConsumerRun wired to it."""
    runs: list[ConsumerRun] = []

    def make(max_offsets: int = 2_000, dsn: str = pg_dsn) -> ConsumerRun:
        topic = make_topic(6)
        produce(kafka_bootstrap, topic, trades)
        env = consumer_env(
            dsn=dsn,
            redis_url=redis_url,
            prefix=redis_prefix,
            bootstrap=kafka_bootstrap,
            topic=topic,
            jars=spark_jars,
            checkpoint=tmp_path / "checkpoint",
            max_offsets=max_offsets,
        )
        run = ConsumerRun(env, tmp_path / "consumer.log")
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.stop()


def redis_last(run: ConsumerRun, redis_url: str) -> dict[str, str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return client.hgetall(run.env["CONSUMER_REDIS_PREFIX"])  # type: ignore[return-value]
    finally:
        client.close()


# ----------------------------------------------------------------------------- tests
def test_recording_lands_exactly_once_with_exact_price_changes(
    setup: Callable[..., ConsumerRun], pg_dsn: str, redis_url: str, trades: list[Trade]
) -> None:
    run = setup(max_offsets=2_000)  # 5 batches: 4 batch boundaries use the Redis state
    run.run_to_end()
    assert_table_equals_recording(pg_dsn, trades)
    assert ledger_batches(pg_dsn) == 5
    newest = max(trades, key=lambda t: (t.trade_time_us, t.trade_id))
    assert list(redis_last(run, redis_url)) == ["TRXUSDT|trade"]
    stored_price, stored_time, stored_id = redis_last(run, redis_url)["TRXUSDT|trade"].split("|")
    assert (Decimal(stored_price), int(stored_time), int(stored_id)) == (
        Decimal(newest.price),
        newest.trade_time_us,
        newest.trade_id,
    )
    status = orjson.loads((Path(run.env["SPARK_CHECKPOINT_DIR"]) / "status.json").read_bytes())
    assert status["state"] == "stopped"
    assert status["rows_total"] == len(trades)

    # a lost checkpoint replays everything under a new query id: nothing duplicates or changes
    shutil.rmtree(run.env["SPARK_CHECKPOINT_DIR"])
    run.run_to_end()
    assert_table_equals_recording(pg_dsn, trades)


def test_kill_minus_nine_at_three_random_points(
    setup: Callable[..., ConsumerRun], pg_dsn: str, trades: list[Trade]
) -> None:
    run = setup(max_offsets=500)  # 20 batches
    rng = random.Random()  # noqa: S311 - kill points, not cryptography
    for _ in range(3):
        run.start()
        # wait until the job is committing, then kill it at a random moment mid-stream
        before = ledger_batches(pg_dsn)
        wait_for(lambda: ledger_batches(pg_dsn) > before, run)  # noqa: B023
        time.sleep(rng.uniform(0.0, 4.0))
        run.kill9()
        assert ledger_batches(pg_dsn) < 20, "the stream ended before the kill; use smaller batches"
    run.run_to_end()
    assert_table_equals_recording(pg_dsn, trades)


def test_redis_flushed_mid_stream(
    setup: Callable[..., ConsumerRun], pg_dsn: str, redis_url: str, trades: list[Trade]
) -> None:
    run = setup(max_offsets=500)
    run.start()
    wait_for(lambda: ledger_batches(pg_dsn) >= 4, run)
    client = redis.Redis.from_url(redis_url)
    # the consumer's keys are its whole Redis state; other sessions share this server
    deleted = client.delete(
        run.env["CONSUMER_REDIS_PREFIX"], run.env["CONSUMER_REDIS_PREFIX"] + ":watermark"
    )
    client.close()
    assert deleted == 2
    assert ledger_batches(pg_dsn) < 20
    wait_for(lambda: ledger_batches(pg_dsn) >= 20, run)
    run.kill9()
    assert_table_equals_recording(pg_dsn, trades)
    assert "recovering last prices from PostgreSQL" in run.log_path.read_text()


# ----------------------------------------------------------------------------- private PostgreSQL
def _free_port() -> int:
    for port in random.sample(range(25000, 26000), 200):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port in 25000-25999")


@dataclass
class PrivatePostgres:
    data_dir: Path
    port: int
    bin_dir: Path

    def _pg(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, timeout=120, check=False)  # noqa: S603
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed: {done.stderr.decode(errors='replace')}"
            )

    def start(self) -> None:
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1",
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=crypto user=postgres"


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = Path("/usr/lib/postgresql/15/bin")
    if not (bin_dir / "initdb").exists():
        pytest.fail("PostgreSQL 15 binaries are missing; install them with `make services`")
    # not under pytest's tmp dir: the postgres user cannot enter root's 0700 directories
    base = Path(tempfile.mkdtemp(prefix="consumer_pg_"))
    data = base / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(data, "postgres")
    server = PrivatePostgres(data, _free_port(), bin_dir)
    server._pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust")
    server.start()
    try:
        with psycopg.connect(
            server.dsn.replace("dbname=crypto", "dbname=postgres"), autocommit=True
        ) as conn:
            conn.execute("create database crypto")
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute((ROOT / "init.sql").read_text())
        yield server
    finally:
        try:
            server.stop()
        except RuntimeError:
            pass  # already stopped by a failed drill
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_restarted_mid_stream(
    setup: Callable[..., ConsumerRun], private_postgres: PrivatePostgres, trades: list[Trade]
) -> None:
    dsn = private_postgres.dsn
    run = setup(max_offsets=500, dsn=dsn)
    run.start()
    wait_for(lambda: ledger_batches(dsn) >= 4, run)
    private_postgres.stop()
    time.sleep(3)  # the consumer meets a dead server and retries (CONSUMER_RETRY_SECONDS)
    private_postgres.start()
    assert ledger_batches(dsn) < 20
    wait_for(lambda: ledger_batches(dsn) >= 20, run)
    run.kill9()
    assert_table_equals_recording(dsn, trades)


def test_gap_events_land_once_in_feed_gaps(
    setup: Callable[..., ConsumerRun],
    pg_dsn: str,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
) -> None:
    run = setup(max_offsets=10_000)
    gaps_topic = make_topic(1)
    first_report = {
        "symbol": "TRXUSDT",
        "stream": "trade",
        "first_missing_id": 348656900,
        "last_missing_id": 348656904,
        "window_start_us": 1_741_046_500_000_000,
        "window_end_us": 1_741_046_501_000_000,
        "filled_count": 0,
        "unfilled_count": 5,
        "status": "unfilled",
        "reason": "REST fill failed",
        "detected_at_us": 1_741_046_502_000_000,
    }
    later_report = first_report | {
        "filled_count": 5,
        "unfilled_count": 0,
        "status": "filled",
        "reason": "filled from REST",
        "detected_at_us": 1_741_046_503_000_000,
    }
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    # the same gap reported twice, then its later (filled) report, then the stale one again
    for report in (first_report, first_report, later_report, first_report):
        producer.produce(gaps_topic, key=b"TRXUSDT", value=orjson.dumps(report))
    assert producer.flush(30) == 0
    run.env["KAFKA_TOPIC_GAPS"] = gaps_topic
    run.run_to_end()
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "select symbol, stream, first_missing_id, last_missing_id, window_start, window_end,"
            " filled_count, unfilled_count, status, reason, detected_at from staging.feed_gaps"
        ).fetchall()
    assert rows == [
        (
            "TRXUSDT",
            "trade",
            348656900,
            348656904,
            _utc(1_741_046_500_000_000),
            _utc(1_741_046_501_000_000),
            5,
            0,
            "filled",
            "filled from REST",
            _utc(1_741_046_503_000_000),
        )
    ]
