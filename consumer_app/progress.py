"""The consumer driver's progress record, for the Airflow DAG's completeness sensor (CONTRACT 3).

Where the data comes from: the prices query's last Spark progress report (batch id, report
time) and its Kafka lag, handed in by job.py's run loop every couple of seconds. Where it goes:
``CALL staging.record_consumer_progress(...)`` (init.sql), at most every
CONSUMER_PROGRESS_INTERVAL_S seconds, which upserts staging.consumer_progress and refreshes
staging.consumer_symbol_progress (each symbol's newest committed event time and when it last
moved) from analytics.latest_prices. The DAG reads both to decide that a day is complete:
"lag 0 in a fresh row, and the symbol idle" or "the symbol's newest event is past the day".

The record is advisory: a failed write is logged and retried at the next interval, never
raised into the streaming job (the sensor then sees a stale row and waits, naming its age).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Any, Protocol

import psycopg

log = logging.getLogger(__name__)


class _Query(Protocol):
    """What the recorder reads of a pyspark StreamingQuery."""

    @property
    def name(self) -> str | None: ...

    @property
    def id(self) -> Any: ...  # noqa: A003 - pyspark's name

    @property
    def lastProgress(self) -> dict[str, Any] | None: ...  # noqa: N802 - pyspark's name


def progress_time(progress: dict[str, Any] | None) -> datetime | None:
    """The `timestamp` of a Spark progress report ("2026-12-01T21:00:00.123Z"), as UTC."""
    stamp = (progress or {}).get("timestamp")
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        log.warning("unreadable Spark progress timestamp %r", stamp)
        return None


class ProgressRecorder:
    """Writes the progress record at most every `interval_s` seconds (0 = never)."""

    def __init__(
        self, conninfo: str, interval_s: float, kafka_bootstrap_servers: str | None = None
    ) -> None:
        self._conninfo = conninfo
        self._interval_s = interval_s
        self._bootstrap = kafka_bootstrap_servers
        self._kafka: Any = None
        self._conn: psycopg.Connection[Any] | None = None
        self._last_write = float("-inf")

    def _lag_from_watermarks(self, progress: dict[str, Any] | None) -> int | None:
        """Kafka's end offsets minus the offsets the last batch ended at.

        Spark's no-data progress reports (an idle, caught-up query) carry no latestOffset, so
        job.consumer_lag() cannot tell the lag then; Kafka's high watermarks can.
        """
        sources = (progress or {}).get("sources") or []
        end = sources[0].get("endOffset") if sources else None
        if isinstance(end, str):
            try:
                end = json.loads(end)
            except ValueError:
                return None
        if not isinstance(end, dict) or not self._bootstrap:
            return None
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        try:
            if self._kafka is None:
                self._kafka = Consumer(
                    {"bootstrap.servers": self._bootstrap, "group.id": "consumer_app.progress",
                     "enable.auto.commit": False}
                )  # fmt: skip
            lag = 0
            for topic, partitions in end.items():
                for partition, offset in partitions.items():
                    _, high = self._kafka.get_watermark_offsets(
                        TopicPartition(topic, int(partition)), timeout=5
                    )
                    lag += max(int(high) - int(offset), 0)
        except (KafkaException, ValueError, TypeError) as err:
            log.warning("consumer lag from Kafka watermarks unavailable: %s", err)
            return None
        return lag

    def record(self, query: _Query, kafka_lag: int | None) -> bool:
        """Write the record if it is due; True when a row was written."""
        if self._interval_s <= 0 or time.monotonic() - self._last_write < self._interval_s:
            return False
        self._last_write = time.monotonic()
        progress = query.lastProgress
        batch_id = (progress or {}).get("batchId")
        if kafka_lag is None:
            kafka_lag = self._lag_from_watermarks(progress)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            self._conn.execute(
                "call staging.record_consumer_progress(%s, %s, %s, %s, %s)",
                (
                    query.name or "consumer_prices",
                    str(query.id),
                    batch_id,
                    kafka_lag,
                    progress_time(progress),
                ),
            )
        except psycopg.Error as err:
            log.warning(
                "consumer progress not recorded (retried in %.0f s): %s", self._interval_s, err
            )
            self.close()
            return False
        return True

    def close(self) -> None:
        if self._kafka is not None:
            self._kafka.close()
            self._kafka = None
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:  # closing a broken connection: nothing left to save
                log.debug("closing the progress connection failed", exc_info=True)
            self._conn = None
