"""Unit tests of consumer_app.retries: which failures are retried, restarted, or final.

Errors are real psycopg exception classes (the SQLSTATEs of PostgreSQL's errcodes table), the
query failure texts are the first lines Spark printed in the drills (docs/reliability.md).
"""

from __future__ import annotations

import psycopg
import pytest

from consumer_app.retries import (
    Backoff,
    DatabaseAction,
    QueryFailure,
    classify_query_failure,
    database_action,
    describe_database_error,
    is_missing_partition,
    restart_decision,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("error", "label"),
    [
        (psycopg.errors.DeadlockDetected("deadlock detected"), "deadlock"),
        (psycopg.errors.SerializationFailure("could not serialize"), "serialization failure"),
        (
            psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
            "lock not available (lock_timeout)",
        ),
        (
            psycopg.errors.QueryCanceled("canceling statement due to user request"),
            "statement cancelled (pg_cancel_backend or statement_timeout)",
        ),
        (psycopg.errors.AdminShutdown("terminating connection"), "server shutting down"),
        (psycopg.errors.TooManyConnections("too many clients"), "too many connections"),
    ],
)
def test_transient_errors_on_a_working_connection_are_retried(
    error: psycopg.Error, label: str
) -> None:
    assert database_action(error, connection_broken=False) is DatabaseAction.RETRY
    assert describe_database_error(error) == label


def test_a_broken_connection_is_reopened_whatever_the_error() -> None:
    for error in (psycopg.OperationalError("server closed"), psycopg.errors.SyntaxError("x")):
        assert database_action(error, connection_broken=True) is DatabaseAction.RECONNECT


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.InsufficientPrivilege("permission denied for table raw_prices"),
        psycopg.errors.UndefinedTable('relation "staging.raw_prices" does not exist'),
        psycopg.errors.NumericValueOutOfRange("integer out of range"),
        psycopg.errors.CheckViolation('violates check constraint "raw_prices_price_check"'),
    ],
)
def test_errors_retrying_cannot_fix_are_raised(error: psycopg.Error) -> None:
    assert database_action(error, connection_broken=False) is DatabaseAction.RAISE


def test_a_vanished_partition_is_told_apart_from_a_check_constraint() -> None:
    missing = psycopg.errors.CheckViolation(
        'no partition of relation "raw_prices" found for row\nDETAIL:  Partition key of the'
        " failing row contains (event_time) = (2025-03-05 00:00:01.271497+00)."
    )
    assert is_missing_partition(missing)
    assert database_action(missing, connection_broken=False) is DatabaseAction.RECREATE_PARTITIONS
    check = psycopg.errors.CheckViolation('violates check constraint "raw_prices_stream_check"')
    assert not is_missing_partition(check)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first=0.2, factor=2.0, cap=5.0)
    assert [backoff.delay(a) for a in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff.delay(10_000) == 5.0  # no overflow after a day of retries


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        # the drills' failures (Spark 4.2, Kafka 4.1 client)
        (
            "[STREAM_FAILED] Query [id = 35a1, runId = 2afd] terminated with exception: "
            "org.apache.kafka.common.errors.TimeoutException: Timed out waiting for a node"
            " assignment. Call: listNodes",
            QueryFailure.TRANSIENT,
        ),
        (
            "Job aborted due to stage failure: Task 0 in stage 3.0 failed 1 times: "
            "org.apache.kafka.common.errors.TimeoutException: Timeout of 10000ms expired before"
            " the position for partition prices-5 could be determined",
            QueryFailure.TRANSIENT,
        ),
        (
            "[FOREACH_BATCH_USER_FUNCTION_ERROR] ... consumer_app.errors.ServiceUnavailableError:"
            " PostgreSQL is not reachable at 127.0.0.1:5432/crypto (connection refused)",
            QueryFailure.TRANSIENT,
        ),
        (
            "[FOREACH_BATCH_USER_FUNCTION_ERROR] ... consumer_app.errors.TransientError: "
            "PostgreSQL lock not available (lock_timeout) during batch 7 for 60s",
            QueryFailure.TRANSIENT,
        ),
        (
            "Partition prices-0's offset was changed from 120 to 0, some data may have been"
            " lost because they are not available in Kafka any more",
            QueryFailure.FATAL,
        ),
        (
            "[FOREACH_BATCH_USER_FUNCTION_ERROR] ... consumer_app.errors.SinkError: batch 3"
            " holds a value PostgreSQL rejects",
            QueryFailure.UNKNOWN,
        ),
    ],
)
def test_query_failures_are_sorted_by_what_a_restart_can_do(text: str, kind: QueryFailure) -> None:
    assert classify_query_failure(text) is kind


def test_transient_failures_restart_forever_with_a_capped_delay() -> None:
    delays = [
        restart_decision(QueryFailure.TRANSIENT, n, limit=5, max_delay_s=60).delay_s
        for n in (1, 2, 3, 7, 8, 500)
    ]
    assert delays == [1.0, 2.0, 4.0, 60.0, 60.0, 60.0]
    assert restart_decision(QueryFailure.TRANSIENT, 500, limit=5, max_delay_s=60).restart


def test_unknown_failures_stop_after_the_limit_and_fatal_ones_at_once() -> None:
    assert restart_decision(QueryFailure.UNKNOWN, 5, limit=5, max_delay_s=60).restart
    assert not restart_decision(QueryFailure.UNKNOWN, 6, limit=5, max_delay_s=60).restart
    assert not restart_decision(QueryFailure.FATAL, 1, limit=5, max_delay_s=60).restart
