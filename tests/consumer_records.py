"""Kafka records for fuzzing the consumer, and the contract's verdict on each, in plain Python.

Shared by tests/unit/test_consumer_validation_fuzz.py (thousands of cases through a local
Spark) and tests/integration/test_consumer_dead_letters.py (thousands through real Kafka,
Spark and PostgreSQL). `violations()` is written from the event contract
(docs/architecture.md) and the consumer's documented rules (docs/consumer.md, "Dead
letters"), independently of consumer_app/validation.py: a record is storable exactly when
it returns an empty set, and the reason the consumer gives must be one of the set.

It models the JSON reader Spark uses where that decides what a field holds: the first JSON
value of the text counts (trailing bytes are ignored), a field of the wrong JSON type reads
as absent, a number longer than 1,000 characters fails the whole record, bytes that are not
UTF-8 read as U+FFFD.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from producer_app.events import DECIMAL_PATTERN, EVENT_FIELD_NAMES

NOW_US = 1_741_046_460_000_000  # the consumer's clock in these tests (2025-03-04 00:01 UTC)
MAX_AHEAD_US = 3_600_000_000  # an hour
BASE_US = 1_741_046_400_000_000  # 2025-03-04 00:00 UTC
MIN_TIME_US, MAX_TIME_US = 10**14, 10**17
INT64 = (-(2**63), 2**63 - 1)
DECIMAL = re.compile(DECIMAL_PATTERN)
FIELDS = EVENT_FIELD_NAMES  # the contract's declaration (producer_app/events.py)
INTEGER_FIELDS = {"event_time_us", "trade_time_us", "sequence_id", "received_at_us"}
TEXT_FIELDS = {"symbol", "stream", "price", "quantity", "source"}


class _TooLong(ValueError):
    pass


def _number(kind: type) -> Any:
    def parse(text: str) -> Any:
        if len(text) > 1000:  # Jackson's maxNumberLength: the record fails to parse
            raise _TooLong(text[:20])
        return kind(text)

    return parse


def parse_record(value: bytes | None) -> Any:
    """The record's first JSON value as the consumer's reader sees it; None if unreadable."""
    if value is None:
        return None
    text = value.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    decoder = json.JSONDecoder(parse_int=_number(int), parse_float=_number(float))
    try:
        obj, _ = decoder.raw_decode(text)
    except (ValueError, RecursionError):
        return None
    return obj


def _typed(name: str, value: Any) -> Any:
    """The field as a typed reader holds it: None when absent or of another JSON type."""
    if value is None:
        return None
    if name in INTEGER_FIELDS:
        ok = type(value) is int and INT64[0] <= value <= INT64[1]
        return value if ok else None
    if name == "is_buyer_maker":
        return value if type(value) is bool else None
    return value  # a text field reads any JSON value (as its text)


def _printable_symbol(symbol: str) -> bool:
    return (
        0 < len(symbol) <= 32
        and symbol.isprintable()
        and not any(c.isspace() or c == "\ufffd" for c in symbol)
        and symbol == symbol.upper()
    )


def violations(
    value: bytes | None, now_us: int = NOW_US, max_ahead_us: int = MAX_AHEAD_US
) -> set[str]:
    """Every contract rule the price event record breaks (empty: it is stored)."""
    obj = parse_record(value)
    if not isinstance(obj, dict):
        return {"not_an_event"}
    raw = {name: obj.get(name) for name in FIELDS}
    t = {name: _typed(name, raw[name]) for name in FIELDS}
    if all(v is None for v in t.values()):
        return {"not_an_event"}
    found: set[str] = set()
    is_trade = t["stream"] == "trade"
    required = ["symbol", "stream", "event_time_us", "sequence_id", "price", "received_at_us"]
    if is_trade:
        required += ["trade_time_us", "quantity", "is_buyer_maker"]
    if any(t[name] is None for name in required):
        found.add("missing_field")
    if t["stream"] is not None and t["stream"] not in ("trade", "miniTicker"):
        found.add("unknown_stream")
    for name in ("symbol", "price", "quantity"):
        if raw[name] is not None and type(raw[name]) is not str:
            found.add("wrong_type")
    if type(raw["symbol"]) is str and not _printable_symbol(raw["symbol"]):
        found.add("bad_symbol")
    for name in ("price", "quantity"):
        text = raw[name]
        if type(text) is str:
            if DECIMAL.fullmatch(text) is None:
                found.add("bad_decimal")
            elif Decimal(text) == 0:
                found.add("non_positive")
    if t["sequence_id"] is not None and t["sequence_id"] < 0:
        found.add("bad_id")
    price_time = t["trade_time_us"] if is_trade else t["event_time_us"]
    received = t["received_at_us"]
    times = [t["event_time_us"], price_time, received]
    if any(v is not None and not MIN_TIME_US <= v < MAX_TIME_US for v in times):
        found.add("bad_time")
    for event_time in (price_time, t["event_time_us"]):
        if event_time is not None and received is not None and event_time - received > max_ahead_us:
            found.add("time_out_of_range")
    if received is not None and received - now_us > max_ahead_us:
        found.add("time_out_of_range")
    source = raw["source"]
    if source is not None and source not in ("ws", "rest"):
        found.add("bad_source")
    return found


# ----------------------------------------------------------------------------- strategies
SYMBOLS = ["TRXUSDT", "BTCUSDT", "1000SATSUSDT", "BTCUSDT_250328", "币安人生USDT"]
# characters that break symbols in interesting ways: controls, format, separators, U+FFFD,
# lower case, a ligature that upper-cases to two letters, full-width digits, emoji, RTL
ODD_CHARACTERS = [
    "\u0000",
    "\u0007",
    "\u200f",
    "\u200b",
    "\u00a0",
    "\u2028",
    " ",
    "\t",
    "\ufffd",
    "a",
    "ß",
    "ﬁ",
    "１",
    "😀",
    "ع",
    "Ǆ",
    "\u0301",
]
plain_decimals = st.from_regex(DECIMAL, fullmatch=True).filter(lambda d: Decimal(d) > 0)
tricky_numbers = st.sampled_from(
    [0, -1, 2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, 10**30, 10**1200, 1.5, 1e300]
)
tricky_texts = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "1e5",
        "-0.1",
        "0",
        "0.000",
        ".5",
        "5.",
        " 1",
        "1,5",
        "１２",
        "1" * 21,
        "0." + "1" * 19,
        "",
        "\u0000",
        "x" * 5000,
    ]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    # keys never spell an event field: a nested {"price": "1"} beside a numeric top-level
    # price would pass the consumer's JSON-string check (documented in docs/consumer.md)
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=5).filter(lambda k: k not in FIELDS), children, max_size=4
        )
    ),
    max_leaves=10,
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid price event of the contract (trade or ticker), near BASE_US."""
    stream = draw(st.sampled_from(["trade", "miniTicker"]))
    price_time = BASE_US + draw(st.integers(0, 60_000_000))
    received = price_time + draw(st.integers(0, 5_000_000))
    event: dict[str, Any] = {
        "symbol": draw(st.sampled_from(SYMBOLS)),
        "stream": stream,
        "event_time_us": price_time + draw(st.integers(0, 1_000)),
        "trade_time_us": price_time if stream == "trade" else None,
        "sequence_id": draw(st.integers(0, 2**63 - 1)),
        "price": draw(plain_decimals),
        "quantity": draw(plain_decimals) if stream == "trade" else None,
        "is_buyer_maker": draw(st.booleans()) if stream == "trade" else None,
        "received_at_us": received,
        "source": draw(st.sampled_from(["ws", "rest"])),
    }
    if draw(st.booleans()):
        del event["source"]  # optional: a missing source reads as "ws"
    return event


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one to three fields broken (or left alone by chance)."""
    event = draw(events())
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(FIELDS))
        how = draw(
            st.sampled_from(
                ["drop", "null", "json", "number", "text", "far", "ms", "nest", "odd", "extra"]
            )
        )
        if how == "drop":
            event.pop(name, None)
        elif how == "null":
            event[name] = None
        elif how == "json":
            event[name] = draw(json_values)
        elif how == "number":
            event[name] = draw(tricky_numbers)
        elif how == "text":
            event[name] = draw(tricky_texts)
        elif how == "far":  # years ahead, or 5138
            event[name] = draw(st.sampled_from([10**17 - 1, 10**17, BASE_US + 86_400_000_000]))
        elif how == "ms":
            event[name] = BASE_US // 1000
        elif how == "nest":
            depth = draw(st.sampled_from([1, 50, 5000]))
            event[name] = json.loads("[" * depth + "1" + "]" * depth) if depth < 900 else None
            if depth >= 900:
                event["_deep"] = "DEEP"  # replaced by the encoder with 5000 nested arrays
        elif how == "odd" and isinstance(event.get(name), str):
            value = event[name]
            at = draw(st.integers(0, len(value)))
            event[name] = value[:at] + draw(st.sampled_from(ODD_CHARACTERS)) + value[at:]
        elif how == "extra":
            event[draw(st.text(max_size=8))] = draw(json_values)
    return event


def encode(obj: Any, *, ascii_only: bool, compact: bool) -> bytes:
    separators = (",", ":") if compact else (", ", ": ")
    text = json.dumps(obj, ensure_ascii=ascii_only, separators=separators)
    deep = "[" * 5000 + "]" * 5000
    return text.replace('"DEEP"', deep).encode("utf-8")


BINANCE_FRAME = (
    b'{"stream":"trxusdt@trade","data":{"e":"trade","E":1741046401271,"s":"TRXUSDT",'
    b'"t":348656896,"p":"0.23120000","q":"2185.50000000","T":1741046401271,"m":true,'
    b'"M":true}}'
)
DLQ_RECORD = (
    b'{"reason":"invalid_json","raw":"{","received_at_us":1741046401271497,"source_url":"ws"}'
)
GAP_RECORD = (
    b'{"symbol":"TRXUSDT","stream":"trade","first_missing_id":1,"last_missing_id":2,'
    b'"window_start_us":1741046400000000,"window_end_us":1741046401000000,"filled_count":0,'
    b'"unfilled_count":2,"status":"unfilled","reason":"x","detected_at_us":1741046402000000}'
)
foreign_records = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(max_size=300),
    st.sampled_from([BINANCE_FRAME, DLQ_RECORD, GAP_RECORD, b"[" * 5000 + b"]" * 5000]),
    st.text(max_size=200).map(lambda t: t.encode("utf-8")),
    json_values.map(lambda v: json.dumps(v).encode("utf-8")),
    st.just(b'{"symbol": "' + b"A" * 200_000 + b'"}'),
)


@st.composite
def records(draw: st.DrawFn) -> bytes | None:
    """One Kafka value of the prices topic: a good event, a broken one, or anything at all."""
    kind = draw(st.sampled_from(["valid", "mutated", "mutated", "foreign"]))
    if kind == "foreign":
        return draw(foreign_records)
    obj = draw(events()) if kind == "valid" else draw(mutated_events())
    return encode(obj, ascii_only=draw(st.booleans()), compact=draw(st.booleans()))
