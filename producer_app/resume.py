"""Resume after a restart: the last produced sequence id per (symbol, stream), read from Kafka.

Data comes from the tail of the prices topic (the last ``PRODUCER_RESUME_TAIL_MESSAGES`` of
each partition; key = symbol keeps a symbol in one partition); it goes to the
``SequenceTracker`` as its starting marks. With the marks seeded, the first live trade after
a restart reveals the trades that happened while the producer was down as a gap, which the
REST gap filler fills, and nothing already in Kafka is produced again.
"""

from __future__ import annotations

import logging
import time
import uuid

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from producer_app.config import ProducerSettings

log = logging.getLogger(__name__)


def last_positions(
    settings: ProducerSettings, timeout_s: float = 30.0
) -> dict[tuple[str, str], tuple[int, int]]:
    """(symbol, stream) -> (highest sequence id, its price time µs) in the topic's tail."""
    topic = settings.kafka_topic_prices
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"producer-resume-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    positions: dict[tuple[str, str], tuple[int, int]] = {}
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            return positions
        ends: dict[int, int] = {}
        assignment = []
        for partition in info.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            if high > low:
                start = max(low, high - settings.producer_resume_tail_messages)
                assignment.append(TopicPartition(topic, partition, start))
                ends[partition] = high
        if not assignment:
            return positions
        consumer.assign(assignment)
        done: dict[int, int] = {tp.partition: tp.offset for tp in assignment}
        deadline = time.monotonic() + timeout_s
        while any(done[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=0.5):
                partition, offset = message.partition(), message.offset()
                if message.error() or partition is None or offset is None:
                    continue
                done[partition] = offset + 1
                _remember(positions, message.value())
        if any(done[p] < ends[p] for p in ends):
            log.warning("resume: tail of %s not fully read in %.0f s", topic, timeout_s)
    except KafkaException as err:
        log.error("resume: cannot read %s: %s; starting without marks", topic, err)
    finally:
        consumer.close()
    return positions


def _remember(positions: dict[tuple[str, str], tuple[int, int]], value: bytes | None) -> None:
    if not value:
        return
    try:
        event = orjson.loads(value)
        key = (str(event["symbol"]), str(event["stream"]))
        sequence_id = int(event["sequence_id"])
        price_time = event["trade_time_us"] or event["event_time_us"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return  # not an event of the contract: not ours to resume from
    current = positions.get(key)
    if current is None or sequence_id > current[0]:
        positions[key] = (sequence_id, int(price_time))
