"""End to end: a recording replayed through the whole pipeline lands exactly in PostgreSQL.

Data path under test: recording (recordings/*.jsonl.gz) -> `python -m producer_app.replay`
(replay server + producer, real Binance frames) -> real Kafka topic -> `python -m consumer_app`
(the Spark Structured Streaming job, as a subprocess) -> staging.raw_prices in a fresh database,
plus the last price per symbol in Redis. Topics, database, checkpoint and Redis prefix are the
test's own (fixtures), handed to the apps through their documented environment variables.

Expected values come from the recording itself, parsed here with gzip + json + Decimal,
independently of producer_app and consumer_app.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = ROOT / "recordings"
# Real Binance trades with µs timestamps (timeUnit=MICROSECOND), 10,000 frames.
TRX_RECORDING = RECORDINGS / "trxusdt-trade-2025-03-04.jsonl.gz"
# Trades derived from Binance's 2020-01-01 klines, ms timestamps; the first frames only.
BTC_RECORDING = RECORDINGS / "btcusdt-trade-2020-01-01.jsonl.gz"
BTC_FRAMES = 3_000

CONSUMER_START_TIMEOUT_S = 240.0
LAND_TIMEOUT_S = 300.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Trade:
    """One trade as the recording has it (the test's independent expectation)."""

    symbol: str
    trade_id: int
    price: Decimal
    quantity: Decimal
    is_buyer_maker: bool
    trade_time: datetime


def _to_datetime(value: int, micros: bool) -> datetime:
    return EPOCH + timedelta(microseconds=value if micros else value * 1000)


def read_trades(path: Path, limit: int | None = None) -> list[Trade]:
    """Trades of a recording; µs vs ms told apart by the magnitude of E (µs > 1e14)."""
    trades: list[Trade] = []
    with gzip.open(path, "rt", encoding="utf-8") as frames:
        for line in frames:
            if limit is not None and len(trades) >= limit:
                break
            if not line.strip():
                continue
            data = json.loads(line)["data"]
            if data.get("e") != "trade":
                continue
            micros = int(data["E"]) > 10**14
            trades.append(
                Trade(
                    symbol=data["s"],
                    trade_id=int(data["t"]),
                    price=Decimal(data["p"]),
                    quantity=Decimal(data["q"]),
                    is_buyer_maker=bool(data["m"]),
                    trade_time=_to_datetime(int(data["T"]), micros),
                )
            )
    return trades


def write_prefix(source: Path, target: Path, frames: int) -> None:
    """The first `frames` lines of a recording, byte for byte, gzip again."""
    with gzip.open(source, "rb") as src, gzip.open(target, "wb") as dst:
        for count, line in enumerate(src):
            if count >= frames:
                break
            dst.write(line)


@dataclass
class PipelineRun:
    env: dict[str, str]
    prices_topic: str
    checkpoint: Path
    pg_dsn: str
    redis_url: str
    redis_prefix: str
    consumer: subprocess.Popen[bytes]
    consumer_log: Path


def _consumer_alive_or_fail(run: PipelineRun) -> None:
    if run.consumer.poll() is not None:
        pytest.fail(
            f"consumer_app exited with {run.consumer.returncode}; last log lines:\n"
            + "\n".join(run.consumer_log.read_text(errors="replace").splitlines()[-40:]),
            pytrace=False,
        )


def _wait_for_consumer_ready(run: PipelineRun) -> None:
    """Ready once Spark has written the query's first offsets file (it has read the topic)."""
    deadline = time.monotonic() + CONSUMER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        _consumer_alive_or_fail(run)
        if list(run.checkpoint.glob("prices/offsets/*")) or "consumer started" in (
            run.consumer_log.read_text(errors="replace")
        ):
            return
        time.sleep(1)
    pytest.fail(f"consumer_app did not start within {CONSUMER_START_TIMEOUT_S}s", pytrace=False)


@pytest.fixture
def pipeline(
    tmp_path: Path,
    stack_env: dict[str, str],
    pg_dsn: str,
    redis_url: str,
    redis_prefix: str,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    spark_jars: str,
) -> Iterator[PipelineRun]:
    """A Spark consumer subprocess on the test's own topic, database, checkpoint and Redis key."""
    for module in ("consumer_app/__main__.py", "producer_app/replay.py"):
        if not (ROOT / module).is_file():
            pytest.fail(f"{module} is missing: the e2e test needs the app to exist", pytrace=False)
    prices_topic = make_topic(6)
    dlq_topic = make_topic(1)
    gaps_topic = make_topic(1)
    dsn = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    checkpoint = tmp_path / "checkpoint"
    env = {
        **os.environ,
        **stack_env,
        "POSTGRES_HOST": str(dsn["host"]),
        "POSTGRES_PORT": str(dsn["port"]),
        "POSTGRES_DB": str(dsn["dbname"]),
        "POSTGRES_USER": str(dsn["user"]),
        "POSTGRES_PASSWORD": str(dsn.get("password", "")),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC_PRICES": prices_topic,
        "KAFKA_TOPIC_DLQ": dlq_topic,
        "KAFKA_TOPIC_GAPS": gaps_topic,
        "SPARK_CHECKPOINT_DIR": str(checkpoint),
        "SPARK_JARS": spark_jars,
        "SPARK_MASTER": "local[2]",
        "SPARK_TRIGGER_INTERVAL": "",
        "PYSPARK_PYTHON": sys.executable,
        "CONSUMER_REDIS_PREFIX": redis_prefix + "last_price",
        "CONSUMER_METRICS_PORT": "0",
        "PRODUCER_METRICS_PORT": "0",
    }
    consumer_log = tmp_path / "consumer.log"
    with consumer_log.open("wb") as log_file:
        consumer = subprocess.Popen(  # noqa: S603 - fixed argv, our own module
            [sys.executable, "-m", "consumer_app"],
            cwd=tmp_path,  # not ROOT: the apps must not pick up the developer's .env
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = PipelineRun(
        env={**env, "PYTHONPATH": str(ROOT)},
        prices_topic=prices_topic,
        checkpoint=checkpoint,
        pg_dsn=pg_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        consumer=consumer,
        consumer_log=consumer_log,
    )
    try:
        _wait_for_consumer_ready(run)
        yield run
    finally:
        if consumer.poll() is None:
            os.killpg(consumer.pid, signal.SIGTERM)
            try:
                consumer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(consumer.pid, signal.SIGKILL)
                consumer.wait(timeout=10)
        print("consumer log tail:\n" + "\n".join(consumer_log.read_text().splitlines()[-15:]))


def replay(run: PipelineRun, recording: Path, cwd: Path) -> str:
    """`python -m producer_app.replay --file F --speed max`, as `make replay` runs it."""
    result = subprocess.run(  # noqa: S603 - fixed argv, our own module
        [sys.executable, "-m", "producer_app.replay", "--file", str(recording), "--speed", "max"],
        cwd=cwd,
        env=run.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        f"replay of {recording.name} failed ({result.returncode}):\n"
        f"{result.stdout}\n{result.stderr}"
    )
    return result.stdout + result.stderr


def topic_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-probe"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        consumer.close()


def committed_offsets(checkpoint: Path) -> dict[int, int] | None:
    """Offsets of the newest batch Spark has both planned (offsets/N) and committed (commits/N)."""
    commits = sorted(int(p.name) for p in (checkpoint / "commits").glob("*") if p.name.isdigit())
    if not commits:
        return None
    lines = (checkpoint / "offsets" / str(commits[-1])).read_text().splitlines()
    for line in lines[2:]:
        source = json.loads(line)
        if isinstance(source, dict):
            for partitions in source.values():
                return {int(p): int(o) for p, o in partitions.items()}
    return None


def wait_until_consumed(run: PipelineRun, bootstrap: str) -> None:
    """Until the consumer has committed a batch ending at the topic's end offsets."""
    end = topic_end_offsets(bootstrap, run.prices_topic)
    deadline = time.monotonic() + LAND_TIMEOUT_S
    while time.monotonic() < deadline:
        _consumer_alive_or_fail(run)
        done = committed_offsets(run.checkpoint / "prices")
        if done is not None and all(done.get(p, 0) >= o for p, o in end.items()):
            return
        time.sleep(1)
    pytest.fail(
        f"consumer did not reach the end offsets {end} within {LAND_TIMEOUT_S}s "
        f"(committed: {committed_offsets(run.checkpoint / 'prices')})",
        pytrace=False,
    )


def landed_rows(pg_dsn: str) -> list[tuple[str, str, int, Decimal, Decimal, bool, datetime]]:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(
            "select symbol, stream, sequence_id, price, quantity, is_buyer_maker, event_time"
            " from staging.raw_prices"
        ).fetchall()


def test_replayed_recordings_land_exactly_once_with_exact_prices(
    pipeline: PipelineRun, tmp_path: Path, kafka_bootstrap: str
) -> None:
    btc_prefix = tmp_path / "btcusdt-prefix.jsonl.gz"
    write_prefix(BTC_RECORDING, btc_prefix, BTC_FRAMES)
    expected = read_trades(TRX_RECORDING) + read_trades(btc_prefix)
    assert len(expected) == 10_000 + BTC_FRAMES  # the inputs are what the test thinks they are

    replay(pipeline, TRX_RECORDING, tmp_path)
    replay(pipeline, btc_prefix, tmp_path)
    wait_until_consumed(pipeline, kafka_bootstrap)
    rows = landed_rows(pipeline.pg_dsn)

    # Count = trades in the recordings, and no (symbol, stream, sequence_id) twice.
    assert len(rows) == len(expected)
    keys = [(r[0], r[1], r[2]) for r in rows]
    assert len(set(keys)) == len(keys)

    # Every row equals its trade in the recording: exact decimals, UTC time, flags.
    landed = {(r[0], r[2]): r for r in rows}
    mismatches = []
    for trade in expected:
        row = landed.get((trade.symbol, trade.trade_id))
        want = (
            trade.symbol,
            "trade",
            trade.trade_id,
            trade.price,
            trade.quantity,
            trade.is_buyer_maker,
            trade.trade_time,
        )
        if row is None or tuple(row) != want:
            mismatches.append((want, row))
    assert mismatches[:5] == []

    # Redis holds the last price of each symbol: the price of its latest trade by (time, id).
    last_by_symbol: dict[str, Trade] = {}
    for trade in expected:
        best = last_by_symbol.get(trade.symbol)
        if best is None or (trade.trade_time, trade.trade_id) > (best.trade_time, best.trade_id):
            last_by_symbol[trade.symbol] = trade
    client = redis.Redis.from_url(pipeline.redis_url, decode_responses=True)
    try:
        state = client.hgetall(pipeline.redis_prefix + "last_price")
    finally:
        client.close()
    for symbol, trade in last_by_symbol.items():
        value = state.get(f"{symbol}|trade")
        assert value is not None, f"no last price for {symbol} in Redis: {state}"
        # Layout (consumer_app/state.py): field "SYMBOL|stream" -> "price|price_time_us|sequence_id"
        text = value if isinstance(value, str) else value.decode()
        assert Decimal(text.split("|")[0]) == trade.price


def test_replaying_the_same_recording_twice_adds_no_rows(
    pipeline: PipelineRun, tmp_path: Path, kafka_bootstrap: str
) -> None:
    expected = read_trades(TRX_RECORDING)

    replay(pipeline, TRX_RECORDING, tmp_path)
    wait_until_consumed(pipeline, kafka_bootstrap)
    first = landed_rows(pipeline.pg_dsn)
    # The producer re-sends every event: Kafka now holds each trade twice.
    replay(pipeline, TRX_RECORDING, tmp_path)
    wait_until_consumed(pipeline, kafka_bootstrap)
    second = landed_rows(pipeline.pg_dsn)

    assert len(first) == len(expected)
    assert sorted(second) == sorted(first)
