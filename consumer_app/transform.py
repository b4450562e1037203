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
- Records that are not a valid event (bad JSON, missing fields, non-positive or
  unparsable price, unknown stream) are dropped; the producer already dead-letters
  malformed frames, so these can only come from a foreign writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F  # noqa: N812

from consumer_app.schema import (
    CHANGE_OPERAND_TYPE,
    DIVISION_OPERAND_TYPE,
    EVENT_SCHEMA,
    PCT_SCALE,
    PRICE_CHANGE_PCT_TYPE,
    PRICE_CHANGE_TYPE,
    PRICE_TYPE,
    QUANTITY_TYPE,
    RAW_PRICES_COLUMNS,
)

KEY_SEPARATOR = "|"
STREAMS = ("trade", "miniTicker")
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


def parse_events(kafka_df: DataFrame) -> DataFrame:
    """Kafka records (`value` binary) -> typed events with `price_time_us`; invalid ones dropped."""
    parsed = kafka_df.select(
        F.from_json(F.col("value").cast("string"), EVENT_SCHEMA).alias("e")
    ).select(
        F.col("e.symbol").alias("symbol"),
        F.col("e.stream").alias("stream"),
        F.col("e.event_time_us").alias("event_time_us"),
        F.col("e.trade_time_us").alias("trade_time_us"),
        F.col("e.sequence_id").alias("sequence_id"),
        # string -> decimal directly: exact, no float in between
        # try_cast: a malformed or too long decimal string becomes null (row dropped below)
        # instead of failing the whole batch under Spark's ANSI mode
        F.col("e.price").try_cast(PRICE_TYPE).alias("price"),
        F.col("e.quantity").alias("_quantity_text"),
        F.col("e.quantity").try_cast(QUANTITY_TYPE).alias("quantity"),
        F.col("e.is_buyer_maker").alias("is_buyer_maker"),
        F.col("e.received_at_us").alias("received_at_us"),
        F.coalesce(F.col("e.source"), F.lit("ws")).alias("source"),
    )
    with_time = parsed.withColumn(
        "price_time_us",
        F.when(F.col("stream") == "trade", F.col("trade_time_us")).otherwise(
            F.col("event_time_us")
        ),
    )
    return with_time.where(
        F.col("symbol").isNotNull()
        & F.col("stream").isin(*STREAMS)
        & F.col("sequence_id").isNotNull()
        & F.col("event_time_us").isNotNull()
        & F.col("price_time_us").isNotNull()
        & F.col("received_at_us").isNotNull()
        & F.col("price").isNotNull()
        & (F.col("price") > 0)
        & (F.col("_quantity_text").isNull() | F.col("quantity").isNotNull())
    ).drop("_quantity_text")


def _state_column(last_prices: Mapping[StateKey, LastPrice]) -> Column:
    """A literal map (symbol|stream -> struct) looked up per row: no join, no shuffle."""
    state_struct = f"struct<price: {PRICE_TYPE.simpleString()}, pt: bigint, seq: bigint>"
    if not last_prices:
        return F.lit(None).cast(state_struct)
    entries: list[Column] = []
    for (symbol, stream), last in sorted(last_prices.items()):
        entries.append(F.lit(state_key(symbol, stream)))
        entries.append(
            F.struct(
                # a plain decimal string casts exactly (no exponent, no float)
                F.lit(format(last.price, "f")).cast(PRICE_TYPE).alias("price"),
                F.lit(last.price_time_us).cast("bigint").alias("pt"),
                F.lit(last.sequence_id).cast("bigint").alias("seq"),
            )
        )
    lookup = F.create_map(*entries)
    return lookup[F.concat_ws(KEY_SEPARATOR, F.col("symbol"), F.col("stream"))]


def _after(pt: Column, seq: Column, ref_pt: Column, ref_seq: Column) -> Column:
    """(pt, seq) > (ref_pt, ref_seq) lexicographically."""
    return (pt > ref_pt) | ((pt == ref_pt) & (seq > ref_seq))


