"""The Spark Structured Streaming job: Kafka -> price changes -> PostgreSQL (+ Redis state).

Where the data comes from: the prices topic (KAFKA_TOPIC_PRICES) and the gaps topic
(KAFKA_TOPIC_GAPS), read from the earliest offset on first start and from the
checkpoint (SPARK_CHECKPOINT_DIR/prices, /gaps) afterwards. Where it goes:
staging.raw_prices + staging.consumer_batches (sink.py), staging.feed_gaps, Redis
(state.py), Prometheus and the status file (metrics.py).

Per micro-batch (PriceBatchWriter): read the ledger position -> load the last prices
(Redis, or PostgreSQL when Redis does not hold the committed state) -> transform ->
collect as Arrow on the driver -> one PostgreSQL transaction (ledger row + COPY) ->
move Redis forward. docs/consumer.md explains why this is exactly-once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.streaming import StreamingQuery

from consumer_app.config import ConsumerSettings
from consumer_app.errors import ConsumerError, ServiceUnavailableError
from consumer_app.metrics import ConsumerMetrics
from consumer_app.schema import GAP_SCHEMA
from consumer_app.sink import GAP_COLUMNS, PostgresSink
from consumer_app.state import PriceState, last_prices_from_postgres, watermark
from consumer_app.transform import LastPrice, transform_batch

log = logging.getLogger(__name__)


def build_spark(settings: ConsumerSettings) -> SparkSession:
    """A SparkSession for the job: UTC, few shuffle partitions, Arrow on, the Kafka jars."""
    # Executors must run this interpreter (the venv has pyarrow); Spark reads it from the env.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName("consumer_app")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(settings.consumer_shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", settings.consumer_driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.streaming.noDataProgressEventInterval", "5000")
        # transform.parse_events filters on fields of from_json(value); the optimizer pushes
        # that filter below the projection and, with this rule on, rewrites every field
        # reference into its own pruned from_json: the JSON was parsed ~10 times per record.
        # Off, the filter and the projection share one full schema (profiled on a 200k-event
        # batch: parse 3.7-6.1 s -> 2.2-3.4 s, whole transform + toArrow 8.6-10.6 s -> 4.7 s
        # under the same load; docs/benchmarks.md, consumer).
        .config("spark.sql.optimizer.enableJsonExpressionOptimization", "false")
    )
    if settings.spark_jars:
        builder = builder.config("spark.jars", settings.spark_jars)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def check_kafka(bootstrap_servers: str) -> set[str]:
    """Fail fast, naming Kafka, when no broker answers; return the topic names."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "socket.timeout.ms": 5000})
    try:
        metadata = admin.list_topics(timeout=10)
    except KafkaException as err:
        raise ServiceUnavailableError("Kafka", bootstrap_servers, str(err)) from err
    return set(metadata.topics)


def kafka_stream(spark: SparkSession, settings: ConsumerSettings, topic: str) -> DataFrame:
    from pyspark.errors import AnalysisException

    try:
        return _kafka_reader(spark, settings, topic)
    except AnalysisException as err:
        if "kafka" in str(err).lower() and "data source" in str(err).lower():
            raise ConsumerError(
                "Spark has no Kafka source: SPARK_JARS must list the spark-sql-kafka-0-10 jars "
                "(`make services` fetches them into .local/jars/spark)"
            ) from err
        raise


def _kafka_reader(spark: SparkSession, settings: ConsumerSettings, topic: str) -> DataFrame:
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", settings.spark_max_offsets_per_trigger)
        .option("failOnDataLoss", str(settings.consumer_fail_on_data_loss).lower())
        .option("kafka.fetch.max.wait.ms", str(settings.consumer_kafka_fetch_max_wait_ms))
        .load()
    )


class _QueryId:
    """The streaming query's persistent id, known only once start() returned."""

    def __init__(self) -> None:
        self._value: str | None = None
        self._ready = threading.Event()

    def set(self, value: str) -> None:
        self._value = value
        self._ready.set()

    def get(self) -> str:
        if not self._ready.wait(timeout=120):
            raise ConsumerError("streaming query id never became known")
        assert self._value is not None  # noqa: S101 - set() ran before the event fired
        return self._value


def key_last_rows(table: pa.Table) -> list[tuple[str, str, LastPrice]]:
    """The rows flagged is_key_last, as (symbol, stream, LastPrice) for state.advance."""
    last = table.filter(pc.equal(table.column("is_key_last"), True)).select(
        ["symbol", "stream", "price", "price_time_us", "sequence_id"]
    )
    return [
        (r["symbol"], r["stream"], LastPrice(r["price"], r["price_time_us"], r["sequence_id"]))
        for r in last.to_pylist()
    ]


