"""Resume after a restart: the last acknowledged sequence id per (feed, symbol, stream).

Data comes from the Kafka delivery callback (every PriceEvent the broker acknowledged); it
goes to the compacted topic ``KAFKA_TOPIC_RESUME`` (default ``binance.resume``, one
partition), one record per key ``<feed>|<SYMBOL>|<stream>``, written a few times a second
and at stop, never before the broker acknowledged the trade it points to. At start the
producer reads the whole topic back (compaction keeps it at one record per key, whatever the
traffic) and seeds the ``SequenceTracker`` with the marks of ITS feed: a quiet symbol keeps
its mark however busy its partition of the prices topic is, and a replay's ids (another
feed) never become the live feed's resume point.

Value: ``{"feed", "symbol", "stream", "sequence_id", "price_time_us", "written_at_us"}``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from producer_app.config import ProducerSettings

log = logging.getLogger(__name__)

Positions = dict[tuple[str, str], tuple[int, int]]
Floor = Callable[[str, str], "tuple[int, int] | None"]


def resume_key(feed: str, symbol: str, stream: str) -> str:
    return f"{feed}|{symbol}|{stream}"


class ResumePoints:
    """Acknowledged marks waiting to be written to the resume topic (loop thread only)."""

    def __init__(self, feed: str) -> None:
        self.feed = feed
        self._acked: Positions = {}
        self._dirty: set[tuple[str, str]] = set()

    def acked(self, symbol: str, stream: str, sequence_id: int, price_time_us: int) -> None:
        """Delivery callback: the broker acknowledged this event."""
        key = (symbol, stream)
        current = self._acked.get(key)
        if current is None or sequence_id > current[0]:
            self._acked[key] = (sequence_id, price_time_us)
            self._dirty.add(key)

    def take_records(self, floor: Floor | None = None) -> list[tuple[str, bytes]]:
        """(key, value) of every mark that moved since the last call.

        ``floor(symbol, stream)`` is the highest mark below which nothing is pending (ids the
        tracker still waits for: unfilled gaps, undelivered trades); the mark written never
        passes it, so a restart fills those ids again instead of skipping them.
        """
        now_us = time.time_ns() // 1000
        records = []
        for symbol, stream in sorted(self._dirty):
            sequence_id, price_time_us = self._acked[(symbol, stream)]
            below = floor(symbol, stream) if floor is not None else None
            if below is not None and below[0] < sequence_id:
                sequence_id, price_time_us = below
            value = orjson.dumps(
                {
                    "feed": self.feed,
                    "symbol": symbol,
                    "stream": stream,
                    "sequence_id": sequence_id,
                    "price_time_us": price_time_us,
                    "written_at_us": now_us,
                }
            )
            records.append((resume_key(self.feed, symbol, stream), value))
        self._dirty.clear()
        return records


def load_positions(settings: ProducerSettings, timeout_s: float = 30.0) -> Positions:
    """(symbol, stream) -> (sequence id, price time µs) of this feed, from the resume topic."""
    topic = settings.kafka_topic_resume
    feed = settings.feed_id
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"producer-resume-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    positions: Positions = {}
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
                assignment.append(TopicPartition(topic, partition, low))
                ends[partition] = high
        if not assignment:
            return positions
        consumer.assign(assignment)
        done = {tp.partition: tp.offset for tp in assignment}
        deadline = time.monotonic() + timeout_s
        while any(done[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=0.5):
                partition, offset = message.partition(), message.offset()
                if message.error() or partition is None or offset is None:
                    continue
                done[partition] = offset + 1
                _remember(positions, feed, message.value())
        if any(done[p] < ends[p] for p in ends):
            log.warning("resume: %s not fully read in %.0f s", topic, timeout_s)
    except KafkaException as err:
        log.error("resume: cannot read %s: %s; starting without marks", topic, err)
    finally:
        consumer.close()
    return positions


def _remember(positions: Positions, feed: str, value: bytes | None) -> None:
    if not value:
        return  # a tombstone
    try:
        record = orjson.loads(value)
        if record["feed"] != feed:
            return  # another feed's ids: never ours to resume from
        key = (str(record["symbol"]), str(record["stream"]))
        mark = (int(record["sequence_id"]), int(record["price_time_us"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        log.warning("resume: ignoring a record that is not a resume point: %.200r", value)
        return
    # Later records of a key supersede earlier ones (compaction keeps only the last).
    positions[key] = mark
