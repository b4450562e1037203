"""Fault drills of consumer_app (issue 12): a hung broker and transient database errors.

Each drill runs `python -m consumer_app` as a subprocess on the 10,000 real TRXUSDT trades of
tests/fixtures (helpers shared with test_consumer_pipeline.py), breaks something while the
consumer works, and ends with staging.raw_prices equal, row for row and by checksum, to the
table computed in plain Python from the recording. No manual step: the consumer must get
through on its own.

- broker frozen (SIGSTOP of a private broker, so only our pid) for longer than the Kafka
  source's API timeout while the topic is being filled;
- a lock on staging.raw_prices held past the database's lock_timeout, the consumer's COPY
  cancelled (pg_cancel_backend), and a deadlock the consumer loses;
- the day partition being written dropped under the consumer (the DAG's purge during a replay).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql
from test_consumer_pipeline import (
    RUN_TIMEOUT_S,
    ConsumerRun,
    Trade,
    assert_table_equals_recording,
    consumer_env,
    load_recording,
    produce,
    to_event,
    wait_for,
)

if TYPE_CHECKING:
    from conftest import PrivateKafka

pytestmark = pytest.mark.integration

US_PER_DAY = 86_400_000_000
# The broker stays frozen this long. With the API timeout below, the driver's offset request
# (Spark tries it 3 times, 1 s apart) gives up after ~33 s, so the query fails at least once
# during the outage and must be restarted. Today's code has no such setting: Kafka's 60 s
# apply and it survives ~3 minutes of freeze before its query dies for good (seen with 240 s;
# docs/reliability.md).
KAFKA_API_TIMEOUT_MS = 10_000
FREEZE_S = 45.0


@pytest.fixture(scope="module")
def trades() -> list[Trade]:
    return load_recording()


def raw_count(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        row = conn.execute("select count(*) from staging.raw_prices").fetchone()
    return int(row[0]) if row else 0


def admin_to(admin_dsn: str, dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    """A superuser connection to the test database of `dsn` (autocommit)."""
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    conninfo = psycopg.conninfo.make_conninfo(admin_dsn, dbname=str(dbname))
    return psycopg.connect(conninfo, autocommit=True)


def consumer_backend(
    admin: psycopg.Connection[tuple[object, ...]], query_prefix: str
) -> int | None:
    """Pid of the consumer's backend waiting for a lock in a statement starting so, if any."""
    row = admin.execute(
        "select pid from pg_stat_activity"
        " where datname = current_database() and application_name = 'consumer_app'"
        "   and state = 'active' and wait_event_type = 'Lock' and query ilike %s",
        (query_prefix + "%",),
    ).fetchone()
    return int(str(row[0])) if row else None