class PriceBatchWriter:
    """The foreachBatch function of the prices query (see module docstring)."""

    def __init__(
        self, sink: PostgresSink, state: PriceState, metrics: ConsumerMetrics, query_id: _QueryId
    ) -> None:
        self._sink = sink
        self._state = state
        self._metrics = metrics
        self._query_id = query_id

    def _recover(self) -> dict[tuple[str, str], LastPrice]:
        return self._sink.run("last price recovery", last_prices_from_postgres)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        query_id = self._query_id.get()
        latest, committed = self._sink.ledger_position(query_id, batch_id)
        if committed:
            self._catch_up_state(batch, query_id, batch_id, latest)
            self._metrics.record_batch(
                batch_id=batch_id,
                outcome="skipped",
                rows=0,
                duration_s=time.monotonic() - started,
                received_at_us=np.empty(0),
                committed_at=time.time(),
            )
            return
        last_prices = self._state.load(watermark(query_id, latest), self._recover)
        prepared = time.monotonic()
        table = transform_batch(batch, last_prices).toArrow()
        collected = time.monotonic()
        result = self._sink.write_batch(query_id, batch_id, table)
        committed_at = time.time()
        written = time.monotonic()
        if result.skipped:  # committed by an earlier attempt whose outcome we never saw
            self._catch_up_state(batch, query_id, batch_id, batch_id)
        else:
            self._state.advance(key_last_rows(table), watermark(query_id, batch_id))
        outcome = "skipped" if result.skipped else ("merged" if result.merged else "written")
        duration = time.monotonic() - started
        self._metrics.record_batch(
            batch_id=batch_id,
            outcome=outcome,
            rows=result.rows_inserted,
            duration_s=duration,
            received_at_us=table.column("received_at_us").to_numpy(),
            committed_at=committed_at,
        )
        log.info(
            "batch %s: %s rows %s in %.3fs "
            "(ledger+state %.3fs, spark %.3fs, postgres %.3fs; %d keys)",
            batch_id,
            result.rows_inserted,
            outcome,
            duration,
            prepared - started,
            collected - prepared,
            written - collected,
            len(last_prices),
        )

    def _catch_up_state(
        self, batch: DataFrame, query_id: str, batch_id: int, latest: int | None
    ) -> None:
        """A batch committed before a crash: make Redis hold the state as of `latest`."""
        _, mark = self._state.read()
        if mark == watermark(query_id, latest):
            return
        if latest == batch_id and mark == watermark(query_id, batch_id - 1):
            # the crash fell between the PostgreSQL commit and the Redis update
            rows = transform_batch(batch, {}).where("is_key_last").toArrow()
            self._state.advance(key_last_rows(rows), watermark(query_id, batch_id))
            log.info("batch %s was committed before a restart: Redis moved forward", batch_id)
        else:
            self._state.load(watermark(query_id, latest), self._recover)


def _us_to_datetime(value: int | None) -> datetime | None:
    return (
        None
        if value is None
        else datetime.fromtimestamp(value / 1_000_000, tz=UTC).replace(
            microsecond=value % 1_000_000
        )
    )


class GapBatchWriter:
    """The foreachBatch function of the gaps query: upsert gap events into staging.feed_gaps."""

    def __init__(self, sink: PostgresSink, metrics: ConsumerMetrics) -> None:
        self._sink = sink
        self._metrics = metrics

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        gaps = batch.select(
            F.from_json(F.col("value").cast("string"), GAP_SCHEMA).alias("g")
        ).select("g.*")
        rows: list[tuple[Any, ...]] = []
        for gap in gaps.collect():
            record = gap.asDict()
            if (
                record["symbol"] is None
                or record["first_missing_id"] is None
                or record["window_start_us"] is None
            ):
                log.warning("gap event without its key fields dropped: %s", record)
                continue
            record["window_start"] = _us_to_datetime(record["window_start_us"])
            record["window_end"] = _us_to_datetime(
                record["window_end_us"] or record["window_start_us"]
            )
            record["detected_at"] = _us_to_datetime(
                record["detected_at_us"] or record["window_end_us"]
            )
            record["filled_count"] = record["filled_count"] or 0
            record["unfilled_count"] = record["unfilled_count"] or 0
            record["reason"] = record["reason"] or ""
            rows.append(tuple(record[c] for c in GAP_COLUMNS))
        written = self._sink.write_gaps(rows)
        self._metrics.gap_rows_total.inc(written)
        log.info("gap batch %s: %s gap events upserted", batch_id, written)


def _trigger(settings: ConsumerSettings) -> dict[str, Any]:
    interval = settings.spark_trigger_interval.strip()
    if not interval:
        return {"processingTime": "0 seconds"}
    if interval.lower() == "availablenow":
        return {"availableNow": True}
    return {"processingTime": interval}


def _gaps_trigger(settings: ConsumerSettings) -> dict[str, Any]:
    """The gaps query's trigger: its own interval, unless the job drains (availableNow)."""
    prices = _trigger(settings)
    interval = settings.consumer_gaps_trigger_interval.strip()
    if "availableNow" in prices or not interval:
        return prices
    return {"processingTime": interval}


