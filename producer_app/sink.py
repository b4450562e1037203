"""Kafka sink: produces events, dead letters and gap records with delivery accounting.

Data comes from the pipeline as serialized JSON (``producer_app.events``); it goes to the
three topics of docs/architecture.md through one confluent-kafka ``Producer`` configured
for exactly-once-per-session delivery (idempotence on, ``acks=all``), keyed by symbol so a
symbol's events stay in one partition and in order.

The delivery callback runs inside ``poll()``/``flush()`` on the caller's thread. It only
bumps plain integers (a Prometheus ``inc`` per message would cost ~10% of the frame budget);
``sync_metrics()`` moves the deltas into Prometheus a few times a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from producer_app.config import ProducerSettings
from producer_app.events import DLQ_RAW_MAX_CHARS, DeadLetterRecord, GapRecord
from producer_app.metrics import ProducerMetrics

log = logging.getLogger(__name__)

_LATENCY_SAMPLE_EVERY = 64  # observe one produce latency in 64 (histogram cost)
# A dead letter carries up to 1 MiB of frame text (the contract). The producer's
# message.max.bytes (uncompressed, client-side) is raised to _MESSAGE_MAX_BYTES so such a
# record fits; the broker's default max.message.bytes (1 MiB) applies to the *compressed*
# batch, which frame text (JSON) stays well below. Records are cut further to stay under
# _KAFKA_SAFE_BYTES when escapes or multi-byte characters inflate them.
_MESSAGE_MAX_BYTES = 1_200_000
_KAFKA_SAFE_BYTES = 1_150_000


class SinkError(RuntimeError):
    """Kafka cannot be reached or refused the producer's configuration."""


