"""Unit tests of consumer_app.transform: the price-change rules on small DataFrames.

Expected values are written out by hand from the inputs (plain decimal arithmetic),
never computed by the code under test. A local SparkSession, no services.
"""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from consumer_app.schema import PRICE_CHANGE_PCT_TYPE, PRICE_CHANGE_TYPE, PRICE_TYPE
from consumer_app.transform import (
    LastPrice,
    StateKey,
    rejected_rows,
    stored_rows,
    transform_batch,
)
from consumer_app.validation import TimeBounds

pytestmark = pytest.mark.unit

BASE_US = 1_741_046_401_271_497  # 2025-03-04 00:00:01.271497 UTC, a real TRXUSDT trade time


def trade(symbol: str, trade_id: int, time_us: int, price: str, quantity: str = "1.5") -> bytes:
    return orjson.dumps(
        {
            "symbol": symbol,
            "stream": "trade",
            "event_time_us": time_us + 300,
            "trade_time_us": time_us,
            "sequence_id": trade_id,
            "price": price,
            "quantity": quantity,
            "is_buyer_maker": False,
            "received_at_us": time_us + 900,
            "source": "ws",
        }
    )


KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset bigint, timestamp timestamp"
)
# the consumer's clock a minute after BASE_US; times may lie an hour ahead
BOUNDS = TimeBounds(now_us=BASE_US + 60_000_000, max_ahead_us=3_600_000_000)


def kafka_batch(spark: SparkSession, values: list[bytes]) -> DataFrame:
    """A micro-batch as the Kafka source makes it: one record per value, offsets 0, 1, ..."""
    import datetime as dt

    stamp = dt.datetime(2025, 3, 4, tzinfo=dt.UTC)
    return spark.createDataFrame(
        [(b"TRXUSDT", v, "prices", 0, offset, stamp) for offset, v in enumerate(values)],
        KAFKA_SCHEMA,
    )


def transform(batch: DataFrame, last_prices: dict[StateKey, LastPrice]) -> DataFrame:
    """The rows transform_batch stores in staging.raw_prices."""
    return stored_rows(transform_batch(batch, last_prices, BOUNDS))


RESULT_SCHEMA = (
    f"symbol string, sequence_id bigint, previous_price {PRICE_TYPE.simpleString()}, "
    f"price_change {PRICE_CHANGE_TYPE.simpleString()}, "
    f"price_change_pct {PRICE_CHANGE_PCT_TYPE.simpleString()}, is_key_last boolean"
)


def result(df: DataFrame) -> DataFrame:
    return df.select(
        "symbol", "sequence_id", "previous_price", "price_change", "price_change_pct", "is_key_last"
    )


def D(text: str | None) -> Decimal | None:  # noqa: N802 - reads like a literal
    return None if text is None else Decimal(text)


def test_trades_in_one_millisecond_are_ordered_by_trade_id(spark: SparkSession) -> None:
    # three trades in the same microsecond, arriving out of order: the trade id orders them
    batch = kafka_batch(
        spark,
        [
            trade("TRXUSDT", 12, BASE_US, "0.2314"),
            trade("TRXUSDT", 10, BASE_US, "0.2312"),
            trade("TRXUSDT", 11, BASE_US, "0.2313"),
        ],
    )
    out = transform(batch, {})
    expected = spark.createDataFrame(
        [
            ("TRXUSDT", 10, None, None, None, False),
            # 0.0001 / 0.2312 * 100 = 0.043252595155...  -> 0.04325260 (half-up at 8)
            ("TRXUSDT", 11, D("0.2312"), D("0.0001"), D("0.04325260"), False),
            # 0.0001 / 0.2313 * 100 = 0.043233895373...  -> 0.04323390
            ("TRXUSDT", 12, D("0.2313"), D("0.0001"), D("0.04323390"), True),
        ],
        RESULT_SCHEMA,
    )
    assertDataFrameEqual(result(out), expected)