def with_price_changes(events: DataFrame, last_prices: Mapping[StateKey, LastPrice]) -> DataFrame:
    """Add previous_price, price_change, price_change_pct and is_key_last to parsed events.

    `last_prices` is the state before this batch. `is_key_last` flags, per key, the row
    with the greatest (price time, sequence_id): what state.py stores after the commit.
    """
    key = ("symbol", "stream")
    ordered = Window.partitionBy(*key).orderBy(
        "price_time_us", "sequence_id", "received_at_us", "source"
    )
    whole_key = Window.partitionBy(*key)
    pt, seq = F.col("price_time_us"), F.col("sequence_id")

    df = (
        events.withColumn("_state", _state_column(last_prices))
        .withColumn("_lag_pt", F.lag(pt).over(ordered))
        .withColumn("_lag_seq", F.lag(seq).over(ordered))
        .withColumn("_lag_price", F.lag("price").over(ordered))
        .withColumn("_max_key", F.max(F.struct(pt.alias("pt"), seq.alias("seq"))).over(whole_key))
    )
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
    previous_price = F.when(lag_in_chain, F.col("_lag_price")).otherwise(F.col("_state.price"))

    df = df.where(~is_duplicate & ~is_stored).withColumn(
        "previous_price", previous_price.cast(PRICE_TYPE)
    )
    # try_cast everywhere a value could overflow a narrower type: null, never a failed batch
    change = (
        F.col("price").try_cast(CHANGE_OPERAND_TYPE)
        - F.col("previous_price").try_cast(CHANGE_OPERAND_TYPE)
    ).try_cast(PRICE_CHANGE_TYPE)
    # DECIMAL(28,18) / DECIMAL(28,18) has result scale exactly 10 in Spark (HALF_UP), so
    # the round() is a no-op kept for clarity and the x100 is exact.
    quotient = F.round(
        change.try_cast(DIVISION_OPERAND_TYPE)
        / F.col("previous_price").try_cast(DIVISION_OPERAND_TYPE),
        _QUOTIENT_SCALE,
    ).try_cast(f"decimal({38 - PCT_SCALE},{_QUOTIENT_SCALE})")
    pct = (quotient * F.lit(Decimal(100))).try_cast(PRICE_CHANGE_PCT_TYPE)
    return (
        df.withColumn("price_change", change)
        .withColumn("price_change_pct", F.when(F.col("previous_price") != 0, pct))
        .withColumn(
            "is_key_last",
            (F.col("_max_key.pt") == pt) & (F.col("_max_key.seq") == seq),
        )
        .drop("_state", "_lag_pt", "_lag_seq", "_lag_price", "_max_key")
    )


def to_raw_price_rows(df: DataFrame) -> DataFrame:
    """Events with price changes -> staging.raw_prices columns (COPY order) + helpers.

    Helpers after the table columns: price_time_us and is_key_last (for state.py).
    """
    return df.select(
        "symbol",
        "stream",
        "sequence_id",
        F.timestamp_micros("price_time_us").alias("event_time"),
        F.timestamp_micros("event_time_us").alias("exchange_event_time"),
        "price",
        "quantity",
        "is_buyer_maker",
        "previous_price",
        "price_change",
        "price_change_pct",
        F.timestamp_micros("received_at_us").alias("received_at"),
        "source",
        "price_time_us",
        "received_at_us",
        "is_key_last",
    )


def transform_batch(kafka_df: DataFrame, last_prices: Mapping[StateKey, LastPrice]) -> DataFrame:
    """One micro-batch of Kafka records -> rows for staging.raw_prices (see module doc)."""
    return to_raw_price_rows(with_price_changes(parse_events(kafka_df), last_prices))


__all__ = [
    "RAW_PRICES_COLUMNS",
    "LastPrice",
    "StateKey",
    "parse_events",
    "state_key",
    "to_raw_price_rows",
    "transform_batch",
    "with_price_changes",
]
