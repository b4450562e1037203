"""Which Kafka records the consumer cannot store, and why: reject reasons as Spark Columns.

Where the data comes from: the fields transform.py parses out of a Kafka record (prices
topic) or job.py out of a gap report (gaps topic), plus the raw record text. Where it goes:
a `reject` struct column (code, detail), null for a record that can be stored; the sink
writes rejected records to staging.rejected_records (dead_letters.py) in the batch's own
transaction, so nothing is dropped in silence and nothing stops the query.

The rules follow the event contract (docs/architecture.md) and the producer's parser, so a
record our producer writes always passes; a record from another writer is checked field by
field. The first failing rule gives the reason (REASONS lists the codes).

Times: a price time (or exchange event time) is out of range when it is more than
`max_ahead_us` after the record's own received_at_us, or (when `max_delay_us` is set) more
than that before it; received_at_us itself may not be more than `max_ahead_us` ahead of the
consumer's clock. Judging the event by its own receive time, not by the consumer's clock,
keeps replays of 2020 and gap fills from REST hours later working (their events are old but
were received after they happened), while an event "from the future" — the poison that
would become a symbol's last price and create a partition in year 5138 — is stopped.

Pure: Column expressions only, no connection, no clock (the batch's `now_us` is passed in,
as a literal column: bound_columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F  # noqa: N812

from consumer_app.schema import EVENT_SCHEMA, GAP_SCHEMA

# Reason codes (label values of consumer_rejected_records_total); the detail says more.
REASONS: dict[str, str] = {
    "not_an_event": "not JSON, not a JSON object, or none of the record's fields",
    "missing_field": "a required field is absent, null, or not of its JSON type",
    "wrong_type": "symbol, price or quantity sent as a JSON number (or other non-string)",
    "unknown_stream": "stream is neither trade nor miniTicker",
    "bad_symbol": "symbol empty, longer than 32, not upper case, or with spaces/controls",
    "bad_decimal": "not a plain decimal of at most 20 integer and 18 fraction digits",
    "non_positive": "price or quantity is zero",
    "bad_id": "a sequence / trade id below zero (or a gap's last id before its first)",
    "bad_time": "a time outside 1973-03-03 .. 5138-11-16 in epoch microseconds",
    "time_out_of_range": "a time too far from the record's receive time or the consumer's clock",
    "bad_source": "source is neither ws nor rest",
    "bad_value": "a gap report value out of its domain (status, negative count, NUL in text)",
    "rejected_by_database": "PostgreSQL refused the row (the message is in the detail)",
}

# Epoch microseconds the producer accepts (producer_app/parser.py: 10**11 ms .. 10**17 µs).
MIN_TIME_US = 100_000_000_000_000  # 1973-03-03
MAX_TIME_US = 100_000_000_000_000_000  # 5138-11-16 (exclusive)
# producer_app.events.DECIMAL_PATTERN, anchored (Java regex)
DECIMAL_REGEX = r"^[0-9]{1,20}(?:\.[0-9]{1,18})?$"
# Python's str.isprintable() and the producer's "no space" rule, plus U+FFFD (bytes that were
# not UTF-8): controls, format characters, unassigned code points and separators are refused.
_SYMBOL_FORBIDDEN = r"[\p{C}\p{Z}\x{FFFD}]"
MAX_SYMBOL_LENGTH = 32
STREAMS = ("trade", "miniTicker")
SOURCES = ("ws", "rest")
GAP_STATUSES = ("filled", "partially_filled", "unfilled")


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """How far a record's times may lie from its receive time and from the consumer's clock."""

    now_us: int  # the consumer's clock when the batch started
    max_ahead_us: int  # CONSUMER_MAX_EVENT_AHEAD_S
    max_delay_us: int = 0  # CONSUMER_MAX_EVENT_DELAY_S; 0 = no bound (replays, REST fills)


Rule = tuple[Column, str, Column]  # (fails, reason code, detail)


def first_failure(rules: Sequence[Rule]) -> Column:
    """struct(reason, detail) of the first rule whose condition is true, else null.

    A CASE WHEN: later rules run only for records that passed the earlier ones, so a rule
    may assume the fields the earlier rules checked are present and in range.
    """
    chain: Column | None = None
    for fails, code, detail in rules:
        value = F.struct(F.lit(code).alias("reason"), detail.alias("detail"))
        chain = F.when(fails, value) if chain is None else chain.when(fails, value)
    assert chain is not None  # noqa: S101 - rules is never empty
    return chain


def _quoted(text: Column, limit: int = 80) -> Column:
    """A value for a detail message, cut to `limit` characters."""
    return F.concat(F.lit("'"), F.substring(F.coalesce(text, F.lit("")), 1, limit), F.lit("'"))


def missing(name: str, column: Column, json_type: str) -> Rule:
    return (column.isNull(), "missing_field", F.lit(f"{name} is missing, null or not {json_type}"))


def is_json_string(raw: Column, name: str, text: Column) -> Column:
    """Whether field `name` of the raw JSON object holds a JSON string (not a number etc.).

    Spark's parser turns a number into its text for a string field (123.50 -> "123.5": through
    a double, so not exact). Our producer writes `"price":"…"` without spaces: one substring
    search settles it; other writers' spacing falls back to a regex.
    """
    exact = F.instr(raw, F.concat(F.lit(f'"{name}":"'), text, F.lit('"'))) > 0
    return exact | raw.rlike(rf'"{name}"\s*:\s*"')


def symbol_rules(symbol: Column) -> list[Rule]:
    return [
        (
            (F.length(symbol) < 1)
            | (F.length(symbol) > MAX_SYMBOL_LENGTH)
            | symbol.rlike(_SYMBOL_FORBIDDEN)
            | (F.upper(symbol) != symbol),
            "bad_symbol",
            F.concat(F.lit("symbol "), _quoted(symbol, 40), F.lit(" is not a Binance symbol")),
        )
    ]


def time_rules(named: Sequence[tuple[str, Column]]) -> list[Rule]:
    """bad_time for each (name, µs column) outside [MIN_TIME_US, MAX_TIME_US)."""
    return [
        (
            (column < MIN_TIME_US) | (column >= MAX_TIME_US),
            "bad_time",
            F.concat(
                F.lit(f"{name} = "), column.cast("string"), F.lit(" is not an epoch time in µs")
            ),
        )
        for name, column in named
    ]


def _later_than(column: Column, reference: Column, bound_us: Column) -> Column:
    """column - reference > bound_us; overflow-safe (null counts as out of range)."""
    return F.coalesce(F.try_subtract(column, reference) > bound_us, F.lit(True))


# The bounds enter a batch's plan as three literal columns of these names (bound_columns),
# so the rule expressions themselves never change and are built once per SparkContext.
NOW_US, MAX_AHEAD_US, MAX_DELAY_US = "_now_us", "_max_ahead_us", "_max_delay_us"


def bound_columns(bounds: TimeBounds) -> list[Column]:
    """The batch's bounds as literal columns for the rules below (see NOW_US ...)."""
    return [
        F.lit(bounds.now_us).cast("bigint").alias(NOW_US),
        F.lit(bounds.max_ahead_us).cast("bigint").alias(MAX_AHEAD_US),
        F.lit(bounds.max_delay_us).cast("bigint").alias(MAX_DELAY_US),
    ]


