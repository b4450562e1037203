"""The wire formats the producer writes to Kafka: THE single declaration of the event schema.

Data comes from ``producer_app.parser`` (live WebSocket frames) and ``producer_app.gaps``
(trades filled from the REST API); it goes to Kafka as UTF-8 JSON produced with orjson:

* ``PriceEvent``      -> topic ``KAFKA_TOPIC_PRICES`` (key = symbol)
* ``DeadLetterRecord`` -> topic ``KAFKA_TOPIC_DLQ``   (key = symbol when known)
* ``GapRecord``       -> topic ``KAFKA_TOPIC_GAPS``   (key = symbol)

``EVENT_FIELDS`` is the machine-readable form of the PriceEvent table in
docs/architecture.md; the consumer's contract test imports it to check its Spark
``StructType``. Field order in the JSON object is the declaration order below.

Decimal fields (``price``, ``quantity``) are strings exactly as Binance sent them. The
parser accepts only plain decimals matching ``DECIMAL_PATTERN`` (at most 20 integer and
18 fractional digits), so every value fits ``DECIMAL(38, 18)`` without rounding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final, Literal

import orjson

STREAM_TRADE: Final = "trade"
STREAM_MINI_TICKER: Final = "miniTicker"
SOURCE_WS: Final = "ws"
SOURCE_REST: Final = "rest"

#: Plain decimal string accepted for prices and quantities (no sign, no exponent).
DECIMAL_PATTERN: Final = r"[0-9]{1,20}(?:\.[0-9]{1,18})?"
#: Precision and scale a consumer needs to hold every accepted decimal exactly.
DECIMAL_PRECISION: Final = 38
DECIMAL_SCALE: Final = 18

#: Dead-letter ``raw`` is cut to this many characters (docs/architecture.md: 1 MiB).
DLQ_RAW_MAX_CHARS: Final = 1 << 20

JsonType = Literal["string", "integer", "boolean"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a wire record: JSON name, JSON type and whether it may be null."""

    name: str
    json_type: JsonType
    nullable: bool


@dataclass(frozen=True, slots=True)
class PriceEvent:
    """One trade or mini-ticker price, normalized at the edge (topic binance.prices)."""

    symbol: str  # upper case, e.g. BTCUSDT
    stream: str  # "trade" or "miniTicker"
    event_time_us: int  # exchange event time E, µs since epoch UTC
    trade_time_us: int | None  # trade time T in µs (trades), None for tickers
    sequence_id: int  # trade id t (trades); E in ms (tickers)
    price: str  # decimal string as sent (p for trades, c for tickers)
    quantity: str | None  # q for trades, None for tickers
    is_buyer_maker: bool | None  # m for trades, None for tickers
    received_at_us: int  # producer receive time, µs since epoch UTC
    source: str  # "ws" or "rest"

    @property
    def price_time_us(self) -> int:
        """The time that orders a symbol's prices and picks its UTC day."""
        return self.trade_time_us if self.trade_time_us is not None else self.event_time_us

    def to_json(self) -> bytes:
        """Serialize to the contract's JSON, fields in declaration order."""
        return encode_event(
            self.symbol,
            self.stream,
            self.event_time_us,
            self.trade_time_us,
            self.sequence_id,
            self.price,
            self.quantity,
            self.is_buyer_maker,
            self.received_at_us,
            self.source,
        )

    @classmethod
    def from_json(cls, value: bytes | str) -> PriceEvent:
        """Read an event back (tests, tools); raises on a record that breaks the contract."""
        obj = orjson.loads(value)
        if not isinstance(obj, dict) or list(obj) != list(EVENT_FIELD_NAMES):
            raise ValueError(f"not a PriceEvent record: {value!r:.200}")
        return cls(**obj)


def encode_event(
    symbol: str,
    stream: str,
    event_time_us: int,
    trade_time_us: int | None,
    sequence_id: int,
    price: str,
    quantity: str | None,
    is_buyer_maker: bool | None,
    received_at_us: int,
    source: str,
) -> bytes:
    """Serialize one PriceEvent's values without building the dataclass.

    The parser's hot path calls this directly: orjson serializes a dict about three times
    faster than a slotted dataclass (0.36 vs 1.1 µs measured here). The keys below are
    checked against the dataclass fields at import time (``_check_encoder``).
    """
    return orjson.dumps(
        {
            "symbol": symbol,
            "stream": stream,
            "event_time_us": event_time_us,
            "trade_time_us": trade_time_us,
            "sequence_id": sequence_id,
            "price": price,
            "quantity": quantity,
            "is_buyer_maker": is_buyer_maker,
            "received_at_us": received_at_us,
            "source": source,
        }
    )


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A frame the producer could not turn into an event (topic binance.prices.dlq)."""

    reason: str
    raw: str  # the frame text, cut at DLQ_RAW_MAX_CHARS
    received_at_us: int
    source_url: str

    def to_json(self) -> bytes:
        return orjson.dumps(self)


GapStatus = Literal["filled", "partially_filled", "unfilled"]


@dataclass(frozen=True, slots=True)
class GapRecord:
    """A run of missing trade ids and what the REST fill achieved (topic binance.gaps)."""

    symbol: str
    stream: str
    first_missing_id: int
    last_missing_id: int | None  # None: open-ended (a reconnect window with unknown end)
    window_start_us: int  # price time of the last trade seen before the gap
    window_end_us: int  # price time of the first trade seen after it (or detection time)
    filled_count: int
    unfilled_count: int
    status: GapStatus
    reason: str
    detected_at_us: int

    def to_json(self) -> bytes:
        return orjson.dumps(self)


def _json_type(annotation: str) -> tuple[JsonType, bool]:
    base, _, rest = annotation.partition("|")
    nullable = rest.strip() == "None"
    mapping: dict[str, JsonType] = {"str": "string", "int": "integer", "bool": "boolean"}
    return mapping[base.strip()], nullable


def _specs(record: type) -> tuple[FieldSpec, ...]:
    # Derived from the dataclass annotations so the list can never drift from the class.
    specs = []
    for field in dataclasses.fields(record):
        annotation = field.type if isinstance(field.type, str) else field.type.__name__
        if annotation.startswith("GapStatus"):
            specs.append(FieldSpec(field.name, "string", False))
            continue
        json_type, nullable = _json_type(annotation)
        specs.append(FieldSpec(field.name, json_type, nullable))
    return tuple(specs)


#: The PriceEvent contract: (name, JSON type, nullable) in wire order.
EVENT_FIELDS: Final[tuple[FieldSpec, ...]] = _specs(PriceEvent)
EVENT_FIELD_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in EVENT_FIELDS)
#: Names of PriceEvent fields that carry decimal strings (DecimalType on the consumer side).
DECIMAL_FIELDS: Final[frozenset[str]] = frozenset({"price", "quantity"})
DEAD_LETTER_FIELDS: Final[tuple[FieldSpec, ...]] = _specs(DeadLetterRecord)
GAP_FIELDS: Final[tuple[FieldSpec, ...]] = _specs(GapRecord)


def _check_encoder() -> None:
    # encode_event spells the field names a second time for speed; refuse to import if
    # they ever differ from the dataclass (order included).
    sample = orjson.loads(encode_event("X", "trade", 1, 1, 1, "1", "1", True, 1, "ws"))
    if tuple(sample) != EVENT_FIELD_NAMES:
        raise RuntimeError(
            f"encode_event keys {tuple(sample)} != PriceEvent fields {EVENT_FIELD_NAMES}"
        )


_check_encoder()
