"""Prometheus metrics and the status file of the consumer.

Where the data comes from: job.py reports each committed micro-batch (duration, rows,
per-row event-to-commit latencies) and the consumer lag it reads from Spark's query
progress. Where it goes: an HTTP endpoint on CONSUMER_METRICS_PORT (Prometheus text
format) and a JSON status file (settings.status_path) that `make status` prints.

Event-to-commit latency = the wall-clock time right after the batch's PostgreSQL
COMMIT minus the event's received_at_us (when the producer received the frame from
the exchange). It therefore covers producer -> Kafka -> Spark -> Postgres.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_RING_SIZE = 2_000_000


class BulkHistogram(Collector):
    """A histogram fed a whole numpy array at once.

    A per-row observe() costs ~1 µs: 0.2 s per 200k-row batch, on the single driver thread.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = np.array(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last = +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        # recent raw values for exact p50/p99 in the status file
        self._ring = np.zeros(_RING_SIZE, dtype=np.float64)
        self._ring_len = 0
        self._ring_pos = 0

    def observe_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        indices = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(indices, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())
            tail = values[-_RING_SIZE:]
            end = self._ring_pos + tail.size
            if end <= _RING_SIZE:
                self._ring[self._ring_pos : end] = tail
            else:
                first = _RING_SIZE - self._ring_pos
                self._ring[self._ring_pos :] = tail[:first]
                self._ring[: end - _RING_SIZE] = tail[first:]
            self._ring_pos = end % _RING_SIZE
            self._ring_len = min(self._ring_len + tail.size, _RING_SIZE)

    def quantiles(self, qs: tuple[float, ...]) -> list[float | None]:
        with self._lock:
            if self._ring_len == 0:
                return [None for _ in qs]
            recent = self._ring[: self._ring_len]
            return [float(v) for v in np.quantile(recent, qs)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            buckets = [
                (str(b), float(c)) for b, c in zip(self._bounds, cumulative[:-1], strict=True)
            ]
            buckets.append(("+Inf", float(cumulative[-1])))
            total = self._sum
        family = HistogramMetricFamily(self._name, self._documentation)
        family.add_metric([], buckets, total)
        yield family


class ConsumerMetrics:
    """All consumer metrics in one registry of its own (tests may run several jobs)."""

    def __init__(self, status_path: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.status_path = status_path
        self.batch_duration = Histogram(
            "consumer_batch_duration_seconds",
            "Wall time of one micro-batch in foreachBatch (state, transform, COPY, Redis)",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "consumer_batch_rows",
            "Rows written per micro-batch",
            buckets=(0, 10, 100, 1_000, 10_000, 50_000, 100_000, 200_000, 500_000, 1_000_000),
            registry=self.registry,
        )
        self.rows_total = Counter(
            "consumer_rows", "Rows committed to staging.raw_prices", registry=self.registry
        )
        self.batches_total = Counter(
            "consumer_batches",
            "Micro-batches by outcome "
            "(written, merged = replayed rows, skipped = already committed)",
            ["outcome"],
            registry=self.registry,
        )
        self.gap_rows_total = Counter(
            "consumer_gap_rows",
            "Gap events upserted into staging.feed_gaps",
            registry=self.registry,
        )
        # issue 12: what the consumer refused, retried and restarted (docs/consumer.md)
        self.rejected_total = Counter(
            "consumer_rejected_records",
            "Kafka records stored in staging.rejected_records instead, by topic kind and reason",
            ["source", "reason"],
            registry=self.registry,
        )
        self.database_retries_total = Counter(
            "consumer_database_retries",
            "PostgreSQL actions retried after a transient error, by kind (deadlock, ...)",
            ["reason"],
            registry=self.registry,
        )
        self.query_restarts_total = Counter(
            "consumer_query_restarts",
            "Streaming queries restarted after a failure, by query and failure kind",
            ["query", "kind"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "consumer_lag_offsets",
            "Kafka end offsets minus offsets processed, summed over partitions of the prices topic",
            registry=self.registry,
        )
        self.last_batch_id = Gauge(
            "consumer_last_batch_id", "Last committed batch id", registry=self.registry
        )
        self.last_commit = Gauge(
            "consumer_last_commit_timestamp_seconds",
            "Unix time of the last commit",
            registry=self.registry,
        )
        self.latency = BulkHistogram(
            "consumer_event_to_commit_latency_seconds",
            "Commit time minus the event's received_at (producer receive time), per row",
            LATENCY_BUCKETS,
        )
        self.registry.register(self.latency)
        self._status: dict[str, Any] = {"state": "starting", "pid": os.getpid()}

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Start the HTTP endpoint on host:port (port 0 = don't)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)

    def record_batch(
        self,
        *,
        batch_id: int,
        outcome: str,
        rows: int,
        duration_s: float,
        received_at_us: np.ndarray,
        committed_at: float,
    ) -> None:
        self.batches_total.labels(outcome=outcome).inc()
        self.batch_duration.observe(duration_s)
        if outcome != "skipped":
            self.batch_rows.observe(rows)
            self.rows_total.inc(rows)
            if received_at_us.size:
                self.latency.observe_many(committed_at - received_at_us.astype(np.float64) / 1e6)
        self.last_batch_id.set(batch_id)
        self.last_commit.set(committed_at)
        self._status.update(
            state="running",
            last_batch_id=batch_id,
            last_batch_outcome=outcome,
            last_batch_rows=rows,
            last_batch_duration_s=round(duration_s, 3),
            last_commit_at=committed_at,
            rows_total=int(self.rows_total._value.get()),  # noqa: SLF001 - the counter's own value
        )
        self.write_status()

    def record_rejected(self, source: str, reasons: dict[str, int]) -> None:
        """Count dead letters newly stored (source: prices or gaps)."""
        for reason, count in reasons.items():
            self.rejected_total.labels(source=source, reason=reason).inc(count)
        if reasons:
            self._status["rejected_total"] = self._status.get("rejected_total", 0) + sum(
                reasons.values()
            )

    def record_restart(self, query: str, kind: str, failure: str) -> None:
        self.query_restarts_total.labels(query=query, kind=kind).inc()
        self._status["query_restarts"] = self._status.get("query_restarts", 0) + 1
        self._status["last_query_failure"] = failure[:500]
        self.write_status()

    def set_lag(self, lag: int | None) -> None:
        if lag is not None:
            self.lag.set(lag)
            self._status["lag_offsets"] = lag

    def set_state(self, state: str, **extra: Any) -> None:
        self._status.update(state=state, **extra)
        self.write_status()

    def status(self) -> dict[str, Any]:
        p50, p99 = self.latency.quantiles((0.5, 0.99))
        return self._status | {
            "latency_p50_s": p50,
            "latency_p99_s": p99,
            "updated_at": time.time(),
        }

    def write_status(self) -> None:
        """Atomically replace the status file with one JSON object."""
        if not self.status_path:
            return
        directory = os.path.dirname(os.path.abspath(self.status_path))
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as handle:
            json.dump(self.status(), handle)
            handle.write("\n")
        os.replace(handle.name, self.status_path)