def _too_far(name: str, later: Column, earlier: Column, bound: Column, what: str) -> Rule:
    """time_out_of_range when `later` - `earlier` > `bound` µs; the detail says by how much."""
    return (
        _later_than(later, earlier, bound),
        "time_out_of_range",
        F.concat(
            F.lit(f"{name} is "),
            F.try_subtract(later, earlier).cast("string"),
            F.lit(f" µs {what} (at most "),
            bound.cast("string"),
            F.lit(")"),
        ),
    )


def ahead_rules(
    named: Sequence[tuple[str, Column]], received_at_us: Column, *, delay_bound: bool = True
) -> list[Rule]:
    """time_out_of_range: the times in `named` vs received_at_us, received_at_us vs now."""
    now, ahead, delay = F.col(NOW_US), F.col(MAX_AHEAD_US), F.col(MAX_DELAY_US)
    rules = [
        _too_far(name, column, received_at_us, ahead, "after received_at_us")
        for name, column in named
    ]
    if delay_bound:
        for name, column in named:
            fails, code, detail = _too_far(
                name, received_at_us, column, delay, "before received_at_us"
            )
            rules.append(((delay > 0) & fails, code, detail))
    rules.append(
        _too_far("received_at_us", received_at_us, now, ahead, "after the consumer's clock")
    )
    return rules


