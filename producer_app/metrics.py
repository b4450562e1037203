"""Prometheus metrics of the producer, served on PRODUCER_METRICS_PORT.

Data comes from the pipeline, the Kafka delivery callback, the WebSocket client and the
gap filler; it goes to a Prometheus scrape (``GET /metrics``). Each ``ProducerMetrics``
owns its registry, so tests can run several producers in one process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Produce latency = produce() call -> broker acknowledgement (delivery callback).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ProducerMetrics:
    """All producer metrics in one registry."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.frames_received = Counter(
            "producer_frames_received", "WebSocket data frames received", registry=r
        )
        self.events_produced = Counter(
            "producer_events_produced",
            "PriceEvents acknowledged by the Kafka broker (prices topic, live and REST-filled)",
            registry=r,
        )
        self.duplicates_dropped = Counter(
            "producer_duplicates_dropped",
            "Events dropped because their (symbol, stream, sequence_id) was already produced",
            ["stream"],
            registry=r,
        )
        self.delivery_failures = Counter(
            "producer_delivery_failures",
            "Kafka deliveries that failed, by topic",
            ["topic"],
            registry=r,
        )
        self.dead_letters = Counter(
            "producer_dead_letters",
            "Frames sent to the dead-letter topic, by reason code",
            ["reason"],
            registry=r,
        )
        self.control_messages = Counter(
            "producer_control_messages",
            "Protocol messages (serverShutdown, replies)",
            ["kind"],
            registry=r,
        )
        self.reconnects = Counter(
            "producer_reconnects", "WebSocket connections replaced, by cause", ["cause"], registry=r
        )
        self.connect_attempts = Counter(
            "producer_connect_attempts", "WebSocket connection attempts", registry=r
        )
        self.open_connections = Gauge(
            "producer_open_connections", "WebSocket connections currently open", registry=r
        )
        self.gaps_detected = Counter(
            "producer_gaps_detected", "Runs of missing trade ids detected", ["symbol"], registry=r
        )
        self.gap_trades_filled = Counter(
            "producer_gap_trades_filled",
            "Missing trades filled from the REST API",
            ["symbol"],
            registry=r,
        )
        self.gap_trades_unfilled = Counter(
            "producer_gap_trades_unfilled",
            "Missing trades the REST API could not fill",
            ["symbol"],
            registry=r,
        )
        self.gap_fill_failures = Counter(
            "producer_gap_fill_failures",
            "REST gap fills that failed (the range stays pending and is retried with backoff)",
            ["symbol"],
            registry=r,
        )
        self.gap_ranges_pending = Gauge(
            "producer_gap_ranges_pending",
            "Missing trade-id ranges waiting for a REST fill (incl. failed ones being retried)",
            registry=r,
        )
        self.trades_reopened = Counter(
            "producer_trades_reopened",
            "Trades whose Kafka delivery failed, reopened as gaps for a REST fill",
            registry=r,
        )
        self.events_lost = Counter(
            "producer_events_lost",
            "Records that could neither be delivered nor reopened/resent (should stay 0)",
            registry=r,
        )
        self.resume_points_written = Counter(
            "producer_resume_points_written",
            "Resume points written to the compacted resume topic",
            registry=r,
        )
        # Feed-silence alert (prometheus/alerts.yml): one series per subscribed (symbol, stream)
        # from the start, so a symbol that never delivers is caught as well as one that stops.
        self.last_event_received = Gauge(
            "producer_last_event_received_timestamp_seconds",
            "Unix time the newest event of the (symbol, stream) was accepted, or the start time",
            ["symbol", "stream"],
            registry=r,
        )
        self.produce_latency = Histogram(
            "producer_produce_latency_seconds",
            "produce() call to broker acknowledgement",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Start the /metrics HTTP endpoint in a daemon thread (port 0: metrics not served)."""
        if port == 0:
            log.info("metrics endpoint disabled (port 0)")
            return
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%s/metrics", host, port)
