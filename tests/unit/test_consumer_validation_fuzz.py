"""Property-based fuzzing of the consumer's record classification (hypothesis, local Spark).

Each example is a micro-batch of up to 200 Kafka values (good events, events with one to
three fields broken, and anything at all: binary, arbitrary JSON, foreign records, deep
nesting, giant strings, huge and negative numbers, odd unicode), run through
transform_batch on a local SparkSession. Properties, against the plain-Python contract in
tests/consumer_records.py:
- no exception: nothing a record holds fails the batch;
- a record is stored exactly when the contract finds nothing wrong with it, and a stored row
  carries the record's own values (exact decimals, UTC times);
- every other record is rejected with a reason the contract also finds, a detail, and its
  Kafka coordinates and bytes.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from consumer_records import (
    MAX_AHEAD_US,
    NOW_US,
    parse_record,
    records,
    violations,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import SparkSession

from consumer_app.dead_letters import rejected_from_arrow, stored_part
from consumer_app.transform import transform_batch
from consumer_app.validation import REASONS, TimeBounds

pytestmark = pytest.mark.unit

# 30 batches of up to 200 records: ~3,000 records per run (each batch is one Spark job)
FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BOUNDS = TimeBounds(now_us=NOW_US, max_ahead_us=MAX_AHEAD_US)
KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset bigint, timestamp timestamp"
)


def _utc(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


def _key(obj: dict[str, Any]) -> tuple[Any, ...]:
    price_time = obj["trade_time_us"] if obj["stream"] == "trade" else obj["event_time_us"]
    return (obj["symbol"], obj["stream"], obj["sequence_id"], price_time)


@FUZZ
@given(batch=st.lists(records(), min_size=1, max_size=200))
def test_every_record_is_stored_or_rejected_with_a_reason(
    spark: SparkSession, batch: list[bytes | None]
) -> None:
    stamp = dt.datetime(2025, 3, 4, tzinfo=dt.UTC)
    frame = spark.createDataFrame(
        [(b"K", value, "prices", 3, offset, stamp) for offset, value in enumerate(batch)],
        KAFKA_SCHEMA,
    )
    # split as the job splits it: Arrow, then only the dead letters' columns become Python
    # (a rejected record's own columns may hold a time no datetime can, e.g. year 294247)
    table = transform_batch(frame, {}, BOUNDS).toArrow()  # one Spark job per example
    stored = stored_part(table).to_pylist()
    rejected = {r.offset: r for r in rejected_from_arrow(table)}

    expected_bad = {offset: violations(value) for offset, value in enumerate(batch)}
    good = {offset for offset, found in expected_bad.items() if not found}
    assert set(rejected) == set(expected_bad) - good, "stored/rejected split differs"
    for offset, record in rejected.items():
        assert record.reason in expected_bad[offset], (batch[offset], record.reason)
        assert record.reason in REASONS and record.detail
        assert record.value == batch[offset] and record.partition == 3
        assert record.topic == "prices" and record.key == b"K"

    # stored rows: one per distinct event key (a key repeated in a batch is written once),
    # each carrying the values of a record with that key
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for offset in sorted(good):
        obj = parse_record(batch[offset])
        by_key.setdefault(_key(obj), []).append(obj)
    assert sorted((r["symbol"], r["stream"], r["sequence_id"]) for r in stored) == sorted(
        (k[0], k[1], k[2]) for k in by_key
    )
    for row in stored:
        key = (row["symbol"], row["stream"], row["sequence_id"], None)
        candidates = [
            o for k, objs in by_key.items() if k[:3] == key[:3] for o in objs
        ]  # same key fields; the price time is checked below
        assert any(
            row["event_time"] == _utc(_key(o)[3])
            and row["price"] == Decimal(o["price"])
            and row["quantity"] == (None if o.get("quantity") is None else Decimal(o["quantity"]))
            and row["received_at"] == _utc(o["received_at_us"])
            and row["source"] == (o.get("source") or "ws")
            for o in candidates
        ), row
