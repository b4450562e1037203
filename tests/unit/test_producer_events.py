"""The event schema declared in producer_app/events.py agrees with docs/architecture.md."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from producer_app.events import (
    DEAD_LETTER_FIELDS,
    EVENT_FIELD_NAMES,
    EVENT_FIELDS,
    GAP_FIELDS,
    GapRecord,
    PriceEvent,
    encode_event,
)

pytestmark = pytest.mark.unit

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def _event_table() -> list[tuple[str, str]]:
    """(field, JSON type) rows of the PriceEvent table in docs/architecture.md."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Event on the wire", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", section, flags=re.MULTILINE)


def test_event_fields_match_the_architecture_table_in_order() -> None:
    rows = _event_table()
    assert [name for name, _ in rows] == list(EVENT_FIELD_NAMES)
    for (name, doc_type), spec in zip(rows, EVENT_FIELDS, strict=True):
        assert spec.name == name
        assert doc_type.startswith(spec.json_type), (name, doc_type, spec)
        assert ("or null" in doc_type) == spec.nullable, (name, doc_type, spec)


def test_gap_and_dead_letter_fields_match_the_contract() -> None:
    text = ARCHITECTURE.read_text()
    gap_line = text.split("## Gaps: topic `binance.gaps`", 1)[1]
    # Field names, not the status values ("filled"|"partially_filled"|...).
    documented = re.findall(r'(?<!\|)"(\w+)"(?!\|)', gap_line.split("`{", 1)[1].split("}`", 1)[0])
    assert [f.name for f in GAP_FIELDS] == documented
    dlq_line = text.split("## Dead letters", 1)[1].split("\n## ", 1)[0]
    assert [f.name for f in DEAD_LETTER_FIELDS] == re.findall(r'"(\w+)":', dlq_line)


def test_price_event_serializes_in_contract_order_and_round_trips() -> None:
    event = PriceEvent(
        symbol="TRXUSDT",
        stream="trade",
        event_time_us=1741046401271969,
        trade_time_us=1741046401271497,
        sequence_id=348656870,
        price="0.23120000",
        quantity="2619.40000000",
        is_buyer_maker=True,
        received_at_us=1741046401272286,
        source="ws",
    )
    raw = event.to_json()
    assert list(orjson.loads(raw)) == list(EVENT_FIELD_NAMES)
    assert b'"price":"0.23120000"' in raw  # decimal text kept exactly, trailing zeros too
    assert PriceEvent.from_json(raw) == event
    assert event.price_time_us == 1741046401271497


def test_ticker_event_has_nulls_and_uses_event_time() -> None:
    raw = encode_event(
        "BTCUSDT",
        "miniTicker",
        1672515782136000,
        None,
        1672515782136,
        "0.0025",
        None,
        None,
        1,
        "ws",
    )
    obj = orjson.loads(raw)
    assert (
        obj["trade_time_us"] is None and obj["quantity"] is None and obj["is_buyer_maker"] is None
    )
    assert PriceEvent.from_json(raw).price_time_us == 1672515782136000


def test_from_json_refuses_a_record_with_other_fields() -> None:
    with pytest.raises(ValueError, match="not a PriceEvent"):
        PriceEvent.from_json(b'{"symbol":"X"}')


def test_gap_record_json_keys() -> None:
    record = GapRecord("BTCUSDT", "trade", 5, 9, 1, 2, 3, 2, "partially_filled", "trade id jump", 7)
    assert list(orjson.loads(record.to_json())) == [f.name for f in GAP_FIELDS]
