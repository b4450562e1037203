"""KafkaSink on the real broker: huge dead letters fit, failures are counted, never raised."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from test_producer_faults import read_topic  # same directory (pytest prepend import mode)

from producer_app.app import Producer
from producer_app.config import load_settings

pytestmark = pytest.mark.integration


def test_oversized_frames_reach_the_dlq_within_kafka_limits(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topics = [make_topic(1), make_topic(1), make_topic(1)]
    settings = load_settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prices=topics[0],
        kafka_topic_dlq=topics[1],
        kafka_topic_gaps=topics[2],
        producer_metrics_port=0,
    )
    producer = Producer(settings)
    ascii_frame = b'{"stream":"btcusdt@trade","data":"' + b"x" * 3_000_000 + b'"}'
    escaped_frame = b'{"stream":"btcusdt@trade","data":"' + b"\x01" * 400_000 + b'"}'
    producer.handle_frame(ascii_frame)
    producer.handle_frame(escaped_frame)  # 400 kB that JSON-escapes to 2.4 MB
    assert producer.sink.flush(30) == 0
    assert producer.sink.failed == 0 and producer.dead_letters == {"oversized_frame": 2}
    records = [json.loads(value) for _, value in read_topic(kafka_bootstrap, topics[1])]
    assert len(records) == 2
    first, second = records
    assert first["reason"] == f"oversized_frame: oversized frame: {len(ascii_frame)} > 65536 bytes"
    assert first["raw"] == ascii_frame.decode()[: 2**20]  # cut at 1 MiB, as the contract says
    assert "raw cut to" in second["reason"]
    assert escaped_frame.decode().startswith(second["raw"]) and len(second["raw"]) > 100_000
