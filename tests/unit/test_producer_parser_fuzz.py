"""Property-based fuzzing of the frame parser (hypothesis, thousands of cases per property).

Properties: no exception escapes; a frame is either a valid event (which round-trips through
the contract and carries positive exact decimals) or a dead letter with a known reason code,
a non-empty reason and the raw frame; valid frames mutated in one field never yield an event
that differs from the frame.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_producer_parser import GOOD  # the same real TRXUSDT trade payload

from producer_app.events import PriceEvent
from producer_app.parser import REASON_CODES, Control, DeadLetter, ParsedEvent, parse_frame

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RECEIVED = 1_741_046_500_000_000


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
tricky_strings = st.sampled_from(
    [
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "1e400",
        "1E5",
        "-0.1",
        "0",
        "0.0",
        "00.000",
        ".5",
        "5.",
        "1_000",
        "１２",
        "٣",
        " 1",
        "1 ",
        "0x10",
        "+1",
        "1" * 25,
        "0." + "1" * 19,
        "",
        "\u0000",
    ]
)


def _check(frame: bytes | str) -> None:
    result = parse_frame(frame, RECEIVED)
    if isinstance(result, ParsedEvent):
        event = PriceEvent.from_json(result.value)
        assert event.symbol == result.symbol and event.sequence_id == result.sequence_id
        assert Decimal(event.price) > 0 and Decimal(event.price).is_finite()
        if event.quantity is not None:
            assert Decimal(event.quantity) > 0
        assert event.event_time_us >= 10**14 and event.price_time_us == result.price_time_us
    elif isinstance(result, DeadLetter):
        assert result.code in REASON_CODES
        assert result.reason
        raw = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
        assert result.raw == raw
    else:
        assert isinstance(result, Control)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(frame: bytes) -> None:
    _check(frame)


@FUZZ
@given(json_values)
def test_arbitrary_json_never_raises(value: Any) -> None:
    _check(json.dumps(value))


@FUZZ
@given(
    field=st.sampled_from(sorted(GOOD)),
    value=json_values | tricky_strings,
    wrapped=st.booleans(),
    drop=st.booleans(),
)
def test_one_field_mutated_trade(field: str, value: Any, wrapped: bool, drop: bool) -> None:
    data = dict(GOOD)
    if drop:
        del data[field]
    else:
        data[field] = value
    frame = json.dumps({"stream": "trxusdt@trade", "data": data} if wrapped else data)
    _check(frame)
    result = parse_frame(frame, RECEIVED)
    if isinstance(result, ParsedEvent):
        # Only mutations that keep the frame valid may pass, and the event must say what
        # the frame said.
        event = PriceEvent.from_json(result.value)
        assert event.price == data["p"] and event.quantity == data["q"]
        assert event.sequence_id == data["t"] and event.is_buyer_maker is data["m"]
    elif field in {"p", "q", "t", "s", "E", "T", "m"} and drop:
        assert isinstance(result, DeadLetter) and result.code == "missing_field"


@FUZZ
@given(
    price=st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("99999999"), places=8),
    quantity=st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("9999999"), places=8),
    trade_id=st.integers(min_value=0, max_value=2**63 - 1),
    millis=st.booleans(),
)
def test_valid_trades_keep_exact_decimals(
    price: Decimal, quantity: Decimal, trade_id: int, millis: bool
) -> None:
    data = dict(GOOD, p=format(price, "f"), q=format(quantity, "f"), t=trade_id)
    if millis:
        data["E"], data["T"] = data["E"] // 1000, data["T"] // 1000
    result = parse_frame(orjson.dumps({"stream": "trxusdt@trade", "data": data}), RECEIVED)
    event = PriceEvent.from_json(result.value)  # type: ignore[union-attr]
    assert Decimal(event.price) == price and event.price == format(price, "f")
    assert Decimal(event.quantity or "0") == quantity and event.sequence_id == trade_id
    expected_t = 1741046401271497 if not millis else 1741046401271 * 1000
    assert event.trade_time_us == expected_t


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(text: str) -> None:
    _check(text)
