"""The consumer on a Spark standalone cluster (master + worker from the pyspark install).

The same recording and the same independently computed expectation as
test_consumer_pipeline.py (10,000 real TRXUSDT trades; previous price, change and percentage
computed in plain Python), but the driver runs with SPARK_MASTER=spark://127.0.0.1:PORT of the
session's `spark_cluster` (tests/spark_cluster.py), so the Kafka read, the parsing and the
window run in an executor on the worker, as they do in docker-compose.yaml. The second test
kills the worker (and with it the executor) with SIGKILL while batches are running, starts a
new worker, and checks that the table still ends exactly equal to the recording.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import test_consumer_pipeline as pipeline
from spark_cluster import SparkCluster
from test_consumer_pipeline import (
    ConsumerRun,
    Trade,
    assert_table_equals_recording,
    ledger_batches,
    wait_for,
)

pytestmark = pytest.mark.integration

# the pipeline tests' fixtures, shared: the recording and its topic-and-consumer factory
trades = pipeline.trades
setup = pipeline.setup


@pytest.fixture
def cluster_run(
    spark_cluster: SparkCluster, setup: Callable[..., ConsumerRun]
) -> Iterator[Callable[[int], ConsumerRun]]:
    """Factory: test_consumer_pipeline's topic-and-consumer setup, driver pointed at the cluster."""

    def make(max_offsets: int) -> ConsumerRun:
        run = setup(max_offsets=max_offsets)  # SPARK_JARS: the driver serves them to executors
        run.env |= spark_cluster.driver_env()
        return run

    yield make
    if spark_cluster.worker is None:  # a drill failed between kill and restart
        spark_cluster.start_worker()


def _app_ids(cluster: SparkCluster, name: str) -> set[str]:
    state = cluster.state()
    return {
        str(app["id"])
        for app in state.get("activeapps", []) + state.get("completedapps", [])
        if app.get("name") == name
    }


def test_recording_lands_exactly_once_on_the_cluster(
    spark_cluster: SparkCluster,
    cluster_run: Callable[[int], ConsumerRun],
    pg_dsn: str,
    trades: list[Trade],
) -> None:
    apps_before = _app_ids(spark_cluster, "consumer_app")
    run = cluster_run(2_000)  # 5 batches: 4 batch boundaries use the Redis state
    run.run_to_end()
    assert_table_equals_recording(pg_dsn, trades)
    assert ledger_batches(pg_dsn) == 5
    # it ran on the cluster: the master knows one more consumer_app, and the worker launched
    # an executor for it (the worker's work dir holds one directory per application)
    (app_id,) = _app_ids(spark_cluster, "consumer_app") - apps_before
    executors = list((spark_cluster.base / "work" / app_id).iterdir())
    assert executors, f"no executor of {app_id} ran on the worker"


def test_worker_killed_mid_batch_and_restarted(
    spark_cluster: SparkCluster,
    cluster_run: Callable[[int], ConsumerRun],
    pg_dsn: str,
    trades: list[Trade],
) -> None:
    run = cluster_run(500)  # 20 batches
    run.start()
    wait_for(lambda: ledger_batches(pg_dsn) >= 2, run)
    spark_cluster.kill_worker()
    killed_at = ledger_batches(pg_dsn)
    assert killed_at < 20, "the stream ended before the kill; use smaller batches"
    # without a worker the application has no executor: no batch can commit
    time.sleep(5)
    assert ledger_batches(pg_dsn) <= killed_at + 1  # at most the batch whose COPY was under way
    spark_cluster.start_worker()
    wait_for(lambda: ledger_batches(pg_dsn) >= 20, run)
    run.kill9()
    assert_table_equals_recording(pg_dsn, trades)