def wait_until(condition: Callable[[], bool], run: ConsumerRun, what: str) -> None:
    """wait_for with polling fast enough to catch a lock wait (and a clear failure message)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if condition():
            return
        if run.process is not None and run.process.poll() is not None:
            pytest.fail(
                f"consumer exited ({run.process.returncode}) while waiting for {what}; "
                f"log:\n{run.tail(60)}"
            )
        time.sleep(0.02)
    pytest.fail(f"{what}: not seen in {RUN_TIMEOUT_S}s; log:\n{run.tail(60)}")


@dataclass
class Drill:
    """A topic of our own and a consumer wired to it; the recording is produced in parts."""

    topic: str
    bootstrap: str
    run: ConsumerRun

    def produce(self, trades: list[Trade]) -> None:
        produce(self.bootstrap, self.topic, trades)


@pytest.fixture
def drill(
    pg_dsn: str,
    redis_url: str,
    redis_prefix: str,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    spark_jars: str,
    tmp_path: Path,
) -> Iterator[Drill]:
    topic = make_topic(6)
    env = consumer_env(
        dsn=pg_dsn,
        redis_url=redis_url,
        prefix=redis_prefix,
        bootstrap=kafka_bootstrap,
        topic=topic,
        jars=spark_jars,
        checkpoint=tmp_path / "checkpoint",
        max_offsets=2_000,
    )
    run = ConsumerRun(env, tmp_path / "consumer.log")
    try:
        yield Drill(topic, kafka_bootstrap, run)
    finally:
        run.stop()


# ----------------------------------------------------------------------------- the broker
class TopicFeeder(threading.Thread):
    """Produces the trades at a steady rate, as a live feed fills the topic."""

    def __init__(self, bootstrap: str, topic: str, trades: list[Trade], per_second: float) -> None:
        super().__init__(daemon=True)
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,  # retries across the freeze write nothing twice
                "linger.ms": 20,
                "message.timeout.ms": 600_000,  # this drill is about the consumer: deliver late
            }
        )
        self.topic = topic
        self.trades = trades
        self.interval = 1.0 / per_second
        self.undelivered: int | None = None

    def run(self) -> None:
        started = time.monotonic()
        for index, trade in enumerate(self.trades):
            pause = started + index * self.interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self.producer.produce(self.topic, key=trade.symbol.encode(), value=to_event(trade))
            self.producer.poll(0)
        self.undelivered = self.producer.flush(300)


def test_broker_frozen_longer_than_the_kafka_timeout_is_ridden_out(
    private_kafka: PrivateKafka,
    pg_dsn: str,
    redis_url: str,
    redis_prefix: str,
    spark_jars: str,
    trades: list[Trade],
    tmp_path: Path,
) -> None:
    admin = AdminClient({"bootstrap.servers": private_kafka.bootstrap})
    admin.create_topics([NewTopic("prices", num_partitions=6, replication_factor=1)])[
        "prices"
    ].result(30)
    env = consumer_env(
        dsn=pg_dsn,
        redis_url=redis_url,
        prefix=redis_prefix,
        bootstrap=private_kafka.bootstrap,
        topic="prices",
        jars=spark_jars,
        checkpoint=tmp_path / "checkpoint",
        max_offsets=2_000,
    ) | {"CONSUMER_KAFKA_API_TIMEOUT_MS": str(KAFKA_API_TIMEOUT_MS)}
    run = ConsumerRun(env, tmp_path / "consumer.log")
    feeder = TopicFeeder(private_kafka.bootstrap, "prices", trades, per_second=250)
    try:
        run.start()
        feeder.start()
        wait_for(lambda: raw_count(pg_dsn) >= 1_000, run)
        private_kafka.freeze()
        frozen_at = time.monotonic()
        try:
            # the outage itself: nothing to wait for but the clock; the consumer must stay up
            while time.monotonic() - frozen_at < FREEZE_S:
                if run.process is not None and run.process.poll() is not None:
                    pytest.fail(f"consumer exited during the freeze; log:\n{run.tail(60)}")
                time.sleep(0.5)
        finally:
            private_kafka.thaw()
        feeder.join(360)
        assert feeder.undelivered == 0, "the feeder could not deliver every trade"
        assert raw_count(pg_dsn) < len(trades), "the feed ended before the freeze mattered"
        wait_for(lambda: raw_count(pg_dsn) >= len(trades), run)
        run.kill9()
    finally:
        run.stop()
    assert_table_equals_recording(pg_dsn, trades)
    log = run.log_path.read_text(errors="replace")
    # the freeze outlasted the timeout: the query failed and was restarted in the process
    assert "restarting" in log and "query consumer_prices failed" in log, run.tail(60)


# ----------------------------------------------------------------------------- the database
def test_lock_timeout_cancel_and_deadlock_are_retried(
    drill: Drill, pg_dsn: str, pg_admin_dsn: str, trades: list[Trade]
) -> None:
    run = drill.run
    with admin_to(pg_admin_dsn, pg_dsn) as admin:
        # as a DBA would set it: every new session of this database gives up a lock after 3 s
        admin.execute(
            sql.SQL("alter database {} set lock_timeout = '3s'").format(
                sql.Identifier(str(admin.info.dbname))
            )
        )
        drill.produce(trades[:3_000])
        run.start()
        wait_for(lambda: raw_count(pg_dsn) >= 3_000, run)

        # 1. a lock held for longer than lock_timeout, and the waiting COPY cancelled
        with psycopg.connect(pg_dsn) as blocker:
            blocker.execute("lock table staging.raw_prices in access exclusive mode")
            drill.produce(trades[3_000:6_000])
            copy_pid: list[int] = []

            def copy_waits() -> bool:
                pid = consumer_backend(admin, "copy")
                copy_pid.extend([pid] if pid else [])
                return pid is not None

            wait_until(copy_waits, run, "the consumer's COPY waiting for the lock")
            cancelled = admin.execute("select pg_cancel_backend(%s)", (copy_pid[0],)).fetchone()
            assert cancelled == (True,)
            wait_until(
                lambda: "due to lock timeout" in run.log_path.read_text(errors="replace"),
                run,
                "a lock timeout",
            )
            blocker.rollback()
        wait_for(lambda: raw_count(pg_dsn) >= 6_000, run)

        # 2. a deadlock: we hold raw_prices and then ask for the ledger the consumer holds
        with admin_to(pg_admin_dsn, pg_dsn) as blocker:
            blocker.execute("set deadlock_timeout = '30s'")  # the consumer (1 s) is the victim
            with blocker.transaction():
                blocker.execute("lock table staging.raw_prices in access exclusive mode")
                drill.produce(trades[6_000:])
                wait_until(
                    lambda: consumer_backend(admin, "copy") is not None,
                    run,
                    "the consumer's COPY waiting behind our lock",
                )
                blocker.execute("lock table staging.consumer_batches in share mode")
        wait_for(lambda: raw_count(pg_dsn) >= len(trades), run)
    run.kill9()
    assert_table_equals_recording(pg_dsn, trades)
    log = run.log_path.read_text(errors="replace")
    assert "canceling statement due to user request" in log, run.tail(60)
    assert "deadlock detected" in log, run.tail(60)


def shifted_a_day(trade: Trade) -> Trade:
    return replace(
        trade,
        event_time_us=trade.event_time_us + US_PER_DAY,
        trade_time_us=trade.trade_time_us + US_PER_DAY,
        received_at_us=trade.received_at_us + US_PER_DAY,
    )


def test_day_partition_dropped_under_the_consumer_is_recreated(
    drill: Drill, pg_dsn: str, pg_admin_dsn: str, trades: list[Trade]
) -> None:
    # the recording's second half moves to the next UTC day (2025-03-05): a day of its own
    half = len(trades) // 2
    two_days = trades[:half] + [shifted_a_day(t) for t in trades[half:]]
    run = drill.run
    drill.produce(two_days[:half])
    run.start()
    wait_for(lambda: raw_count(pg_dsn) >= half, run)
    with admin_to(pg_admin_dsn, pg_dsn) as admin, psycopg.connect(pg_dsn) as blocker:
        # hold the consumer between "partition made" and "rows written": its ledger insert
        # waits for us (share mode lets its reads through)
        blocker.execute("lock table staging.consumer_batches in share mode")
        drill.produce(two_days[half:])

        def made_and_waiting() -> bool:
            made = admin.execute("select to_regclass('staging.raw_prices_p20250305')").fetchone()
            return bool(made and made[0]) and consumer_backend(admin, "insert") is not None

        wait_until(made_and_waiting, run, "the new day's partition and the ledger insert waiting")
        admin.execute("drop table staging.raw_prices_p20250305")  # what the DAG's purge runs
        blocker.rollback()
    wait_for(lambda: raw_count(pg_dsn) >= len(two_days), run)
    run.kill9()
    assert_table_equals_recording(pg_dsn, two_days)
    assert "recreating" in run.log_path.read_text(errors="replace"), run.tail(60)