def test_first_event_of_a_batch_takes_the_last_price_passed_in(spark: SparkSession) -> None:
    state = {("TRXUSDT", "trade"): LastPrice(Decimal("0.2300"), BASE_US - 1_000, 9)}
    batch = kafka_batch(
        spark,
        [trade("TRXUSDT", 10, BASE_US, "0.2312"), trade("TRXUSDT", 11, BASE_US + 5, "0.2300")],
    )
    expected = spark.createDataFrame(
        [
            # 0.0012 / 0.23 * 100 = 0.52173913043... -> 0.52173913
            ("TRXUSDT", 10, D("0.2300"), D("0.0012"), D("0.52173913"), False),
            # -0.0012 / 0.2312 * 100 = -0.51903114186... -> -0.51903114
            ("TRXUSDT", 11, D("0.2312"), D("-0.0012"), D("-0.51903114"), True),
        ],
        RESULT_SCHEMA,
    )
    assertDataFrameEqual(result(transform(batch, state)), expected)


def test_first_event_ever_of_a_symbol_has_no_previous_price(spark: SparkSession) -> None:
    # state knows BTCUSDT only; ETHUSDT is new, and keys never mix
    state = {("BTCUSDT", "trade"): LastPrice(Decimal("87000.10"), BASE_US - 1, 1)}
    batch = kafka_batch(
        spark,
        [trade("ETHUSDT", 500, BASE_US, "2100.50"), trade("BTCUSDT", 2, BASE_US, "87000.00")],
    )
    expected = spark.createDataFrame(
        [
            ("ETHUSDT", 500, None, None, None, True),
            # -0.10 / 87000.10 * 100 = -0.000114942396... -> -0.00011494
            ("BTCUSDT", 2, D("87000.10"), D("-0.10"), D("-0.00011494"), True),
        ],
        RESULT_SCHEMA,
    )
    assertDataFrameEqual(result(transform(batch, state)), expected)


def test_late_event_uses_the_last_known_price_and_never_becomes_the_newest(
    spark: SparkSession,
) -> None:
    state = {("TRXUSDT", "trade"): LastPrice(Decimal("0.2400"), BASE_US, 100)}
    batch = kafka_batch(
        spark,
        [
            trade("TRXUSDT", 90, BASE_US - 5_000, "0.2200"),  # late: before the stored price
            trade("TRXUSDT", 100, BASE_US, "0.2400"),  # the stored event itself: dropped
            trade("TRXUSDT", 101, BASE_US + 1, "0.2500"),  # in order
        ],
    )
    expected = spark.createDataFrame(
        [
            # late: compared with the last known price 0.24; -0.02/0.24*100 = -8.333...
            ("TRXUSDT", 90, D("0.2400"), D("-0.0200"), D("-8.33333333"), False),
            # in order: its predecessor is the stored 0.24, not the late 0.22
            ("TRXUSDT", 101, D("0.2400"), D("0.0100"), D("4.16666667"), True),
        ],
        RESULT_SCHEMA,
    )
    assertDataFrameEqual(result(transform(batch, state)), expected)


def test_batch_of_only_late_events_flags_no_newer_state(spark: SparkSession) -> None:
    state = {("TRXUSDT", "trade"): LastPrice(Decimal("0.2400"), BASE_US, 100)}
    batch = kafka_batch(
        spark,
        [
            trade("TRXUSDT", 98, BASE_US - 20, "0.2100"),
            trade("TRXUSDT", 99, BASE_US - 10, "0.2200"),
        ],
    )
    rows = transform(batch, state).collect()
    assert [
        (r.sequence_id, r.previous_price) for r in sorted(rows, key=lambda r: r.sequence_id)
    ] == [
        (98, Decimal("0.24")),
        (99, Decimal("0.24")),
    ]
    # the flagged row is older than the state, so state.advance's compare-and-set refuses it
    flagged = [r for r in rows if r.is_key_last]
    assert [(r.price_time_us, r.sequence_id) for r in flagged] == [(BASE_US - 10, 99)]
    assert (flagged[0].price_time_us, flagged[0].sequence_id) < (BASE_US, 100)


