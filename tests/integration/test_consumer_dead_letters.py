"""Dead letters on real Kafka, Spark, Redis and PostgreSQL (issue 12, items 4 and 5, and the fuzz).

One prices topic holds the 10,000 real TRXUSDT trades of tests/fixtures, 20 BTCUSDT trades of
2020-01-01 received today (a historical replay), and ~2,000 records no consumer can store,
interleaved: drawn by hypothesis from tests/consumer_records.py (foreign records, wrong
types, huge values, nulls, non-JSON, deep nesting, giant strings, negative and overflowing
numbers, odd unicode) plus events whose times lie out of range (year 5138, hours ahead of
their receive time, received "in the future"). A gaps topic holds good and bad gap reports.
The consumer drains both (availableNow). Then:
- staging.raw_prices is exactly the good trades (computed in plain Python);
- staging.rejected_records holds exactly the bad records, by Kafka (topic, partition,
  offset), each with a reason the plain-Python contract also finds, and its bytes;
- no bad record became a last price in Redis or made a partition beyond today;
- replaying both topics from the start (checkpoint deleted) changes neither table.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis
from confluent_kafka import Producer
from consumer_records import records, violations
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_consumer_pipeline import (
    ConsumerRun,
    Trade,
    assert_table_equals_recording,
    consumer_env,
    load_recording,
    to_event,
)

pytestmark = pytest.mark.integration

FUZZ_BATCHES = 30  # x 100 draws: ~2,000 bad records (the rest are good events: skipped)
DAY_2020_US = 1_577_836_800_000_000  # 2020-01-01 00:00 UTC
NOW_US = time.time_ns() // 1_000


def fuzzed_bad_records(batches: int) -> list[bytes | None]:
    """Records the contract refuses, drawn by hypothesis (derandomized), 100 draws a batch."""
    drawn: list[bytes | None] = []

    @settings(
        max_examples=batches,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(records(), min_size=100, max_size=100))
    def collect(batch: list[bytes | None]) -> None:
        drawn.extend(record for record in batch if violations(record, now_us=NOW_US))

    collect()
    return drawn


def trade_event(trade: Trade, **fields: Any) -> bytes:
    return orjson.dumps({**orjson.loads(to_event(trade)), **fields})


def replay_trades() -> list[Trade]:
    """20 BTCUSDT trades of 2020-01-01, received now: a replay of an old recording."""
    return [
        Trade(
            symbol="BTCUSDT",
            trade_id=200_000_000 + i,
            event_time_us=DAY_2020_US + i * 1_000_000 + 5,
            trade_time_us=DAY_2020_US + i * 1_000_000,
            price=f"7195.{i:02d}",
            quantity="0.01",
            is_buyer_maker=i % 2 == 0,
            received_at_us=NOW_US,
        )
        for i in range(20)
    ]


class Deliveries:
    """Produces records and remembers where each bad one landed (partition, offset)."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 20, "message.max.bytes": 1_000_000}
        )
        self.bad: dict[tuple[str, int, int], bytes | None] = {}

    def send(self, topic: str, value: bytes | None, key: bytes | None, *, bad: bool) -> None:
        def delivered(err: Any, msg: Any) -> None:
            assert err is None, err
            if bad:
                self.bad[(msg.topic(), msg.partition(), msg.offset())] = value

        self.producer.produce(topic, key=key, value=value, on_delivery=delivered)
        self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(120) == 0


def rejected_rows(dsn: str) -> dict[tuple[str, int, int], tuple[str, str, bytes | None]]:
    with psycopg.connect(dsn) as conn:
        return {
            (topic, partition, offset): (reason, detail, None if value is None else bytes(value))
            for topic, partition, offset, reason, detail, value in conn.execute(
                "select topic, kafka_partition, kafka_offset, reason, detail, kafka_value"
                " from staging.rejected_records"
            )
        }


