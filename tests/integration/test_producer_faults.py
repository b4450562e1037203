"""Producer against the local replay server and the real Kafka broker, with injected faults.

Each test replays the 10,000 real TRXUSDT trades (tests/fixtures, µs times), breaks the
connection in one way, and ends by reading the prices topic back with a confluent-kafka
consumer: every trade id of the recording must be there exactly once, with the recording's
exact price and quantity text. Expected values come from the fixture file (read with the
json module), never from the producer.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from producer_app.config import ProducerSettings, load_settings
from producer_app.events import PriceEvent
from producer_app.replay import ReplayResult, run_replay
from producer_app.replay_server import MALFORMED_FRAMES, FaultPlan, load_recording

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "trxusdt-trade-2025-03-04.jsonl.gz"


def _payloads() -> list[dict[str, Any]]:
    with gzip.open(FIXTURE, "rt") as handle:
        return [json.loads(line) for line in handle]


PAYLOADS = _payloads()
TRADE_IDS = [p["t"] for p in PAYLOADS]
BY_ID = {p["t"]: p for p in PAYLOADS}
FRAMES = [
    json.dumps({"stream": "trxusdt@trade", "data": p}, separators=(",", ":")).encode()
    for p in PAYLOADS
]


def read_topic(
    bootstrap: str, topic: str, timeout_s: float = 30.0
) -> list[tuple[str | None, bytes]]:
    """Every message of the topic, from the beginning to the end offsets seen at start."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = list(metadata.topics[topic].partitions)
        ends = {}
        for p in partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[tuple[str | None, bytes]] = []
        positions = dict.fromkeys(partitions, 0)

        deadline = time.monotonic() + timeout_s
        while any(positions[p] < ends[p] for p in partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=0.5):
                partition, offset, value = msg.partition(), msg.offset(), msg.value()
                if msg.error() or partition is None or offset is None or value is None:
                    continue
                positions[partition] = offset + 1
                key = msg.key()
                out.append((key.decode() if key is not None else None, value))
        return out
    finally:
        consumer.close()


@pytest.fixture
def topics(make_topic: Callable[..., str]) -> dict[str, str]:
    return {
        "prices": make_topic(6),
        "dlq": make_topic(1),
        "gaps": make_topic(1),
        "resume": make_topic(1),
    }


def _settings(kafka_bootstrap: str, topics: dict[str, str], **extra: object) -> ProducerSettings:
    values: dict[str, object] = {
        "kafka_bootstrap_servers": kafka_bootstrap,
        "kafka_topic_prices": topics["prices"],
        "kafka_topic_dlq": topics["dlq"],
        "kafka_topic_gaps": topics["gaps"],
        "kafka_topic_resume": topics["resume"],
        # one feed across the test's replay servers (each listens on another port)
        "producer_feed_id": "test-replay",
        "producer_metrics_port": 0,
        "producer_backoff_base_s": 0.05,
        "producer_gap_grace_s": 0.5,
        "producer_create_topics": False,
        "producer_linger_ms": 5,
    }
    values.update(extra)
    return load_settings(**values)


def _replay(
    settings: ProducerSettings,
    faults: FaultPlan | None = None,
    speed: float | None = None,
    ping_interval_s: float = 20.0,
) -> ReplayResult:
    recording = load_recording(FRAMES)
    return asyncio.run(
        asyncio.wait_for(
            run_replay(
                recording, settings, speed=speed, faults=faults, ping_interval_s=ping_interval_s
            ),
            timeout=120,
        )
    )


def _assert_every_trade_once(kafka_bootstrap: str, topic: str) -> list[PriceEvent]:
    messages = read_topic(kafka_bootstrap, topic)
    events = [PriceEvent.from_json(value) for _, value in messages]
    counts = Counter(e.sequence_id for e in events)
    doubled = [i for i, n in counts.items() if n > 1]
    missing = sorted(set(TRADE_IDS) - set(counts))
    assert not doubled, f"{len(doubled)} trade ids produced twice, e.g. {doubled[:5]}"
    assert not missing, f"{len(missing)} trade ids missing, e.g. {missing[:5]}"
    assert len(events) == len(TRADE_IDS) == 10_000
    for (key, _), event in zip(messages, events, strict=True):
        source = BY_ID[event.sequence_id]
        assert key == event.symbol == source["s"]
        assert event.price == source["p"] and event.quantity == source["q"]
        assert event.is_buyer_maker is source["m"]
        assert event.trade_time_us == source["T"]
        if event.source == "ws":
            assert event.event_time_us == source["E"]
    return events