def price_event_rules(e: Column, raw: Column) -> list[Rule]:
    """The rules a parsed price event `e` (struct of the wire fields) must pass, in order.

    `raw` is the record's value as text (for the JSON-type check of the decimal strings); the
    time bounds are the columns of bound_columns().
    """
    is_trade = e["stream"] == "trade"
    price, quantity = e["price"], e["quantity"]
    price_time = F.when(is_trade, e["trade_time_us"]).otherwise(e["event_time_us"])
    everything = [field.name for field in EVENT_SCHEMA.fields]
    trade_only = [
        (e["trade_time_us"], "trade_time_us", "an integer"),
        (quantity, "quantity", "a string"),
        (e["is_buyer_maker"], "is_buyer_maker", "a boolean"),
    ]
    rules: list[Rule] = [
        (
            _all_null([e[name] for name in everything]),
            "not_an_event",
            F.lit("not a JSON object with the price event's fields"),
        ),
        missing("symbol", e["symbol"], "a string"),
        missing("stream", e["stream"], "a string"),
        missing("event_time_us", e["event_time_us"], "an integer"),
        missing("sequence_id", e["sequence_id"], "an integer"),
        missing("price", price, "a string"),
        missing("received_at_us", e["received_at_us"], "an integer"),
        (
            ~e["stream"].isin(*STREAMS),
            "unknown_stream",
            F.concat(F.lit("stream "), _quoted(e["stream"]), F.lit(" is not trade or miniTicker")),
        ),
        *[
            (is_trade & column.isNull(), "missing_field", F.lit(f"a trade needs {name} ({kind})"))
            for column, name, kind in trade_only
        ],
        (
            ~is_json_string(raw, "symbol", e["symbol"]),
            "wrong_type",
            F.lit("symbol must be a JSON string"),
        ),
        *symbol_rules(e["symbol"]),
        (
            ~is_json_string(raw, "price", price),
            "wrong_type",
            F.lit("price must be a JSON string (decimal text), not a number"),
        ),
        (
            quantity.isNotNull() & ~is_json_string(raw, "quantity", quantity),
            "wrong_type",
            F.lit("quantity must be a JSON string (decimal text), not a number"),
        ),
        (
            ~price.rlike(DECIMAL_REGEX),
            "bad_decimal",
            F.concat(F.lit("price "), _quoted(price), F.lit(" is not a plain decimal")),
        ),
        (
            quantity.isNotNull() & ~quantity.rlike(DECIMAL_REGEX),
            "bad_decimal",
            F.concat(F.lit("quantity "), _quoted(quantity), F.lit(" is not a plain decimal")),
        ),
        (~price.rlike("[1-9]"), "non_positive", F.lit("price is zero")),
        (
            quantity.isNotNull() & ~quantity.rlike("[1-9]"),
            "non_positive",
            F.lit("quantity is zero"),
        ),
        (
            e["sequence_id"] < 0,
            "bad_id",
            F.concat(F.lit("sequence_id "), e["sequence_id"].cast("string"), F.lit(" < 0")),
        ),
        *time_rules(
            [
                ("event_time_us", e["event_time_us"]),
                ("price time", price_time),
                ("received_at_us", e["received_at_us"]),
            ]
        ),
        *ahead_rules(
            [("price time", price_time), ("event_time_us", e["event_time_us"])],
            e["received_at_us"],
        ),
        (
            e["source"].isNotNull() & ~e["source"].isin(*SOURCES),
            "bad_source",
            F.concat(F.lit("source "), _quoted(e["source"]), F.lit(" is not ws or rest")),
        ),
    ]
    return rules


def gap_rules(g: Column, raw: Column) -> list[Rule]:
    """The rules a parsed gap report `g` (struct of schema.GAP_SCHEMA) must pass, in order.

    A gap's window may lie long before its detection (a reconnect after hours): only the
    "ahead" bounds apply, with detected_at_us as the receive time.
    """
    window_end = F.coalesce(g["window_end_us"], g["window_start_us"])
    detected_at = F.coalesce(g["detected_at_us"], window_end)
    names = [field.name for field in GAP_SCHEMA.fields]
    return [
        (
            _all_null([g[name] for name in names]),
            "not_an_event",
            F.lit("not a JSON object with the gap report's fields"),
        ),
        missing("symbol", g["symbol"], "a string"),
        missing("stream", g["stream"], "a string"),
        missing("first_missing_id", g["first_missing_id"], "an integer"),
        missing("window_start_us", g["window_start_us"], "an integer"),
        missing("status", g["status"], "a string"),
        (
            ~g["stream"].isin(*STREAMS),
            "unknown_stream",
            F.concat(F.lit("stream "), _quoted(g["stream"]), F.lit(" is not trade or miniTicker")),
        ),
        (
            ~is_json_string(raw, "symbol", g["symbol"]),
            "wrong_type",
            F.lit("symbol must be a JSON string"),
        ),
        *symbol_rules(g["symbol"]),
        (
            ~g["status"].isin(*GAP_STATUSES),
            "bad_value",
            F.concat(F.lit("status "), _quoted(g["status"]), F.lit(" is not a gap status")),
        ),
        (g["first_missing_id"] < 0, "bad_id", F.lit("first_missing_id < 0")),
        (
            g["last_missing_id"].isNotNull() & (g["last_missing_id"] < g["first_missing_id"]),
            "bad_id",
            F.lit("last_missing_id < first_missing_id"),
        ),
        (
            (F.coalesce(g["filled_count"], F.lit(0)) < 0)
            | (F.coalesce(g["unfilled_count"], F.lit(0)) < 0),
            "bad_value",
            F.lit("a negative filled or unfilled count"),
        ),
        (
            F.coalesce(g["reason"], F.lit("")).contains("\u0000"),
            "bad_value",
            F.lit("reason holds a NUL character (PostgreSQL text cannot)"),
        ),
        *time_rules(
            [
                ("window_start_us", g["window_start_us"]),
                ("window_end_us", window_end),
                ("detected_at_us", detected_at),
            ]
        ),
        *ahead_rules(
            [("window_start_us", g["window_start_us"]), ("window_end_us", window_end)],
            detected_at,
            delay_bound=False,
        ),
    ]


def _all_null(columns: Sequence[Column]) -> Column:
    condition = columns[0].isNull()
    for column in columns[1:]:
        condition = condition & column.isNull()
    return condition