def test_duplicates_in_a_batch_are_written_once(spark: SparkSession) -> None:
    event = trade("TRXUSDT", 10, BASE_US, "0.2312")
    batch = kafka_batch(spark, [event, event, trade("TRXUSDT", 11, BASE_US + 1, "0.2313"), event])
    expected = spark.createDataFrame(
        [
            ("TRXUSDT", 10, None, None, None, False),
            ("TRXUSDT", 11, D("0.2312"), D("0.0001"), D("0.04325260"), True),
        ],
        RESULT_SCHEMA,
    )
    assertDataFrameEqual(result(transform(batch, {})), expected)


def test_percentage_rounds_half_up_at_eight_decimals(spark: SparkSession) -> None:
    # 1 / 2048 * 100 = 0.048828125 exactly: half-up gives ...13 (half-even would give ...12)
    batch = kafka_batch(spark, [trade("X", 1, BASE_US, "2048"), trade("X", 2, BASE_US + 1, "2049")])
    pct = {r.sequence_id: r.price_change_pct for r in transform(batch, {}).collect()}
    assert pct == {1: None, 2: Decimal("0.04882813")}


def test_decimals_with_eighteen_fraction_digits_stay_exact(spark: SparkSession) -> None:
    batch = kafka_batch(
        spark,
        [
            trade(
                "X",
                1,
                BASE_US,
                "0.000000000000000001",
                quantity="12345678901234567890.123456789012345678",
            ),
            trade("X", 2, BASE_US + 1, "0.000000000000000003"),
        ],
    )
    rows = {r.sequence_id: r for r in transform(batch, {}).collect()}
    assert rows[1].quantity == Decimal("12345678901234567890.123456789012345678")
    assert rows[2].price_change == Decimal("0.000000000000000002")
    assert rows[2].price_change_pct == Decimal("200")


def test_ticker_uses_event_time_and_keys_apart_from_trades(spark: SparkSession) -> None:
    ticker = orjson.dumps(
        {
            "symbol": "TRXUSDT",
            "stream": "miniTicker",
            "event_time_us": BASE_US,
            "trade_time_us": None,
            "sequence_id": BASE_US // 1000,
            "price": "0.2390",
            "quantity": None,
            "is_buyer_maker": None,
            "received_at_us": BASE_US + 10,
            "source": "ws",
        }
    )
    state = {("TRXUSDT", "trade"): LastPrice(Decimal("0.1"), BASE_US - 1, 1)}
    rows = transform(kafka_batch(spark, [ticker]), state).collect()
    assert len(rows) == 1
    assert rows[0].stream == "miniTicker"
    assert rows[0].previous_price is None  # the trade state is another key
    assert rows[0].quantity is None
    assert rows[0].price_time_us == BASE_US


