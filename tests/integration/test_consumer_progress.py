"""consumer_app/progress.py writes the progress record the DAG's sensor reads (real PostgreSQL).

The Spark query is a stand-in object carrying what pyspark's StreamingQuery exposes (name, id,
lastProgress); the database, the procedure and analytics.latest_prices are real.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from test_warehouse_summary import Row, copy_rows, utc

from consumer_app.progress import ProgressRecorder, progress_time

pytestmark = pytest.mark.integration


@dataclass
class FakeQuery:
    name: str | None = "consumer_prices"
    id: str = "3f1c-query"  # noqa: A003 - pyspark's attribute name
    lastProgress: dict[str, Any] | None = field(  # noqa: N815 - pyspark's attribute name
        default_factory=lambda: {"batchId": 41, "timestamp": "2026-12-01T21:00:00.250Z"}
    )


def test_records_lag_batch_and_each_symbols_newest_event(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        copy_rows(conn, [Row("BTCUSDT", 7, utc(2020, 1, 1, 23, 59), Decimal("1"))])
        recorder = ProgressRecorder(pg_dsn, interval_s=3600)
        assert recorder.record(FakeQuery(), kafka_lag=12) is True
        assert recorder.record(FakeQuery(), kafka_lag=0) is False  # not due for an hour
        recorder.close()
        assert conn.execute(
            "select consumer, query_id, last_batch_id, kafka_lag, progress_at "
            "from staging.consumer_progress"
        ).fetchall() == [
            ("consumer_prices", "3f1c-query", 41, 12, datetime(2026, 12, 1, 21, 0, 0, 250000, UTC))
        ]
        assert conn.execute(
            "select symbol, stream, newest_event_time from staging.consumer_symbol_progress"
        ).fetchall() == [("BTCUSDT", "trade", utc(2020, 1, 1, 23, 59))]


def test_a_database_error_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    recorder = ProgressRecorder("host=127.0.0.1 port=1 connect_timeout=1", interval_s=1)
    assert recorder.record(FakeQuery(lastProgress=None), kafka_lag=None) is False
    assert "consumer progress not recorded" in caplog.text
    assert progress_time({"timestamp": "nonsense"}) is None
    assert progress_time(None) is None
