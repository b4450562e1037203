"""Contract test: the consumer's Spark schema agrees with producer_app.events field by field.

producer_app/events.py is the single declaration of the wire event (docs/architecture.md);
consumer_app/schema.py must read every field with the same name, order, JSON type and
nullability, and hold every decimal the producer may send without rounding.
"""

from __future__ import annotations

import pytest
from pyspark.sql.types import BooleanType, DataType, DecimalType, LongType, StringType

from consumer_app.schema import EVENT_SCHEMA, GAP_SCHEMA, PARSED_TYPES, RAW_PRICES_COLUMNS
from producer_app import events

pytestmark = pytest.mark.unit

SPARK_TYPE_OF_JSON: dict[str, type[DataType]] = {
    "string": StringType,
    "integer": LongType,
    "boolean": BooleanType,
}


def test_event_fields_match_in_order_name_type_and_nullability() -> None:
    producer = [(f.name, f.json_type, f.nullable) for f in events.EVENT_FIELDS]
    consumer = [(f.name, f.dataType, f.nullable) for f in EVENT_SCHEMA.fields]
    assert [p[0] for p in producer] == [c[0] for c in consumer]
    for (name, json_type, nullable), (_, spark_type, spark_nullable) in zip(
        producer, consumer, strict=True
    ):
        assert isinstance(spark_type, SPARK_TYPE_OF_JSON[json_type]), name
        assert spark_nullable == nullable, name


def test_decimal_fields_are_decimals_wide_enough_for_every_producer_value() -> None:
    for name in events.DECIMAL_FIELDS:
        parsed = PARSED_TYPES[name]
        assert isinstance(parsed, DecimalType), name
        assert parsed.scale >= events.DECIMAL_SCALE, name
        assert parsed.precision - parsed.scale >= events.DECIMAL_PRECISION - events.DECIMAL_SCALE
    non_decimal = set(PARSED_TYPES) - set(events.DECIMAL_FIELDS)
    assert not any(isinstance(PARSED_TYPES[n], DecimalType) for n in non_decimal)


def test_a_producer_encoded_event_parses_with_every_field_set() -> None:
    import json

    wire = events.encode_event(
        "BTCUSDT", "trade", 1, 2, 3, "87000.12345678", "0.001", True, 4, "ws"
    )
    assert list(json.loads(wire)) == EVENT_SCHEMA.fieldNames()


def test_gap_fields_match_the_gap_record() -> None:
    assert [f.name for f in events.GAP_FIELDS] == GAP_SCHEMA.fieldNames()
    for spec, field in zip(events.GAP_FIELDS, GAP_SCHEMA.fields, strict=True):
        assert isinstance(field.dataType, SPARK_TYPE_OF_JSON[spec.json_type]), spec.name


def test_rows_follow_the_raw_prices_copy_order_of_the_contract() -> None:
    assert RAW_PRICES_COLUMNS == (
        "symbol",
        "stream",
        "sequence_id",
        "event_time",
        "exchange_event_time",
        "price",
        "quantity",
        "is_buyer_maker",
        "previous_price",
        "price_change",
        "price_change_pct",
        "received_at",
        "source",
    )


def test_the_consumer_accepts_the_decimals_and_times_the_producer_writes() -> None:
    from consumer_app import validation
    from producer_app import parser

    # the consumer may not import producer_app: its copies of the producer's rules are
    # checked here (validation.py refuses what the producer would never write)
    assert validation.DECIMAL_REGEX == f"^{events.DECIMAL_PATTERN}$"
    # the parser's window: ms from _MIN_TIME, µs up to _MAX_TIME
    assert validation.MIN_TIME_US == parser._MIN_TIME * 1000
    assert validation.MAX_TIME_US == parser._MAX_TIME
    assert validation.STREAMS == (events.STREAM_TRADE, events.STREAM_MINI_TICKER)
    assert validation.SOURCES == (events.SOURCE_WS, events.SOURCE_REST)
