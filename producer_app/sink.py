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
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
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


class FatalSinkError(SinkError):
    """librdkafka raised a fatal error (e.g. of the idempotent producer): the producer
    instance cannot produce again; the process must end and be restarted."""


#: Undelivered trade -> callback(symbol, sequence_id, price_time_us, reason) -> reopened?
UndeliveredTrade = Callable[[str, int, int, str], bool]
#: Acknowledged trade -> callback(symbol, stream, sequence_id, price_time_us)
AckedEvent = Callable[[str, str, int, int], None]
#: The resume topic: compacted, so it holds one record per (feed, symbol, stream) key.
RESUME_TOPIC_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
_RESEND_MAX = 100_000  # gap records and dead letters kept for a resend after an outage


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
        "message.timeout.ms": int(settings.producer_delivery_timeout_s * 1000),
        "message.max.bytes": _MESSAGE_MAX_BYTES,
        **dict(settings.producer_kafka_options),
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
        self.topic_resume = settings.kafka_topic_resume
        config = kafka_config(settings)
        config.update(extra_config or {})
        config["on_delivery"] = self._on_delivery
        config["error_cb"] = self._on_error
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
        # Outage handling (docs/producer.md, "Broker outages"): an undelivered trade goes back
        # to the tracker as a gap (REST fills it), an undelivered gap record or dead letter is
        # queued for a resend; only what neither can hold is counted as lost.
        self.on_undelivered_trade: UndeliveredTrade | None = None
        self.on_acked_event: AckedEvent | None = None
        self.reopened = 0
        self.lost = 0
        self._resend: deque[tuple[str, bytes, str | None]] = deque()
        self.fatal_error: KafkaError | None = None
        self._failed_since_ack = False

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
        if self.topic_resume not in metadata.topics:
            # The producer's own state: created whatever PRODUCER_CREATE_TOPICS says.
            self._create_topics(admin, [self.topic_resume], compacted=True)

    def _create_topics(
        self, admin: AdminClient, topics: Iterable[str], compacted: bool = False
    ) -> None:
        if compacted:  # one record per key survives: the resume points
            new = [
                NewTopic(t, num_partitions=1, replication_factor=1, config=RESUME_TOPIC_CONFIG)
                for t in topics
            ]
        else:
            partitions = self._settings.kafka_topic_partitions
            new = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
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
            try:
                self._producer.produce(self.topic_prices, value, symbol)
            except BufferError:
                self._wait_for_room()
                self._producer.produce(self.topic_prices, value, symbol)
        except KafkaException as err:
            self.refused(value, err)
            return
        self.produced_events += 1

    def refused(self, value: bytes, err: KafkaException) -> None:
        """produce() raised (fatal state, or the message was refused before queuing)."""
        self._raise_if_fatal(err)
        self.failed += 1
        self.failed_by_topic[self.topic_prices] = self.failed_by_topic.get(self.topic_prices, 0) + 1
        self._undelivered_event(value, str(err))

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

    def produce_resume_point(self, key: str, value: bytes) -> None:
        self._produce_other(self.topic_resume, value, key)

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
            self._raise_if_fatal(err)
            self.failed += 1
            self.failed_by_topic[topic] = self.failed_by_topic.get(topic, 0) + 1
            log.error("cannot produce to %s (key %s, %s bytes): %s", topic, key, len(value), err)

    def _wait_for_room(self) -> None:
        # The local queue is full (the broker is slow or away): serve delivery reports until
        # librdkafka has room. This blocks the feed (back-pressure) for at most the delivery
        # timeout, after which the queued messages fail and their trades become gaps; a
        # connection dropped meanwhile (no pongs) reconnects and its window is filled.
        while len(self._producer) >= self._settings.producer_queue_max_messages:
            if self.fatal_error is not None:
                raise FatalSinkError(f"fatal Kafka producer error: {self.fatal_error.str()}")
            self.poll(0.05)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports. A fatal error, which librdkafka raises from poll() once
        (not through the error callback), is kept in ``fatal_error``: the app then stops."""
        try:
            return int(self._producer.poll(timeout_s))
        except KafkaException as err:
            self._keep_if_fatal(err)
            return 0

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait for every queued message's delivery report; returns how many remain."""
        try:
            remaining = self._producer.flush(
                self._settings.producer_flush_timeout_s if timeout_s is None else timeout_s
            )
        except KafkaException as err:
            self._keep_if_fatal(err)
            remaining = len(self._producer)
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
            self._failed_since_ack = False
            if topic == self.topic_prices:
                self.events_acked += 1
                self._acks_seen += 1
                if self._acks_seen % _LATENCY_SAMPLE_EVERY == 0:
                    latency = msg.latency()
                    if latency is not None:
                        self._latency_samples.append(latency)
                if self.on_acked_event is not None:
                    self._acked_event(msg.value())
            else:
                self.other_acked += 1
            return
        self.failed += 1
        self._failed_since_ack = True
        self.failed_by_topic[topic] = self.failed_by_topic.get(topic, 0) + 1
        if err.fatal() or err.code() == KafkaError._FATAL:
            self._set_fatal(err)
        value = msg.value() or b""
        if topic == self.topic_prices:
            self._undelivered_event(value, err.str())
        elif len(self._resend) < _RESEND_MAX:
            key = msg.key()
            self._resend.append((topic, value, key.decode() if key is not None else None))
        else:
            self.lost += 1
            log.error(
                "delivery to %s failed and the resend queue is full (key %s): %s",
                topic,
                msg.key(),
                err,
            )

    def _acked_event(self, value: bytes | None) -> None:
        try:
            event = orjson.loads(value or b"")
            price_time = event["trade_time_us"] or event["event_time_us"]
            assert self.on_acked_event is not None  # noqa: S101 - checked by the caller
            self.on_acked_event(
                event["symbol"], event["stream"], int(event["sequence_id"]), int(price_time)
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.error("acknowledged record is not a PriceEvent: %.200r", value)

    def _undelivered_event(self, value: bytes, error: str) -> None:
        """A PriceEvent that did not reach the broker: its trade id becomes a gap again."""
        try:
            event = orjson.loads(value)
            symbol, stream = str(event["symbol"]), str(event["stream"])
            sequence_id = int(event["sequence_id"])
            price_time = int(event["trade_time_us"] or event["event_time_us"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.lost += 1
            log.error("undelivered record is not a PriceEvent (%s): %.200r", error, value)
            return
        reopen = self.on_undelivered_trade
        if stream == "trade" and reopen is not None:
            if reopen(symbol, sequence_id, price_time, f"kafka delivery failed: {error}"):
                self.reopened += 1
                if self.reopened == 1 or self.reopened % 10_000 == 0:
                    log.error(
                        "delivery failed (%s): %s trade(s) so far reopened as gaps for REST",
                        error,
                        self.reopened,
                    )
                return
        self.lost += 1  # a mini-ticker (no REST history) or a trade the tracker cannot take
        log.error("delivery of %s %s %s failed for good: %s", symbol, stream, sequence_id, error)

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback: client-level errors (all brokers down, fatal, ...)."""
        if err.fatal():
            self._set_fatal(err)
        else:
            log.warning("Kafka client: %s", err.str())

    def _keep_if_fatal(self, err: KafkaException) -> None:
        """Record a fatal error raised by poll()/flush(); anything else (an exception raised
        in one of our callbacks) is re-raised."""
        error = err.args[0] if err.args and isinstance(err.args[0], KafkaError) else None
        if error is None or not (error.fatal() or error.code() == KafkaError._FATAL):
            raise err
        self._set_fatal(error)

    def _raise_if_fatal(self, err: KafkaException) -> None:
        """produce() refused a message: in the fatal state librdkafka answers ``_FATAL``
        (a KafkaError whose fatal() is False); the first fatal error is the one to report."""
        error = err.args[0] if err.args and isinstance(err.args[0], KafkaError) else None
        if error is not None and (error.fatal() or error.code() == KafkaError._FATAL):
            self._set_fatal(error)
            assert self.fatal_error is not None  # noqa: S101 - set just above
            raise FatalSinkError(f"fatal Kafka producer error: {self.fatal_error.str()}") from err

    def _set_fatal(self, err: KafkaError) -> None:
        # librdkafka's generic _FATAL (what produce() and delivery reports say once fatal)
        # gives way to the underlying error (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER) when it comes.
        generic = self.fatal_error is not None and self.fatal_error.code() == KafkaError._FATAL
        if self.fatal_error is None or (generic and err.code() != KafkaError._FATAL):
            self.fatal_error = err
            log.critical("fatal Kafka producer error: %s (%s)", err.str(), err.name())

    @property
    def outage_suspected(self) -> bool:
        """The last delivery report was a failure: probe the broker before producing more."""
        return self._failed_since_ack

    def broker_answers(self, timeout_s: float = 5.0) -> bool:
        """A metadata round trip to the broker (blocking; run it in a thread)."""
        try:
            self._producer.list_topics(self.topic_prices, timeout=timeout_s)
        except KafkaException:
            return False
        return True

    def resend_failed(self) -> int:
        """Produce again the gap records and dead letters whose delivery failed."""
        count = 0
        while self._resend:
            topic, value, key = self._resend.popleft()
            self._produce_other(topic, value, key)
            count += 1
        return count

    @property
    def resend_pending(self) -> int:
        return len(self._resend)

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