def kafka_config(settings: ProducerSettings) -> dict[str, Any]:
    """librdkafka settings for the price producer (documented in docs/producer.md)."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": "producer_app",
        "enable.idempotence": True,  # no duplicates or reordering on librdkafka retries
        "acks": "all",
        "compression.type": settings.producer_compression,
        "linger.ms": settings.producer_linger_ms,
        "batch.size": settings.producer_batch_bytes,
        "queue.buffering.max.messages": settings.producer_queue_max_messages,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 300_000,
        "message.max.bytes": _MESSAGE_MAX_BYTES,
    }


class KafkaSink:
    """One confluent-kafka producer for prices, dead letters and gaps."""

    def __init__(
        self,
        settings: ProducerSettings,
        metrics: ProducerMetrics,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self.topic_prices = settings.kafka_topic_prices
        self.topic_dlq = settings.kafka_topic_dlq
        self.topic_gaps = settings.kafka_topic_gaps
        config = kafka_config(settings)
        config.update(extra_config or {})
        config["on_delivery"] = self._on_delivery
        try:
            self._producer = Producer(config)
        except KafkaException as err:
            raise SinkError(f"Kafka producer configuration refused: {err}") from err
        # Plain counters written by the delivery callback; Prometheus gets deltas.
        self.events_acked = 0
        self.other_acked = 0
        self.failed = 0
        self.failed_by_topic: dict[str, int] = {}
        self.produced_events = 0
        self._synced_events = 0
        self._synced_failed: dict[str, int] = {}
        self._latency_samples: list[float] = []
        self._acks_seen = 0

    # -- setup -----------------------------------------------------------------------
    def check_broker(self, timeout_s: float = 10.0) -> None:
        """Fail fast with an actionable message when the broker is down; create topics."""
        admin = AdminClient({"bootstrap.servers": self._settings.kafka_bootstrap_servers})
        try:
            metadata = admin.list_topics(timeout=timeout_s)
        except KafkaException as err:
            raise SinkError(
                f"Kafka is not reachable at {self._settings.kafka_bootstrap_servers} ({err}); "
                "start the local services with `make services`"
            ) from err
        missing = [
            t
            for t in (self.topic_prices, self.topic_dlq, self.topic_gaps)
            if t not in metadata.topics
        ]
        if missing and self._settings.producer_create_topics:
            self._create_topics(admin, missing)
        elif missing:
            log.warning("topics %s do not exist and PRODUCER_CREATE_TOPICS is off", missing)

    def _create_topics(self, admin: AdminClient, topics: Iterable[str]) -> None:
        new = [
            NewTopic(t, num_partitions=self._settings.kafka_topic_partitions, replication_factor=1)
            for t in topics
        ]
        for topic, future in admin.create_topics(new).items():
            try:
                future.result(timeout=30)
                log.info("created topic %s", topic)
            except KafkaException as err:
                if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise SinkError(f"cannot create topic {topic}: {err}") from err

    @property
    def raw_producer(self) -> Producer:
        """The confluent-kafka producer, for the pipeline's hot path (prices topic only)."""
        return self._producer

    # -- produce -----------------------------------------------------------------------
    def produce_event(self, symbol: str, value: bytes) -> None:
        """Queue one PriceEvent (already serialized) keyed by its symbol."""
        try:
            self._producer.produce(self.topic_prices, value, symbol)
        except BufferError:
            self._wait_for_room()
            self._producer.produce(self.topic_prices, value, symbol)
        self.produced_events += 1

    def produce_dead_letter(
        self, reason: str, raw: str, symbol: str | None, received_at_us: int, source_url: str
    ) -> None:
        """Queue a dead letter; ``raw`` is cut at 1 MiB, and further if Kafka could not take it."""
        raw = raw[:DLQ_RAW_MAX_CHARS]
        value = DeadLetterRecord(reason, raw, received_at_us, source_url).to_json()
        while len(value) > _KAFKA_SAFE_BYTES:
            # Multi-byte characters and JSON escapes can make the record larger than the
            # 1 MiB of text; Kafka's default message limit is 1 MB: cut until it fits.
            raw = raw[: len(raw) * _KAFKA_SAFE_BYTES // len(value) - 64]
            note = f"{reason} [raw cut to {len(raw)} characters to fit Kafka's message size]"
            value = DeadLetterRecord(note, raw, received_at_us, source_url).to_json()
        self._produce_other(self.topic_dlq, value, symbol)

    def produce_gap(self, record: GapRecord) -> None:
        self._produce_other(self.topic_gaps, record.to_json(), record.symbol)

    def _produce_other(self, topic: str, value: bytes, key: str | None) -> None:
        try:
            try:
                self._producer.produce(topic, value, key)
            except BufferError:
                self._wait_for_room()
                self._producer.produce(topic, value, key)
        except KafkaException as err:
            # Refused before queuing (e.g. too large): count it like a failed delivery, never
            # let a dead letter or a gap record stop the feed.
            self.failed += 1
            self.failed_by_topic[topic] = self.failed_by_topic.get(topic, 0) + 1
            log.error("cannot produce to %s (key %s, %s bytes): %s", topic, key, len(value), err)

    def _wait_for_room(self) -> None:
        # The local queue is full: serve delivery reports until librdkafka has room.
        while len(self._producer) >= self._settings.producer_queue_max_messages:
            self._producer.poll(0.05)

    def poll(self, timeout_s: float = 0.0) -> int:
        return self._producer.poll(timeout_s)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait for every queued message's delivery report; returns how many remain."""
        remaining = self._producer.flush(
            self._settings.producer_flush_timeout_s if timeout_s is None else timeout_s
        )
        self.sync_metrics()
        if remaining:
            log.error("flush timed out with %s messages undelivered", remaining)
        return int(remaining)

    def __len__(self) -> int:
        return len(self._producer)

    # -- delivery accounting ---------------------------------------------------------------
    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        topic = msg.topic() or ""
        if err is None:
            if topic == self.topic_prices:
                self.events_acked += 1
                self._acks_seen += 1
                if self._acks_seen % _LATENCY_SAMPLE_EVERY == 0:
                    latency = msg.latency()
                    if latency is not None:
                        self._latency_samples.append(latency)
            else:
                self.other_acked += 1
            return
        self.failed += 1
        self.failed_by_topic[topic] = self.failed_by_topic.get(topic, 0) + 1
        log.error("delivery to %s failed (key %s): %s", topic, msg.key(), err)

    def sync_metrics(self) -> None:
        """Move callback counters into Prometheus (called a few times a second)."""
        delta = self.events_acked - self._synced_events
        if delta:
            self._metrics.events_produced.inc(delta)
            self._synced_events = self.events_acked
        for topic, count in self.failed_by_topic.items():
            done = self._synced_failed.get(topic, 0)
            if count > done:
                self._metrics.delivery_failures.labels(topic).inc(count - done)
                self._synced_failed[topic] = count
        if self._latency_samples:
            for latency in self._latency_samples:
                self._metrics.produce_latency.observe(latency)
            self._latency_samples.clear()


def wait_until_delivered(sink: KafkaSink, timeout_s: float) -> bool:
    """Poll until the sink's queue is empty (True) or the timeout passes (False)."""
    deadline = time.monotonic() + timeout_s
    while len(sink) and time.monotonic() < deadline:
        sink.poll(0.05)
    return len(sink) == 0
