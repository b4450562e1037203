"""Frame parser on real Binance data: the TRXUSDT trade capture (µs) and raw combined frames.

Expected values come from the CSV columns and from the frames' own stream names, read with
the standard library, never from the parser.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from producer_app.events import EVENT_FIELD_NAMES, PriceEvent
from producer_app.parser import (
    CONTROL_ERROR_REPLY,
    CONTROL_SERVER_SHUTDOWN,
    CONTROL_SUBSCRIPTION_REPLY,
    REASON_CODES,
    Control,
    DeadLetter,
    ParsedEvent,
    RestTradeError,
    event_from_rest_trade,
    parse_frame,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CSV_PATH = FIXTURES / "trxusdt-trade-2025-03-04.csv"
JSONL_PATH = FIXTURES / "trxusdt-trade-2025-03-04.jsonl.gz"
RECEIVED = 1_741_046_500_000_000


def _csv_rows() -> list[dict[str, str]]:
    with CSV_PATH.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _payload_lines() -> list[bytes]:
    with gzip.open(JSONL_PATH, "rb") as handle:
        return [line.rstrip(b"\n") for line in handle]


def _event(result: object) -> PriceEvent:
    assert isinstance(result, ParsedEvent), result
    return PriceEvent.from_json(result.value)


def test_fixture_is_the_csv_field_for_field() -> None:
    rows, lines = _csv_rows(), _payload_lines()
    assert len(rows) == len(lines) == 10_000
    for row, line in zip(rows, lines, strict=True):
        payload = json.loads(line)
        assert list(payload) == ["e", "E", "T", "s", "t", "p", "q", "m", "M"]
        assert payload["t"] == int(row["TradeId"]) and payload["p"] == row["Price"]


@pytest.mark.parametrize("wrapped", [False, True], ids=["raw /ws payload", "combined stream"])
def test_real_trx_trades_in_microseconds(wrapped: bool) -> None:
    for row, line in zip(_csv_rows(), _payload_lines(), strict=True):
        frame = b'{"stream":"trxusdt@trade","data":' + line + b"}" if wrapped else line
        result = parse_frame(frame, RECEIVED)
        event = _event(result)
        assert event.symbol == "TRXUSDT" == row["Symbol"]
        assert event.stream == "trade"
        assert event.sequence_id == int(row["TradeId"])
        assert event.event_time_us == int(row["EventTime"])  # already µs: kept as is
        assert event.trade_time_us == int(row["TransactionTime"])
        assert event.price == row["Price"] and event.quantity == row["Quantity"]
        assert event.is_buyer_maker is (row["IsBuyerMarketMaker"] == "1")
        assert event.received_at_us == RECEIVED and event.source == "ws"
        assert isinstance(result, ParsedEvent)
        assert result.price_time_us == int(row["TransactionTime"])


def test_same_trades_in_milliseconds_become_microseconds() -> None:
    for row, line in list(zip(_csv_rows(), _payload_lines(), strict=True))[:2000]:
        payload = json.loads(line)
        payload["E"] //= 1000
        payload["T"] //= 1000
        event = _event(parse_frame(json.dumps(payload), RECEIVED))
        assert event.event_time_us == int(row["EventTime"]) // 1000 * 1000
        assert event.trade_time_us == int(row["TransactionTime"]) // 1000 * 1000


def test_binance_documented_trade_in_ms_keeps_decimal_text() -> None:
    frame = (
        '{"stream":"bnbbtc@trade","data":{"e":"trade","E":1672515782136,"s":"BNBBTC",'
        '"t":12345,"p":"0.00100000","q":"100.00000000","T":1672515782136,"m":true,"M":true}}'
    )
    event = _event(parse_frame(frame, RECEIVED))
    assert (event.event_time_us, event.trade_time_us) == (1672515782136000, 1672515782136000)
    assert event.price == "0.00100000" and Decimal(event.price) == Decimal("0.001")
    assert event.quantity == "100.00000000"
    result = parse_frame(frame, RECEIVED)
    assert isinstance(result, ParsedEvent)
    assert list(orjson.loads(result.value)) == list(EVENT_FIELD_NAMES)


def test_mini_ticker_uses_close_and_event_time_in_ms_as_sequence() -> None:
    frame = (
        '{"stream":"btcusdt@miniTicker","data":{"e":"24hrMiniTicker","E":1672515782136,'
        '"s":"BTCUSDT","c":"16500.01000000","o":"16400.00","h":"16600.00","l":"16300.00",'
        '"v":"10000","q":"18"}}'
    )
    result = parse_frame(frame, RECEIVED)
    event = _event(result)
    assert event.stream == "miniTicker" and event.price == "16500.01000000"
    assert event.sequence_id == 1672515782136 and event.event_time_us == 1672515782136000
    assert event.trade_time_us is None and event.quantity is None and event.is_buyer_maker is None
    assert isinstance(result, ParsedEvent) and result.price_time_us == 1672515782136000
    micro = frame.replace("1672515782136,", "1672515782136123,")
    assert _event(parse_frame(micro, RECEIVED)).sequence_id == 1672515782136


def _recorded_frames(name: str) -> list[tuple[str, bytes]]:
    """(stream name, frame) of a cryptofeed capture: line 1 is the URL, then `<time>: <frame>`."""
    out = []
    for line in (FIXTURES / name).read_bytes().splitlines()[1:]:
        _, _, frame = line.partition(b": ")
        out.append((json.loads(frame)["stream"], frame))
    return out


@pytest.mark.parametrize("name", ["frames-spot-18d33cb8.txt", "frames-futures-f60e8395.txt"])
def test_recorded_kline_aggtrade_depth_bookticker_frames_are_rejected_on_purpose(name: str) -> None:
    frames = _recorded_frames(name)
    expected = Counter(stream.split("@", 1)[1] for stream, _ in frames)
    rejected: Counter[str] = Counter()
    for stream, frame in frames:
        result = parse_frame(frame, RECEIVED)
        assert isinstance(result, DeadLetter), (stream, result)
        assert result.code == "unsupported_event_type", (stream, result)
        assert result.raw == frame.decode()
        assert result.symbol in (None, json.loads(frame)["data"]["s"])
        rejected[stream.split("@", 1)[1]] += 1
    assert rejected == expected
    assert {"aggTrade", "kline_1m", "depth@100ms"} <= set(expected)


def test_spot_book_ticker_without_event_type_is_named_in_the_reason() -> None:
    frames = [
        f for s, f in _recorded_frames("frames-spot-18d33cb8.txt") if s.endswith("@bookTicker")
    ]
    assert frames, "the spot capture has bookTicker frames without an 'e' field"
    result = parse_frame(frames[0], RECEIVED)
    assert isinstance(result, DeadLetter) and "bookTicker" in result.reason


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ('{"e":"serverShutdown","E":1770123456789}', CONTROL_SERVER_SHUTDOWN),
        ('{"event":{"e":"serverShutdown","E":1770123456789}}', CONTROL_SERVER_SHUTDOWN),
        ('{"stream":"btcusdt@trade","data":{"e":"serverShutdown","E":1}}', CONTROL_SERVER_SHUTDOWN),
        ('{"result":null,"id":1}', CONTROL_SUBSCRIPTION_REPLY),
        ('{"result":["btcusdt@trade"],"id":3}', CONTROL_SUBSCRIPTION_REPLY),
        ('{"error":{"code":2,"msg":"Invalid request"},"id":null}', CONTROL_ERROR_REPLY),
    ],
)
def test_control_messages(frame: str, kind: str) -> None:
    result = parse_frame(frame, RECEIVED)
    assert isinstance(result, Control) and result.kind == kind


GOOD: dict[str, Any] = {
    "e": "trade",
    "E": 1741046401271969,
    "s": "TRXUSDT",
    "t": 348656870,
    "p": "0.2312",
    "q": "2619.4",
    "T": 1741046401271497,
    "m": True,
    "M": True,
}


def _with(**changes: object) -> str:
    data = {k: v for k, v in GOOD.items() if k not in changes or changes[k] is not _DROP}
    data.update({k: v for k, v in changes.items() if v is not _DROP})
    return json.dumps({"stream": "trxusdt@trade", "data": data})


_DROP = object()


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ("{", "invalid_json", "invalid JSON"),
        (b"\xff\xfe{}", "invalid_json", "invalid JSON"),
        ('{"a":NaN}', "invalid_json", "invalid JSON"),
        ("[]", "not_an_object", "list"),
        ('"trade"', "not_an_object", "str"),
        (_with(p="NaN"), "bad_decimal", "'p'"),
        (_with(p="Infinity"), "bad_decimal", "'p'"),
        (_with(p="1e400"), "bad_decimal", "'p'"),
        (_with(p="-1.5"), "bad_decimal", "'p'"),
        (_with(p=" 1.5"), "bad_decimal", "'p'"),
        (_with(p="1.5."), "bad_decimal", "'p'"),
        (_with(p="1" * 21), "bad_decimal", "'p'"),
        (_with(p="0.00000000"), "non_positive_value", "'p'"),
        (_with(q="0"), "non_positive_value", "'q'"),
        (_with(p=0.2312), "wrong_type", "'p'"),
        (_with(p=_DROP), "missing_field", "'p'"),
        (_with(q=_DROP), "missing_field", "'q'"),
        (_with(t=_DROP), "missing_field", "'t'"),
        (_with(t="348656870"), "wrong_type", "'t'"),
        (_with(t=True), "wrong_type", "'t'"),
        (_with(t=-1), "bad_id", "trade id"),
        (_with(t=2**63), "bad_id", "trade id"),
        (_with(E="1741046401271969"), "wrong_type", "'E'"),
        (_with(T=1.5), "wrong_type", "'T'"),
        (_with(T=12), "bad_time", "'T'"),
        (_with(E=10**17), "bad_time", "'E'"),
        (_with(m="true"), "wrong_type", "'m'"),
        (_with(m=_DROP), "missing_field", "'m'"),
        (_with(s=_DROP), "missing_field", "'s'"),
        (_with(s=5), "wrong_type", "'s'"),
        (_with(s="trxusdt"), "bad_symbol", "upper case"),
        (_with(s=""), "bad_symbol", "symbol"),
        (_with(s="BTCUSDT"), "stream_mismatch", "BTCUSDT"),
        (_with(e=_DROP), "missing_field", "'e'"),
        (_with(e=7), "wrong_type", "'e'"),
        (_with(e="aggTrade"), "unsupported_event_type", "aggTrade"),
        (_with(e="kline"), "unsupported_event_type", "kline"),
        ('{"stream":"trxusdt@trade","data":[1]}', "wrong_type", "'data'"),
        ('{"stream":5,"data":{}}', "wrong_type", "'stream'"),
        ('{"foo":1}', "missing_field", "'e'"),
    ],
)
def test_bad_frames_become_dead_letters_with_a_precise_reason(
    frame: str | bytes, code: str, words: str
) -> None:
    result = parse_frame(frame, RECEIVED)
    assert isinstance(result, DeadLetter), result
    assert result.code == code, result
    assert result.code in REASON_CODES
    assert words in result.reason, result.reason
    raw = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
    assert result.raw == raw


def test_oversized_frame_is_not_parsed() -> None:
    frame = _with(p="1." + "0" * 17).encode() + b" " * 70_000
    result = parse_frame(frame, RECEIVED, max_frame_bytes=65_536)
    assert isinstance(result, DeadLetter) and result.code == "oversized_frame"
    assert str(len(frame)) in result.reason


def test_symbol_is_kept_on_dead_letters_when_readable() -> None:
    result = parse_frame(_with(p="NaN"), RECEIVED)
    assert isinstance(result, DeadLetter) and result.symbol == "TRXUSDT"


def test_fast_and_slow_paths_agree() -> None:
    # The first frame of a symbol takes the slow path (symbol not yet cached), later ones
    # the fast path: both must serialize the same event.
    frame = _with(s="ZZZUSDT").replace("trxusdt@trade", "zzzusdt@trade")
    first = parse_frame(frame, RECEIVED)
    second = parse_frame(frame, RECEIVED)
    assert isinstance(first, ParsedEvent) and first == second


def test_rest_trade_becomes_a_rest_event() -> None:
    trade = {
        "id": 28457,
        "price": "4.00000100",
        "qty": "12.00000000",
        "quoteQty": "48.000012",
        "time": 1499865549590,
        "isBuyerMaker": True,
        "isBestMatch": True,
    }
    event = event_from_rest_trade("BNBBTC", trade, RECEIVED)
    assert event.source == "rest" and event.sequence_id == 28457
    assert event.price == "4.00000100" and event.quantity == "12.00000000"
    assert event.trade_time_us == event.event_time_us == 1499865549590000
    assert event.is_buyer_maker is True
    for bad in (
        {**trade, "price": "NaN"},
        {**trade, "id": "1"},
        {k: v for k, v in trade.items() if k != "qty"},
        {**trade, "isBuyerMaker": 1},
        [trade],
    ):
        with pytest.raises(RestTradeError):
            event_from_rest_trade("BNBBTC", bad, RECEIVED)