def _gap_records(kafka_bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(value) for _, value in read_topic(kafka_bootstrap, topic)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_clean_replay_keyed_exact_and_counted(kafka_bootstrap: str, topics: dict[str, str]) -> None:
    port = _free_port()
    result = _replay(_settings(kafka_bootstrap, topics, producer_metrics_port=port))
    summary = result.summary
    assert summary.ok and summary.ended_by_end_of_recording
    assert (summary.frames_received, summary.events_acked, summary.duplicates_dropped) == (
        10_000,
        10_000,
        0,
    )
    events = _assert_every_trade_once(kafka_bootstrap, topics["prices"])
    assert {e.source for e in events} == {"ws"}
    # Key = symbol: one symbol stays in one partition.
    consumer_partitions = _partitions_of(kafka_bootstrap, topics["prices"])
    assert len(consumer_partitions) == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
        metrics = response.read().decode()
    assert "producer_frames_received_total 10000.0" in metrics
    assert "producer_events_produced_total 10000.0" in metrics
    assert "producer_produce_latency_seconds_count" in metrics


def _partitions_of(bootstrap: str, topic: str) -> set[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"p-{uuid.uuid4().hex}"})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        used = set()
        for p in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                used.add(p)
        return used
    finally:
        consumer.close()


def test_drop_after_n_frames_reconnects_and_fills_the_missed_trades(
    kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    faults = FaultPlan(drop_after=3000, drop_skip=200)  # 200 trades happen while disconnected
    result = _replay(_settings(kafka_bootstrap, topics), faults)
    assert result.server.faults_fired == ["drop@3000"]
    summary = result.summary
    assert summary.ok and sum(summary.reconnects.values()) >= 1
    assert summary.gap_trades_filled == 200 and summary.gap_trades_unfilled == 0
    events = _assert_every_trade_once(kafka_bootstrap, topics["prices"])
    assert sorted(e.sequence_id for e in events if e.source == "rest") == TRADE_IDS[3000:3200]
    gaps = _gap_records(kafka_bootstrap, topics["gaps"])
    assert [
        (g["first_missing_id"], g["last_missing_id"], g["filled_count"], g["status"]) for g in gaps
    ] == [(TRADE_IDS[3000], TRADE_IDS[3199], 200, "filled")]
    assert gaps[0]["window_start_us"] == PAYLOADS[2999]["T"]
    assert gaps[0]["window_end_us"] == PAYLOADS[3200]["T"]


def test_server_shutdown_switches_connections_without_loss_or_doubles(
    kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    faults = FaultPlan(shutdown_after=3000, shutdown_close_after=2000)
    result = _replay(_settings(kafka_bootstrap, topics), faults)
    summary = result.summary
    assert summary.ok and summary.reconnects.get("server_shutdown") == 1
    assert summary.connections_opened == 2
    assert summary.dead_letters == {}
    _assert_every_trade_once(kafka_bootstrap, topics["prices"])


def test_silent_server_is_replaced_by_the_watchdog(
    kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    faults = FaultPlan(silent_after=3000)
    result = _replay(_settings(kafka_bootstrap, topics, producer_watchdog_timeout_s=1.0), faults)
    summary = result.summary
    assert summary.ok and summary.reconnects.get("watchdog") == 1
    _assert_every_trade_once(kafka_bootstrap, topics["prices"])


def test_short_rotation_overlaps_and_dedups(kafka_bootstrap: str, topics: dict[str, str]) -> None:
    # 48 minutes of trades at 1000x last ~2.9 s; a rotation every 0.4 s.
    settings = _settings(kafka_bootstrap, topics, producer_rotation_interval_s=0.4)
    result = _replay(settings, speed=1000)
    summary = result.summary
    rotations = summary.reconnects.get("rotation", 0)
    assert summary.ok and rotations >= 3
    assert summary.connections_opened == rotations + 1
    # Both connections of an overlap received the frame that proved the new one alive.
    assert summary.duplicates_dropped >= rotations
    assert summary.gap_trades_filled == 0
    _assert_every_trade_once(kafka_bootstrap, topics["prices"])


def test_gap_only_rest_can_fill(kafka_bootstrap: str, topics: dict[str, str]) -> None:
    faults = FaultPlan(skip_frames=(4000, 4500))  # never sent on the WebSocket
    result = _replay(_settings(kafka_bootstrap, topics), faults)
    summary = result.summary
    assert summary.ok and summary.gap_trades_filled == 500 and summary.reconnects == {}
    events = _assert_every_trade_once(kafka_bootstrap, topics["prices"])
    rest = [e for e in events if e.source == "rest"]
    assert sorted(e.sequence_id for e in rest) == TRADE_IDS[4000:4500]
    assert all(e.event_time_us == e.trade_time_us for e in rest)  # REST has no event time
    gaps = _gap_records(kafka_bootstrap, topics["gaps"])
    assert len(gaps) == 1 and gaps[0]["status"] == "filled" and gaps[0]["unfilled_count"] == 0
    assert gaps[0]["reason"] == "trade id jump"


def test_unfillable_trades_are_recorded(kafka_bootstrap: str, topics: dict[str, str]) -> None:
    lost = frozenset(TRADE_IDS[4010:4020])
    faults = FaultPlan(skip_frames=(4000, 4100), rest_missing_ids=lost)
    result = _replay(_settings(kafka_bootstrap, topics), faults)
    summary = result.summary
    assert summary.ok and summary.gap_trades_filled == 90 and summary.gap_trades_unfilled == 10
    events = [PriceEvent.from_json(v) for _, v in read_topic(kafka_bootstrap, topics["prices"])]
    ids = Counter(e.sequence_id for e in events)
    assert set(ids) == set(TRADE_IDS) - lost and max(ids.values()) == 1
    gaps = _gap_records(kafka_bootstrap, topics["gaps"])
    assert [(g["filled_count"], g["unfilled_count"], g["status"]) for g in gaps] == [
        (90, 10, "partially_filled")
    ]
    assert gaps[0]["symbol"] == "TRXUSDT" and gaps[0]["first_missing_id"] == TRADE_IDS[4000]


def test_malformed_frames_land_in_the_dlq_with_their_reason(
    kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    result = _replay(_settings(kafka_bootstrap, topics), FaultPlan(malformed_after=100))
    summary = result.summary
    assert summary.ok and sum(summary.dead_letters.values()) == len(MALFORMED_FRAMES)
    _assert_every_trade_once(kafka_bootstrap, topics["prices"])
    dead = read_topic(kafka_bootstrap, topics["dlq"])
    records = [json.loads(value) for _, value in dead]
    assert [r["raw"].encode() for r in records] == [frame for frame, _ in MALFORMED_FRAMES]
    for record, (_, code) in zip(records, MALFORMED_FRAMES, strict=True):
        assert record["reason"].startswith(code + ": "), record
        assert record["source_url"].startswith("ws://127.0.0.1:") and record["received_at_us"] > 0
    keys = [key for key, _ in dead]
    assert keys[0] is None and keys[1] is None  # symbol unreadable
    assert keys[2] == "BTCUSDT"


def test_pings_are_answered_with_the_payload(kafka_bootstrap: str, topics: dict[str, str]) -> None:
    result = _replay(_settings(kafka_bootstrap, topics), speed=2000, ping_interval_s=0.1)
    assert result.server.pings_sent >= 5
    assert result.server.pongs_received >= result.server.pings_sent - 1
    assert result.summary.ok and result.summary.events_acked == 10_000


def test_reconnect_window_with_no_later_trade_is_probed_over_rest(
    kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    # The connection drops 200 trades before the end and those 200 happen while the client
    # is away: no live trade ever reveals the jump, only the reconnect window does.
    faults = FaultPlan(drop_after=9800, drop_skip=200)
    result = _replay(_settings(kafka_bootstrap, topics), faults)
    summary = result.summary
    assert summary.ok and summary.gap_trades_filled == 200 and summary.gap_trades_unfilled == 0
    events = _assert_every_trade_once(kafka_bootstrap, topics["prices"])
    assert sorted(e.sequence_id for e in events if e.source == "rest") == TRADE_IDS[9800:]
    gaps = _gap_records(kafka_bootstrap, topics["gaps"])
    assert [
        (g["reason"], g["first_missing_id"], g["last_missing_id"], g["status"]) for g in gaps
    ] == [("reconnect window", TRADE_IDS[9800], TRADE_IDS[-1], "filled")]
    assert gaps[0]["window_start_us"] == PAYLOADS[9799]["T"]


def test_trades_and_mini_tickers_together(kafka_bootstrap: str, topics: dict[str, str]) -> None:
    # A mini-ticker frame after every 100th real trade, built from that trade (close = its
    # price, E = its event time): synthetic tickers, real trades, one combined stream.
    frames: list[bytes] = []
    tickers = []
    for index, payload in enumerate(PAYLOADS):
        frames.append(FRAMES[index])
        if index % 100 == 99:
            ticker = {
                "e": "24hrMiniTicker",
                "E": payload["E"],
                "s": "TRXUSDT",
                "c": payload["p"],
                "o": "0.2312",
                "h": "0.2400",
                "l": "0.2300",
                "v": "1000.0",
                "q": "231.2",
            }
            tickers.append(ticker)
            frames.append(json.dumps({"stream": "trxusdt@miniTicker", "data": ticker}).encode())
    recording = load_recording(frames)
    assert recording.stream_kinds == ["trade", "miniTicker"]
    result = asyncio.run(
        asyncio.wait_for(run_replay(recording, _settings(kafka_bootstrap, topics)), timeout=120)
    )
    assert result.summary.ok and result.summary.events_acked == 10_000 + len(tickers)
    events = [PriceEvent.from_json(v) for _, v in read_topic(kafka_bootstrap, topics["prices"])]
    trades = [e for e in events if e.stream == "trade"]
    ticks = sorted((e for e in events if e.stream == "miniTicker"), key=lambda e: e.sequence_id)
    assert sorted(e.sequence_id for e in trades) == TRADE_IDS
    assert [(e.sequence_id, e.event_time_us, e.price) for e in ticks] == [
        (t["E"] // 1000, t["E"], t["c"]) for t in tickers
    ]
    assert all(e.quantity is None and e.trade_time_us is None for e in ticks)


@pytest.mark.parametrize(
    ("resume_at", "filled", "duplicates"),
    [(6000, 1000, 0), (4000, 0, 1000)],
    ids=["down while 1000 trades happened", "restarted feed repeats 1000 trades"],
)
def test_restart_resumes_from_kafka(
    kafka_bootstrap: str, topics: dict[str, str], resume_at: int, filled: int, duplicates: int
) -> None:
    resume = {"producer_resume_from_kafka": True}
    settings = _settings(kafka_bootstrap, topics)
    first = asyncio.run(
        asyncio.wait_for(run_replay(load_recording(FRAMES[:5000]), settings, overrides=resume), 120)
    )
    assert first.summary.ok and first.summary.events_acked == 5000
    # Second producer process: the live feed now starts at frame `resume_at`; earlier trades
    # are in the past (REST serves them), trades 0..4999 are already in Kafka.
    second = asyncio.run(
        asyncio.wait_for(
            run_replay(
                load_recording(FRAMES),
                settings,
                faults=FaultPlan(skip_frames=(0, resume_at)),
                overrides=resume,
            ),
            120,
        )
    )
    summary = second.summary
    assert summary.ok and summary.gap_trades_filled == filled
    assert summary.duplicates_dropped == duplicates
    events = _assert_every_trade_once(kafka_bootstrap, topics["prices"])
    rest_ids = sorted(e.sequence_id for e in events if e.source == "rest")
    assert rest_ids == TRADE_IDS[5000:resume_at]
    gaps = _gap_records(kafka_bootstrap, topics["gaps"])
    assert [(g["reason"], g["filled_count"]) for g in gaps] == (
        [("producer restart", 1000)] if filled else []
    )


def test_streams_split_across_connections(kafka_bootstrap: str, topics: dict[str, str]) -> None:
    # One stream per connection (Binance's limit is 1024): trade and miniTicker on two sockets.
    frames = list(FRAMES)
    tickers = []
    for index in range(99, len(PAYLOADS), 100):
        payload = PAYLOADS[index]
        tickers.append(payload["E"] // 1000)
        ticker = {"e": "24hrMiniTicker", "E": payload["E"], "s": "TRXUSDT", "c": payload["p"]}
        frames.append(json.dumps({"stream": "trxusdt@miniTicker", "data": ticker}).encode())
    settings = _settings(kafka_bootstrap, topics, producer_streams_per_connection=1)
    result = asyncio.run(
        asyncio.wait_for(run_replay(load_recording(frames), settings), timeout=120)
    )
    summary = result.summary
    assert summary.ok and summary.connections_opened == 2 and result.server.connections == 2
    events = [PriceEvent.from_json(v) for _, v in read_topic(kafka_bootstrap, topics["prices"])]
    assert sorted(e.sequence_id for e in events if e.stream == "trade") == TRADE_IDS
    assert sorted(e.sequence_id for e in events if e.stream == "miniTicker") == tickers
