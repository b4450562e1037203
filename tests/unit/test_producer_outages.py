"""Issue 12's producer paths as pure logic: reopened trades, id-space changes, resume floors,
event-time bounds (fuzzed through the real frame handler), REST failures and fatal errors.

The Kafka sink here is a real confluent-kafka producer pointed at a closed loopback port: it
queues locally and never delivers, so what the handler decided is read from its counters.
The drills on real services are in tests/integration/test_producer_reliability.py.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_producer_parser import GOOD  # a real TRXUSDT trade payload

from producer_app.app import Producer
from producer_app.config import load_settings
from producer_app.gaps import GapFiller, RestError
from producer_app.metrics import ProducerMetrics
from producer_app.parser import TIME_OUT_OF_RANGE, ParsedEvent, parse_frame, time_bound_violation
from producer_app.resume import ResumePoints
from producer_app.sequence import SequenceTracker
from producer_app.sink import KafkaSink

pytestmark = pytest.mark.unit

DAY_US = 86_400_000_000
FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _settings(**extra: object) -> Any:
    values: dict[str, object] = {
        "kafka_bootstrap_servers": "127.0.0.1:9",  # discard port: nothing is ever delivered
        "producer_metrics_port": 0,
        "binance_symbols": "TRXUSDT",
        "producer_gap_grace_s": 0,
    }
    values.update(extra)
    return load_settings(**values)


# ----------------------------------------------------------------------------- tracker
def test_undelivered_trades_are_reopened_as_one_range_and_refilled_once() -> None:
    tracker = SequenceTracker(gap_grace_s=0)
    for i in range(100, 200):
        assert tracker.accept("BTCUSDT", "trade", i, i * 10)
    for i in range(120, 150):  # the broker never acknowledged these
        assert tracker.reopen("BTCUSDT", i, i * 10, "kafka delivery failed")
    assert tracker.pending_ranges("BTCUSDT") == [(120, 149)]
    assert tracker.floor("BTCUSDT") == (119, 1200)
    assert not tracker.reopen("BTCUSDT", 500, 5000, "x")  # never produced: nothing to reopen
    refilled = [i for i in range(100, 200) if tracker.accept("BTCUSDT", "trade", i, i * 10)]
    assert refilled == list(range(120, 150))
    assert tracker.pending_ranges("BTCUSDT") == [] and tracker.floor("BTCUSDT") is None


def test_lower_id_with_a_later_time_is_another_id_space() -> None:
    tracker = SequenceTracker()
    tracker.seed("BTCUSDT", "trade", 4_600_000_000, 1_741_046_500_000_000)
    assert not tracker.accept("BTCUSDT", "trade", 4_599_999_000, 1_741_046_400_000_000)  # dup
    assert tracker.accept("BTCUSDT", "trade", 1, 1_741_046_600_000_000)  # another feed
    assert tracker.id_space_resets == [("BTCUSDT", 4_600_000_000, 1)]
    assert tracker.high_water_mark("BTCUSDT") == 1 and tracker.pending_ranges("BTCUSDT") == []


def test_resume_point_never_passes_a_pending_id() -> None:
    points = ResumePoints("wss://stream:443")
    points.acked("BTCUSDT", "trade", 500, 5000)
    points.acked("BTCUSDT", "trade", 400, 4000)  # a REST fill acknowledged later: lower
    points.acked("ETHUSDT", "trade", 7, 70)
    floors = {"BTCUSDT": (299, 2990)}
    records = dict(points.take_records(lambda symbol, _stream: floors.get(symbol)))
    assert {k: orjson.loads(v)["sequence_id"] for k, v in records.items()} == {
        "wss://stream:443|BTCUSDT|trade": 299,
        "wss://stream:443|ETHUSDT|trade": 7,
    }
    assert points.take_records() == []  # nothing moved since


def test_feed_id_comes_from_the_websocket_url_unless_set() -> None:
    assert _settings(binance_ws_url="wss://data-stream.binance.vision").feed_id == (
        "wss://data-stream.binance.vision:"
    )
    assert _settings(binance_ws_url="ws://127.0.0.1:9443/x").feed_id == "ws://127.0.0.1:9443"
    assert _settings(producer_feed_id="demo").feed_id == "demo"


# ----------------------------------------------------------------------------- time bounds
def test_time_bounds_are_relative_to_the_receive_time() -> None:
    now = 1_800_000_000_000_000
    assert time_bound_violation(now + DAY_US, now, DAY_US, DAY_US) is None
    assert time_bound_violation(now - DAY_US, now, DAY_US, DAY_US) is None
    ahead = time_bound_violation(now + DAY_US + 1, now, DAY_US, DAY_US)
    assert ahead is not None and "AHEAD" in ahead
    behind = time_bound_violation(now - DAY_US - 1, now, DAY_US, DAY_US)
    assert behind is not None and "BEHIND" in behind
    # a replay of 2020 with the behind bound off (the replay command, `make demo`)
    assert time_bound_violation(1_577_836_800_000_000, now, DAY_US, 0) is None


def _trade_frame(trade_id: int, time_us: int) -> bytes:
    payload = GOOD | {"t": trade_id, "E": time_us, "T": time_us}
    return orjson.dumps({"stream": "trxusdt@trade", "data": payload})


_PRODUCERS: dict[tuple[int, int], Producer] = {}
_IDS = itertools.count(1)


def _quiet_producer(**extra: object) -> Producer:
    settings = _settings(**extra)
    sink = KafkaSink(settings, ProducerMetrics(), {"log_level": 0})
    return Producer(settings, sink=sink)


@FUZZ
@given(
    offset_us=st.integers(min_value=-10 * 365 * DAY_US, max_value=10 * 365 * DAY_US),
    ahead_days=st.integers(min_value=0, max_value=3),
    behind_days=st.integers(min_value=0, max_value=3),
)
def test_handler_never_produces_an_event_outside_the_bounds(
    offset_us: int, ahead_days: int, behind_days: int
) -> None:
    key = (ahead_days, behind_days)
    if key not in _PRODUCERS:
        _PRODUCERS[key] = _quiet_producer(
            producer_max_event_ahead_s=ahead_days * 86_400,
            producer_max_event_behind_s=behind_days * 86_400,
        )
    producer = _PRODUCERS[key]
    produced_before = producer.sink.produced_events
    dead_before = producer.dead_letters.get(TIME_OUT_OF_RANGE, 0)
    now_us = time.time_ns() // 1000
    producer.handle_frame(_trade_frame(next(_IDS), now_us + offset_us))
    produced = producer.sink.produced_events - produced_before
    dead = producer.dead_letters.get(TIME_OUT_OF_RANGE, 0) - dead_before
    # Expectation from the bounds alone (the handler reads the clock a moment later).
    slack = 5_000_000
    too_far_ahead = ahead_days and offset_us > ahead_days * DAY_US + slack
    too_far_behind = behind_days and offset_us < -behind_days * DAY_US - slack
    inside = (not ahead_days or offset_us < ahead_days * DAY_US - slack) and (
        not behind_days or offset_us > -behind_days * DAY_US + slack
    )
    assert produced + dead == 1
    if too_far_ahead or too_far_behind:
        assert dead == 1
    elif inside:
        assert produced == 1


# ----------------------------------------------------------------------------- gap filler
class _Rest:
    """REST stand-in (pure logic test): fails ``failures`` times, then serves ``trades``."""

    def __init__(self, trades: list[dict[str, Any]], failures: int) -> None:
        self.trades = trades
        self.failures = failures
        self.calls = 0

    async def historical_trades(self, symbol: str, from_id: int, limit: int) -> list[Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise RestError("HTTP 503 from test: Internal error")
        return [t for t in self.trades if t["id"] >= from_id][:limit]


def _rest_trade(trade_id: int) -> dict[str, Any]:
    return {
        "id": trade_id,
        "price": "0.2312",
        "qty": "10",
        "quoteQty": "2.312",
        "time": 1_741_046_500_000_000 + trade_id,
        "isBuyerMaker": True,
        "isBestMatch": True,
    }


def _filler(rest: _Rest, **extra: object) -> tuple[GapFiller, SequenceTracker]:
    settings = _settings(producer_gap_retry_base_s=0.01, **extra)
    tracker = SequenceTracker(gap_grace_s=0)
    sink = KafkaSink(settings, ProducerMetrics(), {"log_level": 0})
    return GapFiller(settings, tracker, sink, ProducerMetrics(), rest), tracker  # type: ignore[arg-type]


def test_failed_rest_fill_stays_unfilled_and_other_ranges_stay_pending() -> None:
    rest = _Rest([_rest_trade(i) for i in range(1, 40)], failures=1)
    filler, tracker = _filler(rest)
    for i in (1, 2, 10, 11, 30, 31):  # two closed gaps: 3..9 and 12..29
        tracker.accept("TRXUSDT", "trade", i, 1_741_046_500_000_000 + i)
    asyncio.run(filler.fill_due(everything=True))
    first = filler.records[0]
    assert (first.first_missing_id, first.status, first.filled_count) == (3, "unfilled", 0)
    assert "REST failed" in first.reason and first.unfilled_count == 7
    assert tracker.pending_ranges("TRXUSDT") == [(3, 9)]  # retried later: not due yet
    assert filler.records[1].status == "filled"  # the other range was not dropped
    time.sleep(0.05)
    asyncio.run(filler.fill_due())
    final = filler.records[-1]
    assert (final.first_missing_id, final.status, final.filled_count) == (3, "filled", 7)
    assert final.window_start_us == first.window_start_us
    assert final.detected_at_us > first.detected_at_us  # the consumer keeps the later verdict
    assert tracker.pending_ranges("TRXUSDT") == []


def test_failed_reconnect_window_is_never_reported_filled() -> None:
    rest = _Rest([_rest_trade(i) for i in range(1, 20)], failures=3)
    filler, tracker = _filler(rest)
    tracker.accept("TRXUSDT", "trade", 5, 1_741_046_500_000_005)
    tracker.open_window("TRXUSDT")
    for _ in range(3):
        asyncio.run(filler.fill_due(everything=True))
    assert [r.status for r in filler.records] == ["unfilled"] * 3
    assert tracker.pending_ranges("TRXUSDT") == [(6, None)]
    asyncio.run(filler.fill_due(everything=True))
    assert filler.records[-1].status == "filled" and filler.records[-1].filled_count == 14


def test_gap_beyond_the_rest_limit_is_recorded_unfilled_with_its_size() -> None:
    rest = _Rest([], failures=0)
    filler, tracker = _filler(rest, producer_gap_max_trades=1000)
    tracker.accept("TRXUSDT", "trade", 226_000_000, 1)
    tracker.accept("TRXUSDT", "trade", 4_600_000_000, 2)
    asyncio.run(filler.fill_due(everything=True))
    (record,) = filler.records
    assert (record.status, record.unfilled_count) == ("unfilled", 4_600_000_000 - 226_000_001)
    assert rest.calls == 0 and tracker.pending_ranges("TRXUSDT") == []


# ----------------------------------------------------------------------------- fatal errors
def test_fatal_kafka_error_stops_the_producer() -> None:
    producer = _quiet_producer()
    fatal = KafkaError(KafkaError._FATAL, "test: producer fenced", fatal=True)
    producer.sink._on_error(fatal)  # librdkafka's error callback
    assert producer.sink.fatal_error is fatal
    event = parse_frame(_trade_frame(2, time.time_ns() // 1000), time.time_ns() // 1000)
    assert isinstance(event, ParsedEvent)
    producer._refused(event, KafkaException(fatal))  # produce() raising the fatal error
    assert producer._stop.is_set()  # run() ends, __main__ exits 3


class _FatalPoll:
    """What librdkafka's producer does once fatal: poll() raises the underlying error."""

    def __init__(self, error: KafkaError) -> None:
        self.error = error

    def poll(self, _timeout: float) -> int:
        raise KafkaException(self.error)

    def __len__(self) -> int:
        return 0


def test_fatal_error_raised_by_poll_stops_the_producer_and_names_the_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = _quiet_producer()
    # produce() refuses first with librdkafka's generic _FATAL (its fatal() is False) ...
    generic = KafkaError(KafkaError._FATAL, "Unable to produce message: Local: Fatal error")
    event = parse_frame(_trade_frame(2, time.time_ns() // 1000), time.time_ns() // 1000)
    assert isinstance(event, ParsedEvent)
    producer._refused(event, KafkaException(generic))
    assert producer._stop.is_set() and producer.sink.fatal_error is generic
    # ... then poll() raises the underlying error (not through the error callback).
    cause = KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "sequence check", fatal=True)
    monkeypatch.setattr(producer.sink, "_producer", _FatalPoll(cause))
    assert producer.sink.poll(0) == 0
    assert producer.sink.fatal_error is cause


def test_an_exception_of_our_own_callback_is_not_taken_for_a_fatal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = _quiet_producer()
    monkeypatch.setattr(
        producer.sink, "_producer", _FatalPoll(KafkaError(KafkaError._MSG_TIMED_OUT))
    )
    with pytest.raises(KafkaException):
        producer.sink.poll(0)
    assert producer.sink.fatal_error is None