def consumer_lag(query: StreamingQuery) -> int | None:
    """Kafka end offsets minus the offsets the last batch processed (summed over partitions)."""
    progress = query.lastProgress
    if not progress:
        return None
    lag = 0
    for source in progress.get("sources", []):
        latest, end = source.get("latestOffset"), source.get("endOffset")
        if not isinstance(latest, dict) or not isinstance(end, dict):
            return None
        for topic, partitions in latest.items():
            done = end.get(topic, {})
            lag += sum(int(o) - int(done.get(p, 0)) for p, o in partitions.items())
    return lag


class ConsumerJob:
    """Wires settings, services and the two streaming queries; run() blocks until they end."""

    def __init__(self, settings: ConsumerSettings, *, spark: SparkSession | None = None) -> None:
        self.settings = settings
        self._spark = spark
        self.metrics = ConsumerMetrics(settings.status_path)
        self._stop = threading.Event()
        self.queries: list[StreamingQuery] = []
        self._sink_gaps = False

    def check_services(self) -> tuple[PostgresSink, PostgresSink, PriceState]:
        s = self.settings
        topics = check_kafka(s.kafka_bootstrap_servers)
        if s.kafka_topic_prices not in topics:
            raise ConsumerError(
                f"Kafka topic {s.kafka_topic_prices} does not exist: "
                "`make services` creates the topics"
            )
        self._sink_gaps = s.consumer_sink_gaps and s.kafka_topic_gaps in topics
        if s.consumer_sink_gaps and not self._sink_gaps:
            log.warning(
                "Kafka topic %s does not exist: gap events are not sunk", s.kafka_topic_gaps
            )
        state = PriceState(
            s.redis_url, s.consumer_redis_prefix, retry_seconds=s.consumer_retry_seconds
        )
        state.ping()
        sink = PostgresSink(
            s.postgres_conninfo,
            retry_seconds=s.consumer_retry_seconds,
            write_mode=s.consumer_write_mode,
            copy_format=s.consumer_copy_format,
        )
        has_table = sink.run(
            "schema check",
            lambda conn: conn.execute(
                "select to_regclass('staging.raw_prices') is not null"
            ).fetchone(),
        )
        if not has_table or not has_table[0]:
            raise ConsumerError(
                "staging.raw_prices does not exist: apply init.sql (`make services` does it)"
            )
        gap_sink = PostgresSink(s.postgres_conninfo, retry_seconds=s.consumer_retry_seconds)
        return sink, gap_sink, state

    def start(self) -> list[StreamingQuery]:
        s = self.settings
        sink, gap_sink, state = self.check_services()
        spark = self._spark or build_spark(s)
        self._spark = spark
        checkpoint = s.spark_checkpoint_dir.rstrip("/")
        trigger = _trigger(s)
        gaps_trigger = _gaps_trigger(s)

        query_id = _QueryId()
        writer = PriceBatchWriter(sink, state, self.metrics, query_id)
        prices_query = (
            kafka_stream(spark, s, s.kafka_topic_prices)
            .writeStream.queryName("consumer_prices")
            .option("checkpointLocation", f"{checkpoint}/prices")
            .foreachBatch(writer)
            .trigger(**trigger)
            .start()
        )
        query_id.set(str(prices_query.id))
        self.queries = [prices_query]
        if self._sink_gaps:
            gaps_query = (
                kafka_stream(spark, s, s.kafka_topic_gaps)
                .writeStream.queryName("consumer_gaps")
                .option("checkpointLocation", f"{checkpoint}/gaps")
                .foreachBatch(GapBatchWriter(gap_sink, self.metrics))
                .trigger(**gaps_trigger)
                .start()
            )
            self.queries.append(gaps_query)
        self.metrics.set_state("running", query_id=str(prices_query.id), trigger=str(trigger))
        log.info(
            "consumer started: query %s, trigger %s (gaps query: %s), checkpoint %s",
            prices_query.id,
            trigger,
            gaps_trigger if self._sink_gaps else "off",
            checkpoint,
        )
        return self.queries

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Start the queries and wait for them; raise the first query failure."""
        self.metrics.serve(self.settings.consumer_metrics_port, self.settings.consumer_metrics_host)
        self.start()
        try:
            logged_batch = -1
            while not self._stop.is_set() and any(q.isActive for q in self.queries):
                self.queries[0].awaitTermination(2)
                self.metrics.set_lag(consumer_lag(self.queries[0]))
                progress = self.queries[0].lastProgress
                if progress and progress.get("batchId", -1) != logged_batch:
                    logged_batch = progress["batchId"]
                    log.info(
                        "progress of batch %s: %s rows, durations ms %s",
                        logged_batch,
                        progress.get("numInputRows"),
                        progress.get("durationMs"),
                    )
                for query in self.queries:
                    failure = query.exception()
                    if failure is not None:
                        raise ConsumerError(
                            f"streaming query {query.name} failed: {failure}"
                        ) from None
        finally:
            for query in self.queries:
                if query.isActive:
                    query.stop()
            self.metrics.set_lag(consumer_lag(self.queries[0]) if self.queries else None)
            self.metrics.set_state("stopped")


def install_signal_handlers(job: ConsumerJob) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping the streaming queries", signum)
        job.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