def test_bad_records_are_dead_lettered_and_good_ones_stored_exactly_once(
    pg_dsn: str,
    redis_url: str,
    redis_prefix: str,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    spark_jars: str,
    tmp_path: Path,
) -> None:
    recording = load_recording()
    replay = replay_trades()
    bad_records = fuzzed_bad_records(FUZZ_BATCHES)
    assert len(bad_records) > 1_500
    newest = max(recording, key=lambda t: (t.trade_time_us, t.trade_id))
    out_of_range = {
        # a trade in year 5138 that would become TRXUSDT's last price and make a partition
        "year_5138": trade_event(newest, sequence_id=1, trade_time_us=10**17 - 1, price="999"),
        # two hours after its own receive time
        "ahead": trade_event(
            newest, sequence_id=2, trade_time_us=newest.received_at_us + 7_200_000_000
        ),
        # received (and traded) in the year 3000, consistent with itself, not with our clock
        "received_in_3000": trade_event(
            newest,
            sequence_id=3,
            event_time_us=32_503_680_000_000_000,
            trade_time_us=32_503_680_000_000_000,
            received_at_us=32_503_680_000_000_001,
        ),
    }
    prices, gaps = make_topic(6), make_topic(1)
    sender = Deliveries(kafka_bootstrap)
    good = recording + replay
    for index, trade in enumerate(good):
        sender.send(prices, to_event(trade), trade.symbol.encode(), bad=False)
        share = len(bad_records) / len(good)  # spread them between the good trades
        for bad in bad_records[int(index * share) : int((index + 1) * share)]:
            sender.send(prices, bad, None if index % 2 else b"\x00\xff", bad=True)
    for poison in out_of_range.values():
        sender.send(prices, poison, b"TRXUSDT", bad=True)

    good_gap = {
        "symbol": "TRXUSDT",
        "stream": "trade",
        "first_missing_id": 348_656_900,
        "last_missing_id": 348_656_904,
        "window_start_us": 1_741_046_500_000_000,
        "window_end_us": 1_741_046_501_000_000,
        "filled_count": 0,
        "unfilled_count": 5,
        "status": "unfilled",
        "reason": "REST fill failed",
        "detected_at_us": 1_741_046_502_000_000,
    }
    bad_gaps = {
        "missing_field": {k: v for k, v in good_gap.items() if k != "first_missing_id"},
        "bad_value": good_gap | {"first_missing_id": 1, "status": "lost"},
        "not_an_event": None,
    }
    sender.send(gaps, orjson.dumps(good_gap), b"TRXUSDT", bad=False)
    for gap in bad_gaps.values():
        sender.send(gaps, None if gap is None else orjson.dumps(gap), b"TRXUSDT", bad=True)
    # a count PostgreSQL's integer column refuses: that row alone is dead-lettered by the
    # database's verdict (or stored, once the column is bigint)
    huge_gap = good_gap | {"first_missing_id": 2, "unfilled_count": 2**40}
    with psycopg.connect(pg_dsn) as conn:
        count_type = conn.execute(
            "select data_type from information_schema.columns where table_schema = 'staging'"
            " and table_name = 'feed_gaps' and column_name = 'unfilled_count'"
        ).fetchone()
    huge_fits = count_type == ("bigint",)
    sender.send(gaps, orjson.dumps(huge_gap), b"TRXUSDT", bad=not huge_fits)
    sender.flush()

    env = consumer_env(
        dsn=pg_dsn,
        redis_url=redis_url,
        prefix=redis_prefix,
        bootstrap=kafka_bootstrap,
        topic=prices,
        jars=spark_jars,
        checkpoint=tmp_path / "checkpoint",
        max_offsets=5_000,
    ) | {"KAFKA_TOPIC_GAPS": gaps}
    run = ConsumerRun(env, tmp_path / "consumer.log")
    try:
        run.run_to_end()

        # every good trade exactly once, with its exact price change
        checksum = assert_table_equals_recording(pg_dsn, good)
        # every bad record exactly once, with a reason the contract agrees with
        dead = rejected_rows(pg_dsn)
        assert set(dead) == set(sender.bad), (
            f"{len(set(sender.bad) - set(dead))} bad records missing from the dead letters, "
            f"{len(set(dead) - set(sender.bad))} good ones in them"
        )
        for coordinates, (reason, detail, record) in dead.items():
            assert record == sender.bad[coordinates]
            assert detail
            if coordinates[0] == prices:
                assert reason in violations(record, now_us=NOW_US), (record, reason, detail)
        by_value = {value: reason for reason, _, value in dead.values()}
        assert {name: by_value[v] for name, v in out_of_range.items()} == dict.fromkeys(
            out_of_range, "time_out_of_range"
        )
        gap_reasons = {reason for (topic, _, _), (reason, _, _) in dead.items() if topic == gaps}
        assert gap_reasons == set(bad_gaps) | (set() if huge_fits else {"rejected_by_database"})
        with psycopg.connect(pg_dsn) as conn:
            stored_gaps = conn.execute(
                "select symbol, first_missing_id, status from staging.feed_gaps"
            ).fetchall()
            partitions = {
                row[0]
                for row in conn.execute(
                    "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
                    " where i.inhparent = 'staging.raw_prices'::regclass"
                )
            }
        assert sorted(stored_gaps) == sorted(
            [("TRXUSDT", 348_656_900, "unfilled")]
            + ([("TRXUSDT", 2, "unfilled")] if huge_fits else [])
        )
        assert partitions == {"raw_prices_p20200101", "raw_prices_p20250304"}

        # no bad record moved a last price
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            last = {str(k): str(v) for k, v in client.hgetall(env["CONSUMER_REDIS_PREFIX"]).items()}
        finally:
            client.close()
        stored = {}
        for key, encoded in last.items():
            price, price_time, trade_id = encoded.split("|")
            stored[key] = (Decimal(price), int(price_time), int(trade_id))
        assert stored == {
            f"{t.symbol}|trade": (Decimal(t.price), t.trade_time_us, t.trade_id)
            for t in (newest, replay[-1])
        }
        status = orjson.loads((tmp_path / "checkpoint" / "status.json").read_bytes())
        assert status["rejected_total"] == len(sender.bad)

        # a replay of both topics (checkpoint lost) stores nothing twice, rejects nothing twice
        shutil.rmtree(tmp_path / "checkpoint")
        run.run_to_end()
        assert assert_table_equals_recording(pg_dsn, good) == checksum
        assert rejected_rows(pg_dsn) == dead
    finally:
        run.stop()
