"""What to do about a failure: the consumer's retry and restart decisions, as pure functions.

Where the inputs come from: sink.py hands over the PostgreSQL errors it meets, job.py the
failure text of a streaming query that stopped. Where the answers go: back to them, which
retry (the same transaction again, on the same or a new connection), recreate partitions,
restart the query from its checkpoint, or give up. Nothing here opens a connection or
sleeps, so the rules can move with the write path (issue 11's executor-side writes) and are
tested without services (tests/unit/test_consumer_retries.py).

Why retrying is safe: every action the sink retries is one transaction guarded by the
ledger (a batch committed before is skipped), and a restarted query resumes from its
checkpoint, re-running the uncommitted batch with the same id and offsets.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import psycopg


class DatabaseAction(enum.Enum):
    """What the sink does after a PostgreSQL error."""

    RETRY = "retry"  # roll back, wait, run the same transaction again on the same connection
    RECONNECT = "reconnect"  # the connection is gone: open a new one, then run it again
    RECREATE_PARTITIONS = "recreate_partitions"  # a day partition vanished under the batch
    RAISE = "raise"  # retrying cannot help (a privilege, a schema, a bug): stop and say so


# SQLSTATEs a later attempt can get past: another session's lock or transaction was in the
# way, or an operator / a timeout cancelled the statement
# (https://www.postgresql.org/docs/15/errcodes-appendix.html).
TRANSIENT_SQLSTATES: dict[str, str] = {
    "40001": "serialization failure",
    "40P01": "deadlock",
    "55P03": "lock not available (lock_timeout)",
    "57014": "statement cancelled (pg_cancel_backend or statement_timeout)",
    "53000": "insufficient resources",
    "53100": "disk full",
    "53200": "out of memory",
    "53300": "too many connections",
    "57P01": "server shutting down",
    "57P02": "server crashed",
    "57P03": "server starting up",
    "58000": "system error",
    "58030": "I/O error",
}
# PostgreSQL's message when a row's partition key matches no partition (SQLSTATE 23514,
# which a CHECK constraint also raises: the message tells them apart).
_NO_PARTITION = re.compile(r"no partition of relation .* found for row")


def is_missing_partition(err: BaseException) -> bool:
    """True for "no partition of relation ... found for row" (the day was dropped)."""
    return (
        isinstance(err, psycopg.errors.CheckViolation)
        and _NO_PARTITION.search(str(err)) is not None
    )


def database_action(err: BaseException, *, connection_broken: bool) -> DatabaseAction:
    """The sink's answer to `err`, raised while running an action on a connection.

    `connection_broken`: the connection is closed or psycopg marked it broken.
    """
    if connection_broken:
        return DatabaseAction.RECONNECT
    if is_missing_partition(err):
        return DatabaseAction.RECREATE_PARTITIONS
    sqlstate = getattr(err, "sqlstate", None)
    if sqlstate in TRANSIENT_SQLSTATES or (sqlstate or "").startswith("08"):
        return DatabaseAction.RETRY
    return DatabaseAction.RAISE


def describe_database_error(err: BaseException) -> str:
    """A one-line label for logs and the retry metric: the SQLSTATE's meaning, or the type."""
    sqlstate = getattr(err, "sqlstate", None)
    if sqlstate in TRANSIENT_SQLSTATES:
        return TRANSIENT_SQLSTATES[sqlstate]
    if (sqlstate or "").startswith("08") or isinstance(err, psycopg.OperationalError):
        return "connection lost"
    return type(err).__name__


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays: first, first * factor, ... capped at `cap` seconds."""

    first: float = 0.2
    factor: float = 2.0
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` + 1 (attempt 0 = the first retry)."""
        return min(self.cap, self.first * self.factor ** min(attempt, 64))


class QueryFailure(enum.Enum):
    """How job.py treats a streaming query that stopped with an exception."""

    TRANSIENT = "transient"  # a service was away (Kafka, PostgreSQL, Redis): restart, forever
    UNKNOWN = "unknown"  # restart a few times, then stop the process (the supervisor's turn)
    FATAL = "fatal"  # restarting repeats it (lost data, missing connector): stop now


# Markers in a query's failure text (the JVM exception and, for foreachBatch, the Python
# traceback). Kafka client errors under org.apache.kafka.common.errors are retriable network
# and metadata conditions: a broker that is down, hung or electing a leader.
_TRANSIENT_MARKERS = (
    "org.apache.kafka.common.errors.",
    "TimeoutException",
    "consumer_app.errors.ServiceUnavailableError",
    "consumer_app.errors.TransientError",
    "Cannot fetch record for offset",
    "Failed to construct kafka consumer",
)
# failOnDataLoss=true stops the query on purpose when Kafka deleted offsets it never read:
# restarting would only stop again (docs/consumer.md, CONSUMER_FAIL_ON_DATA_LOSS).
_FATAL_MARKERS = (
    "some data may have been lost",
    "kafka_data_loss",
    "failed to find data source: kafka",
)


def classify_query_failure(text: str) -> QueryFailure:
    """Sort a streaming query's failure text into the three kinds above."""
    lowered = text.lower()
    if any(marker in lowered for marker in _FATAL_MARKERS):
        return QueryFailure.FATAL
    if any(marker in text for marker in _TRANSIENT_MARKERS):
        return QueryFailure.TRANSIENT
    return QueryFailure.UNKNOWN


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """restart=False: stop the process; else wait `delay_s` and start the query again."""

    restart: bool
    delay_s: float
    kind: QueryFailure


def restart_decision(
    kind: QueryFailure, failures_since_progress: int, *, limit: int, max_delay_s: float
) -> RestartDecision:
    """Restart a failed query with a growing delay, unless it cannot help.

    `failures_since_progress` counts this failure too (1 = the first since a batch last
    committed). Transient failures are restarted however long the outage lasts; unknown ones
    `limit` times in a row, after which the process exits non-zero for its supervisor.
    """
    delay = Backoff(first=1.0, factor=2.0, cap=max_delay_s).delay(failures_since_progress - 1)
    if kind is QueryFailure.FATAL:
        return RestartDecision(False, 0.0, kind)
    if kind is QueryFailure.UNKNOWN and failures_since_progress > limit:
        return RestartDecision(False, 0.0, kind)
    return RestartDecision(True, delay, kind)
