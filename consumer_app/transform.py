"""The pure core of the consumer: Kafka records -> staging.raw_prices rows.

Where the data comes from: a micro-batch of the Kafka source (binary `value` holding
one JSON PriceEvent, docs/architecture.md) and the last price of each (symbol, stream)
known before the batch (state.py reads it from Redis, or from Postgres after a loss),
passed in as a plain mapping. Where it goes: sink.py COPYs the rows into
staging.raw_prices and hands the rows flagged `is_key_last` to state.py.
Nothing here opens a connection.

Rules (docs/consumer.md has the long form):
- Events of a (symbol, stream) are ordered by (price time, sequence_id, received_at_us,
  source); price time is trade_time_us for trades, event_time_us for tickers.
- previous_price of an event is the price of the preceding event in that order within
  the batch, or, for the first event of the key in the batch, the last known price.
- Late event: one at or before the last known (price time, sequence_id) of its key.
  Exactly equal means "already stored" (a redelivery) and the row is dropped. Older
  means late/out of order: its previous_price is the last known price (the freshest
  price the consumer knew when the event arrived), it does not become the previous
  price of any in-order event, and it never moves the stored last price backwards.
- Duplicates inside a batch (same symbol, stream, sequence_id, price time) keep the
  first in the order above.
- Records that are not a valid event (bad JSON, missing fields, wrong types, non-positive
  or unparsable price, unknown stream, times out of range) are kept apart with a reason
  (REJECT_COLUMNS; rules in validation.py) for the dead-letter table: the producer already
  dead-letters malformed frames, so these come from a foreign writer or a broken clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F  # noqa: N812

from consumer_app.schema import (
    CHANGE_OPERAND_TYPE,
    DIVISION_OPERAND_TYPE,
    EVENT_SCHEMA,
    GAP_SCHEMA,
    PCT_SCALE,
    PRICE_CHANGE_PCT_TYPE,
    PRICE_CHANGE_TYPE,
    PRICE_TYPE,
    QUANTITY_TYPE,
    RAW_PRICES_COLUMNS,
)
from consumer_app.validation import (
    TimeBounds,
    bound_columns,
    first_failure,
    gap_rules,
    price_event_rules,
)

KEY_SEPARATOR = "|"
# Quotient scale before the *100: rounding change/previous at PCT_SCALE + 2 decimals is
# rounding the percentage at PCT_SCALE decimals, once.
_QUOTIENT_SCALE = PCT_SCALE + 2


@dataclass(frozen=True, slots=True)
class LastPrice:
    """The newest committed price of one (symbol, stream): the state between batches."""

    price: Decimal
    price_time_us: int
    sequence_id: int


StateKey = tuple[str, str]  # (symbol, stream)


def state_key(symbol: str, stream: str) -> str:
    """The flat string a (symbol, stream) is stored under, in Redis and in the map literal."""
    return f"{symbol}{KEY_SEPARATOR}{stream}"


# Column names of parse_events' output, in order.
EVENT_COLUMNS = (
    "symbol",
    "stream",
    "event_time_us",
    "sequence_id",
    "price",
    "quantity",
    "is_buyer_maker",
    "received_at_us",
    "source",
    "price_time_us",
)
# The Kafka source's columns the transform reads (a micro-batch DataFrame has them all).
KAFKA_COLUMNS = ("key", "value", "topic", "partition", "offset", "timestamp")
# Appended to every output: null for a stored row; for a rejected record its reason and
# where it came from (staging.rejected_records, CONTRACT 4 in docs/architecture.md).
REJECT_COLUMNS = (
    "reject_reason",
    "reject_detail",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_key",
    "kafka_value",
    "kafka_timestamp",
)
_STATE_MAP_TYPE = "map<string, struct<price: string, pt: bigint, seq: bigint>>"


def _after(pt: Column, seq: Column, ref_pt: Column, ref_seq: Column) -> Column:
    """(pt, seq) > (ref_pt, ref_seq) lexicographically."""
    return (pt > ref_pt) | ((pt == ref_pt) & (seq > ref_seq))


@dataclass(frozen=True, slots=True)
class _Columns:
    """The transform's Column expressions: they never change, so they are built once.

    Building them costs ~200 Py4J calls; a micro-batch only adds the state literal
    (_state_column) and runs the DataFrame operations (docs/consumer.md, "Spark settings
    that matter for speed").
    """

    parsed: Column
    fields: list[Column]
    events: list[Column]
    windows: list[Column]
    keep: Column
    results: list[Column]
    raw_rows: list[Column]
    state_key: Column


def _build_columns() -> _Columns:
    e = F.struct(*(F.col(field.name) for field in EVENT_SCHEMA.fields))
    fields = [
        e["symbol"].alias("symbol"),
        e["stream"].alias("stream"),
        e["event_time_us"].alias("event_time_us"),
        e["sequence_id"].alias("sequence_id"),
        # string -> decimal directly: exact, no float in between
        # try_cast: never a failed batch under Spark's ANSI mode (the rules below have already
        # refused any string that is not a plain decimal of DECIMAL(38,18))
        e["price"].try_cast(PRICE_TYPE).alias("price"),
        e["quantity"].try_cast(QUANTITY_TYPE).alias("quantity"),
        e["is_buyer_maker"].alias("is_buyer_maker"),
        e["received_at_us"].alias("received_at_us"),
        F.coalesce(e["source"], F.lit("ws")).alias("source"),
        F.when(e["stream"] == "trade", e["trade_time_us"])
        .otherwise(e["event_time_us"])
        .alias("price_time_us"),
    ]
    # the first rule the record breaks (validation.py), null for an event that can be stored;
    # `e` is the struct of the wire fields as parsed, before any cast
    fields.append(first_failure(price_event_rules(e, F.col("value").cast("string"))).alias("_r"))
    rejected = F.col("_r").isNotNull()
    fields += [F.col(c) for c in KAFKA_COLUMNS]
    events = [
        *(F.col(c) for c in EVENT_COLUMNS),
        F.col("_r.reason").alias("reject_reason"),
        F.col("_r.detail").alias("reject_detail"),
        # Kafka coordinates and bytes travel only with rejected records (the dead letter)
        *(
            F.when(rejected, F.col(source)).alias(f"kafka_{source}")
            for source in ("topic", "partition", "offset", "key", "value", "timestamp")
        ),
    ]

    # rejected records sit in windows of their own: they are never an event's predecessor
    is_rejected = F.col("reject_reason").isNotNull()
    key = (F.col("symbol"), F.col("stream"), is_rejected)
    ordered = Window.partitionBy(*key).orderBy(
        "price_time_us", "sequence_id", "received_at_us", "source"
    )
    whole_key = Window.partitionBy(*key)
    pt, seq = F.col("price_time_us"), F.col("sequence_id")
    windows = [
        F.lag(pt).over(ordered).alias("_lag_pt"),
        F.lag(seq).over(ordered).alias("_lag_seq"),
        F.lag("price").over(ordered).alias("_lag_price"),
        F.max(F.struct(pt.alias("pt"), seq.alias("seq"))).over(whole_key).alias("_max_key"),
    ]
    state_pt, state_seq = F.col("_state.pt"), F.col("_state.seq")
    has_state = F.col("_state").isNotNull()
    is_duplicate = (
        F.col("_lag_pt").isNotNull() & (F.col("_lag_pt") == pt) & (F.col("_lag_seq") == seq)
    )
    is_stored = has_state & (pt == state_pt) & (seq == state_seq)
    # the preceding row continues the in-order chain only if it is newer than the state
    lag_in_chain = F.col("_lag_pt").isNotNull() & (
        ~has_state | _after(F.col("_lag_pt"), F.col("_lag_seq"), state_pt, state_seq)
    )
    # the state's price travels as a plain decimal string (no exponent): the cast is exact
    previous_price = (
        F.when(lag_in_chain, F.col("_lag_price"))
        .otherwise(F.col("_state.price").cast(PRICE_TYPE))
        .cast(PRICE_TYPE)
    )
    # try_cast everywhere a value could overflow a narrower type: null, never a failed batch
    change = (
        F.col("price").try_cast(CHANGE_OPERAND_TYPE) - previous_price.try_cast(CHANGE_OPERAND_TYPE)
    ).try_cast(PRICE_CHANGE_TYPE)
    # DECIMAL(28,18) / DECIMAL(28,18) has result scale exactly 10 in Spark (HALF_UP), so
    # the round() is a no-op kept for clarity and the x100 is exact.
    quotient = F.round(
        change.try_cast(DIVISION_OPERAND_TYPE) / previous_price.try_cast(DIVISION_OPERAND_TYPE),
        _QUOTIENT_SCALE,
    ).try_cast(f"decimal({38 - PCT_SCALE},{_QUOTIENT_SCALE})")
    pct = (quotient * F.lit(Decimal(100))).try_cast(PRICE_CHANGE_PCT_TYPE)
    results = [
        *(F.col(c) for c in EVENT_COLUMNS),
        previous_price.alias("previous_price"),
        change.alias("price_change"),
        F.when(previous_price != 0, pct).alias("price_change_pct"),
        (~is_rejected & (F.col("_max_key.pt") == pt) & (F.col("_max_key.seq") == seq)).alias(
            "is_key_last"
        ),
        *(F.col(c) for c in REJECT_COLUMNS),
    ]
    raw_rows = [
        F.col("symbol"),
        F.col("stream"),
        F.col("sequence_id"),
        F.timestamp_micros("price_time_us").alias("event_time"),
        F.timestamp_micros("event_time_us").alias("exchange_event_time"),
        F.col("price"),
        F.col("quantity"),
        F.col("is_buyer_maker"),
        F.col("previous_price"),
        F.col("price_change"),
        F.col("price_change_pct"),
        F.timestamp_micros("received_at_us").alias("received_at"),
        F.col("source"),
        F.col("price_time_us"),
        F.col("received_at_us"),
        F.col("is_key_last"),
        *(F.col(c) for c in REJECT_COLUMNS),
    ]
    return _Columns(
        # inline(array(struct)): the JSON is parsed once, in a Generate. Selected as a plain
        # struct, the validity filter below was pushed under the projection with from_json
        # inlined into it, so every record was parsed twice (filter, then projection):
        # parse of a 200k batch 0.86-0.99 s -> 0.70-0.84 s.
        parsed=F.inline(F.array(F.from_json(F.col("value").cast("string"), EVENT_SCHEMA))),
        fields=fields,
        events=events,
        windows=windows,
        keep=is_rejected | (~is_duplicate & ~is_stored),
        results=results,
        raw_rows=raw_rows,
        state_key=F.concat_ws(KEY_SEPARATOR, F.col("symbol"), F.col("stream")),
    )


_COLUMNS: dict[int, _Columns] = {}


def _columns(df: DataFrame) -> _Columns:
    """The cached Column expressions, rebuilt if the JVM gateway changed (a new SparkContext)."""
    gateway = id(df.sparkSession.sparkContext._gateway)  # noqa: SLF001
    built = _COLUMNS.get(gateway)
    if built is None:
        _COLUMNS.clear()
        built = _COLUMNS[gateway] = _build_columns()
    return built


def _state_column(cols: _Columns, last_prices: Mapping[StateKey, LastPrice]) -> Column:
    """The last known price of the row's key, from one literal map: no join, no shuffle.

    The map travels as one JSON string literal (Spark folds the from_json once per batch),
    so a batch costs a few Py4J calls whatever the number of keys.
    """
    state = {
        state_key(symbol, stream): {
            "price": format(last.price, "f"),
            "pt": last.price_time_us,
            "seq": last.sequence_id,
        }
        for (symbol, stream), last in sorted(last_prices.items())
    }
    return F.from_json(F.lit(json.dumps(state)), _STATE_MAP_TYPE)[cols.state_key]


def parse_events(kafka_df: DataFrame, bounds: TimeBounds) -> DataFrame:
    """Kafka records -> typed events with `price_time_us`, and REJECT_COLUMNS.

    Every record comes out: an event that can be stored has a null `reject_reason`; any other
    record keeps its reason, detail and Kafka coordinates (validation.py has the rules).
    """
    cols = _columns(kafka_df)
    return (
        kafka_df.select(cols.parsed, *KAFKA_COLUMNS, *bound_columns(bounds))
        .select(*cols.fields)
        .select(*cols.events)
    )


def with_price_changes(events: DataFrame, last_prices: Mapping[StateKey, LastPrice]) -> DataFrame:
    """Add previous_price, price_change, price_change_pct and is_key_last to parsed events.

    `last_prices` is the state before this batch. `is_key_last` flags, per key, the row
    with the greatest (price time, sequence_id): what state.py stores after the commit.
    Rejected records pass through untouched (their price columns mean nothing), never
    is_key_last, never anyone's previous price.
    """
    cols = _columns(events)
    return (
        events.select(
            *EVENT_COLUMNS,
            *REJECT_COLUMNS,
            _state_column(cols, last_prices).alias("_state"),
            *cols.windows,
        )
        .where(cols.keep)
        .select(*cols.results)
    )


def to_raw_price_rows(df: DataFrame) -> DataFrame:
    """Events with price changes -> staging.raw_prices columns (COPY order) + helpers.

    Helpers after the table columns: price_time_us, received_at_us and is_key_last (for
    state.py and the metrics), then REJECT_COLUMNS.
    """
    return df.select(*_columns(df).raw_rows)


def transform_batch(
    kafka_df: DataFrame, last_prices: Mapping[StateKey, LastPrice], bounds: TimeBounds
) -> DataFrame:
    """One micro-batch of Kafka records -> rows for staging.raw_prices and rejected records.

    One DataFrame, so the batch runs one Spark action: rows with a null `reject_reason` go to
    staging.raw_prices, the others to staging.rejected_records (stored_rows / rejected_rows
    split it the same way in Spark; the job splits the collected Arrow table).
    Few DataFrame operations on purpose: each one is analysed again on the driver, and
    every micro-batch builds this plan anew.
    """
    return to_raw_price_rows(with_price_changes(parse_events(kafka_df, bounds), last_prices))


def stored_rows(rows: DataFrame) -> DataFrame:
    """The rows of transform_batch's output that go to staging.raw_prices."""
    return rows.where(F.col("reject_reason").isNull())


def rejected_rows(rows: DataFrame) -> DataFrame:
    """The records of transform_batch's output that go to staging.rejected_records."""
    return rows.where(F.col("reject_reason").isNotNull()).select(*REJECT_COLUMNS)


def parse_gaps(kafka_df: DataFrame, bounds: TimeBounds) -> DataFrame:
    """Gap reports (topic binance.gaps) -> GAP_SCHEMA fields + REJECT_COLUMNS, every record.

    Unlike price events, every row keeps its Kafka coordinates (gap reports are few): the
    sink needs them to dead-letter a row PostgreSQL itself refuses.
    """
    report = F.from_json(F.col("value").cast("string"), GAP_SCHEMA)
    return (
        kafka_df.select(report.alias("g"), *KAFKA_COLUMNS, *bound_columns(bounds))
        .select(
            "g",
            first_failure(gap_rules(F.col("g"), F.col("value").cast("string"))).alias("_r"),
            *KAFKA_COLUMNS,
        )
        .select(
            "g.*",
            F.col("_r.reason").alias("reject_reason"),
            F.col("_r.detail").alias("reject_detail"),
            *(F.col(c).alias(f"kafka_{c}") for c in KAFKA_COLUMNS),
        )
    )


__all__ = [
    "RAW_PRICES_COLUMNS",
    "REJECT_COLUMNS",
    "LastPrice",
    "StateKey",
    "TimeBounds",
    "parse_events",
    "parse_gaps",
    "rejected_rows",
    "state_key",
    "stored_rows",
    "to_raw_price_rows",
    "transform_batch",
    "with_price_changes",
]
