"""The producer's per-(symbol, stream) "last event received" gauge behind the feed-silence alert.

Data: the first frame of the bundled BTCUSDT recording (real Binance trade fields), handed
to the producer's frame handler; no broker is needed (the event only queues in librdkafka).
"""

from __future__ import annotations

import gc
import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer_app.app import Producer
from producer_app.config import load_settings
from producer_app.metrics import ProducerMetrics
from producer_app.sink import KafkaSink

pytestmark = pytest.mark.unit

RECORDING = Path(__file__).resolve().parents[2] / "recordings/btcusdt-trade-2020-01-01.jsonl.gz"
GAUGE = "producer_last_event_received_timestamp_seconds"


def _first_frame() -> bytes:
    with gzip.open(RECORDING, "rb") as frames:
        return frames.readline().strip()


def _gauge(producer: Producer, symbol: str) -> float | None:
    return producer.metrics.registry.get_sample_value(GAUGE, {"symbol": symbol, "stream": "trade"})


@pytest.fixture
def producer() -> Iterator[Producer]:
    """A producer whose Kafka is never reached: its queued event is purged, the client freed."""
    settings = load_settings(
        kafka_bootstrap_servers="127.0.0.1:1",
        binance_symbols="BTCUSDT,ETHUSDT",
        producer_metrics_port=0,
        producer_resume_from_kafka=False,
        producer_max_event_behind_s=0,  # the 2020 recording is history, not a live feed
    )
    metrics = ProducerMetrics()
    # log_level 0: librdkafka would log every refused connection to 127.0.0.1:1
    made = Producer(settings, metrics, KafkaSink(settings, metrics, {"log_level": 0}))
    yield made
    made.sink.raw_producer.purge()
    del made
    gc.collect()


def test_only_the_symbol_that_delivered_moves_and_silent_ones_keep_the_start_time(
    producer: Producer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([1000.0, 1060.0, 1120.0])
    monkeypatch.setattr("producer_app.app.time.time", lambda: next(clock))

    producer._sync_metrics()  # start: every subscribed pair gets a series
    assert _gauge(producer, "BTCUSDT") == 1000.0
    assert _gauge(producer, "ETHUSDT") == 1000.0

    producer.handle_frame(_first_frame())
    producer._sync_metrics()
    assert _gauge(producer, "BTCUSDT") == 1060.0
    assert _gauge(producer, "ETHUSDT") == 1000.0

    producer._sync_metrics()  # nothing new: no symbol moves
    assert _gauge(producer, "BTCUSDT") == 1060.0
    assert _gauge(producer, "ETHUSDT") == 1000.0