def test_records_that_are_not_events_are_kept_apart_with_their_reason(
    spark: SparkSession,
) -> None:
    good = trade("TRXUSDT", 1, BASE_US, "0.2312")
    bad = {
        b"not json": "not_an_event",
        orjson.dumps({"symbol": "TRXUSDT"}): "missing_field",
        trade("TRXUSDT", 2, BASE_US, "abc"): "bad_decimal",
        trade("TRXUSDT", 3, BASE_US, "-1"): "bad_decimal",
        # 21 integer digits: too long
        trade("TRXUSDT", 5, BASE_US, "123456789012345678901"): "bad_decimal",
        trade("TRXUSDT", 6, BASE_US, "1", quantity="1e5x"): "bad_decimal",
        trade("TRXUSDT", 7, BASE_US, "0.000"): "non_positive",
        orjson.dumps({**orjson.loads(good), "stream": "depth"}): "unknown_stream",
        orjson.dumps({**orjson.loads(good), "price": 0.2312}): "wrong_type",
        orjson.dumps({**orjson.loads(good), "symbol": "trxusdt"}): "bad_symbol",
        orjson.dumps({**orjson.loads(good), "is_buyer_maker": "no"}): "missing_field",
        orjson.dumps({**orjson.loads(good), "sequence_id": -1}): "bad_id",
        orjson.dumps({**orjson.loads(good), "source": "replay"}): "bad_source",
        # a trade time in year 5138 - 1 µs: far more than an hour after its receive time
        orjson.dumps({**orjson.loads(good), "trade_time_us": 10**17 - 1}): "time_out_of_range",
        # received "in the future" of the consumer's clock, with an event time to match
        trade("TRXUSDT", 8, BASE_US + 7_200_000_000, "0.2312"): "time_out_of_range",
        trade("TRXUSDT", 9, 10**12, "0.2312"): "bad_time",  # milliseconds, not µs
    }
    out = transform_batch(kafka_batch(spark, [good, *bad]), {}, BOUNDS)
    assert [r.sequence_id for r in stored_rows(out).collect()] == [1]
    rejected = {r.kafka_offset: r for r in rejected_rows(out).collect()}
    assert {offset: r.reject_reason for offset, r in rejected.items()} == {
        offset: reason for offset, reason in enumerate(bad.values(), start=1)
    }
    for offset, value in enumerate(bad, start=1):
        assert rejected[offset].kafka_value == value  # the record itself, byte for byte
        assert rejected[offset].kafka_topic == "prices"
        assert rejected[offset].kafka_partition == 0
        assert rejected[offset].reject_detail


def test_a_rejected_record_is_nobodys_previous_price(spark: SparkSession) -> None:
    state = {("TRXUSDT", "trade"): LastPrice(Decimal("0.2300"), BASE_US - 1_000, 9)}
    future = orjson.dumps(
        {**orjson.loads(trade("TRXUSDT", 11, BASE_US, "9.9")), "trade_time_us": 10**17 - 1}
    )
    batch = kafka_batch(
        spark,
        [
            trade("TRXUSDT", 10, BASE_US, "0.2312"),
            future,
            trade("TRXUSDT", 12, BASE_US + 5, "0.2300"),
        ],
    )
    expected = spark.createDataFrame(
        [
            ("TRXUSDT", 10, D("0.2300"), D("0.0012"), D("0.52173913"), False),
            ("TRXUSDT", 12, D("0.2312"), D("-0.0012"), D("-0.51903114"), True),
        ],
        RESULT_SCHEMA,
    )
    assertDataFrameEqual(result(transform(batch, state)), expected)


def test_row_times_are_utc_microseconds(spark: SparkSession) -> None:
    import datetime as dt

    row = transform(kafka_batch(spark, [trade("TRXUSDT", 1, BASE_US, "0.2312")]), {}).collect()[0]
    utc = dt.UTC
    assert row.event_time.replace(tzinfo=utc) == dt.datetime(
        2025, 3, 4, 0, 0, 1, 271497, tzinfo=utc
    )
    assert row.exchange_event_time.replace(tzinfo=utc) == dt.datetime(
        2025, 3, 4, 0, 0, 1, 271797, tzinfo=utc
    )


def test_prices_beyond_the_percentage_range_keep_an_exact_change_and_null_pct(
    spark: SparkSession,
) -> None:
    batch = kafka_batch(
        spark, [trade("X", 1, BASE_US, "20000000000"), trade("X", 2, BASE_US + 1, "20000000001.5")]
    )
    rows = {r.sequence_id: r for r in transform(batch, {}).collect()}
    assert rows[2].previous_price == Decimal("20000000000")
    assert rows[2].price_change == Decimal("1.5")
    assert rows[2].price_change_pct is None  # documented limit (schema.py): operands >= 10^10
