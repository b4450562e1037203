"""Spark types of the consumer: the wire event and the rows it writes.

Where it comes from: the event contract in docs/architecture.md, declared once in
producer_app/events.py; tests/unit/test_consumer_contract.py checks field by field
that EVENT_SCHEMA below agrees with it. Where it goes: transform.py parses the Kafka
value with EVENT_SCHEMA and produces rows in RAW_PRICES_COLUMNS order, the COPY
order of staging.raw_prices.

Decimal types and rounding (exact end to end, never floats):
- price, quantity, previous_price, price_change: DECIMAL(38,18), the precision the
  producer guarantees (producer_app.events.DECIMAL_PRECISION/SCALE: at most 20 integer
  and 18 fractional digits). The wire keeps decimals as strings; Spark casts the
  string straight to the decimal, no float on the way.
- price_change = price - previous_price, exact (operands narrowed to DECIMAL(37,18) so
  Spark's result type keeps scale 18; prices are far below 10^19).
- price_change_pct = price_change * 100 / previous_price, rounded HALF_UP to 8 decimals
  (DECIMAL(38,8)). Spark divides DECIMAL(28,18) by DECIMAL(28,18) at scale 10 (HALF_UP)
  and multiplies by 100, which is the same as rounding the percentage to 8 decimals
  once. A plain-Python Decimal quantize(Decimal("1e-8"), ROUND_HALF_UP) of the exact
  quotient reproduces it (the tests do exactly that). Limit: when price_change or
  previous_price is 10^10 or more (no Binance price is), the pct is null.
"""

from __future__ import annotations

from pyspark.sql.types import (
    BooleanType,
    DataType,
    DecimalType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

PRICE_PRECISION = 38
PRICE_SCALE = 18
PCT_SCALE = 8

PRICE_TYPE = DecimalType(PRICE_PRECISION, PRICE_SCALE)
QUANTITY_TYPE = DecimalType(PRICE_PRECISION, PRICE_SCALE)
PRICE_CHANGE_TYPE = DecimalType(PRICE_PRECISION, PRICE_SCALE)
PRICE_CHANGE_PCT_TYPE = DecimalType(38, PCT_SCALE)

# Narrower operand types for the arithmetic (see the module docstring).
CHANGE_OPERAND_TYPE = DecimalType(37, PRICE_SCALE)
DIVISION_OPERAND_TYPE = DecimalType(28, PRICE_SCALE)

# The wire event, fields in contract order. Prices and quantities stay strings here:
# the JSON holds decimal strings, and casting string -> decimal is exact.
EVENT_SCHEMA = StructType(
    [
        StructField("symbol", StringType(), nullable=False),
        StructField("stream", StringType(), nullable=False),
        StructField("event_time_us", LongType(), nullable=False),
        StructField("trade_time_us", LongType(), nullable=True),
        StructField("sequence_id", LongType(), nullable=False),
        StructField("price", StringType(), nullable=False),
        StructField("quantity", StringType(), nullable=True),
        StructField("is_buyer_maker", BooleanType(), nullable=True),
        StructField("received_at_us", LongType(), nullable=False),
        StructField("source", StringType(), nullable=False),
    ]
)

# What each wire field is typed as once parsed (the decimal strings become decimals).
PARSED_TYPES: dict[str, DataType] = {
    field.name: field.dataType for field in EVENT_SCHEMA.fields
} | {"price": PRICE_TYPE, "quantity": QUANTITY_TYPE}

# staging.raw_prices columns in COPY order, without ingested_at (the database's now()).
RAW_PRICES_SCHEMA = StructType(
    [
        StructField("symbol", StringType(), False),
        StructField("stream", StringType(), False),
        StructField("sequence_id", LongType(), False),
        StructField("event_time", TimestampType(), False),
        StructField("exchange_event_time", TimestampType(), False),
        StructField("price", PRICE_TYPE, False),
        StructField("quantity", QUANTITY_TYPE, True),
        StructField("is_buyer_maker", BooleanType(), True),
        StructField("previous_price", PRICE_TYPE, True),
        StructField("price_change", PRICE_CHANGE_TYPE, True),
        StructField("price_change_pct", PRICE_CHANGE_PCT_TYPE, True),
        StructField("received_at", TimestampType(), False),
        StructField("source", StringType(), False),
    ]
)
RAW_PRICES_COLUMNS: tuple[str, ...] = tuple(RAW_PRICES_SCHEMA.fieldNames())

# Postgres type names of RAW_PRICES_COLUMNS, for binary COPY set_types().
RAW_PRICES_PG_TYPES: tuple[str, ...] = (
    "text",
    "text",
    "int8",
    "timestamptz",
    "timestamptz",
    "numeric",
    "numeric",
    "bool",
    "numeric",
    "numeric",
    "numeric",
    "timestamptz",
    "text",
)

# The gap event of topic binance.gaps (docs/architecture.md).
GAP_SCHEMA = StructType(
    [
        StructField("symbol", StringType()),
        StructField("stream", StringType()),
        StructField("first_missing_id", LongType()),
        StructField("last_missing_id", LongType()),
        StructField("window_start_us", LongType()),
        StructField("window_end_us", LongType()),
        StructField("filled_count", LongType()),
        StructField("unfilled_count", LongType()),
        StructField("status", StringType()),
        StructField("reason", StringType()),
        StructField("detected_at_us", LongType()),
    ]
)
