"""The Spark Structured Streaming job: Kafka -> price changes -> PostgreSQL (+ Redis state).

Where the data comes from: the prices topic (KAFKA_TOPIC_PRICES) and the gaps topic
(KAFKA_TOPIC_GAPS), read from the earliest offset on first start and from the
checkpoint (SPARK_CHECKPOINT_DIR/prices, /gaps) afterwards. Where it goes:
staging.raw_prices + staging.consumer_batches (sink.py), staging.feed_gaps, Redis
(state.py), Prometheus and the status file (metrics.py).

Per micro-batch (PriceBatchWriter): read the ledger position -> load the last prices
(Redis, or PostgreSQL when Redis does not hold the committed state) -> transform ->
collect as Arrow on the driver -> one PostgreSQL transaction (ledger row + COPY + the
batch's dead letters) -> move Redis forward. docs/consumer.md explains why this is
exactly-once. A query that fails (a broker away longer than the Kafka timeout, PostgreSQL
away longer than CONSUMER_RETRY_SECONDS) is restarted from its checkpoint (RestartingQuery).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from consumer_app.config import ConsumerSettings
from consumer_app.dead_letters import RejectedRecord, rejected_from_arrow, stored_part
from consumer_app.errors import ConsumerError, ServiceUnavailableError
from consumer_app.metrics import ConsumerMetrics
from consumer_app.progress import ProgressRecorder
from consumer_app.retries import classify_query_failure, restart_decision
from consumer_app.sink import GAP_COLUMNS, PostgresSink
from consumer_app.state import PriceState, last_prices_from_postgres, watermark
from consumer_app.transform import LastPrice, parse_gaps, transform_batch
from consumer_app.validation import TimeBounds

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
        .config("spark.driver.host", settings.consumer_spark_driver_host)
        .config(
            "spark.driver.bindAddress",
            settings.consumer_spark_driver_bind_address or settings.consumer_spark_driver_host,
        )
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
        # a hung broker fails a blocking call after this long (Kafka's default 60 s), and the
        # query is restarted; the admin client refuses a request timeout above it
        .option("kafka.default.api.timeout.ms", str(settings.consumer_kafka_api_timeout_ms))
        .option(
            "kafka.request.timeout.ms", str(min(30_000, settings.consumer_kafka_api_timeout_ms))
        )
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


def time_bounds(settings: ConsumerSettings) -> TimeBounds:
    """The batch's time bounds: the consumer's clock now, the configured distances."""
    return TimeBounds(
        now_us=time.time_ns() // 1_000,
        max_ahead_us=round(settings.consumer_max_event_ahead_s * 1_000_000),
        max_delay_us=round(settings.consumer_max_event_delay_s * 1_000_000),
    )


def log_dead_letters(what: str, batch_id: int, count: int, stored: dict[str, int]) -> None:
    """One warning per batch with dead letters: how many, and the reasons of those new."""
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(stored.items()))
    log.warning(
        "%s %s: %d records dead-lettered into staging.rejected_records (new: %s)",
        what,
        batch_id,
        count,
        reasons or "none, all seen before",
    )


class PriceBatchWriter:
    """The foreachBatch function of the prices query (see module docstring)."""

    def __init__(
        self,
        sink: PostgresSink,
        state: PriceState,
        metrics: ConsumerMetrics,
        query_id: _QueryId,
        bounds: Callable[[], TimeBounds],
    ) -> None:
        self._sink = sink
        self._state = state
        self._metrics = metrics
        self._query_id = query_id
        self._bounds = bounds
        self.batches_done = 0  # batches this process committed or skipped (progress)

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
            self.batches_done += 1
            return
        last_prices = self._state.load(watermark(query_id, latest), self._recover)
        prepared = time.monotonic()
        collected_rows = transform_batch(batch, last_prices, self._bounds()).toArrow()
        table = stored_part(collected_rows)
        rejected = rejected_from_arrow(collected_rows)
        collected = time.monotonic()
        result = self._sink.write_batch(query_id, batch_id, table, rejected)
        committed_at = time.time()
        written = time.monotonic()
        if result.skipped:  # committed by an earlier attempt whose outcome we never saw
            self._catch_up_state(batch, query_id, batch_id, batch_id)
        else:
            self._state.advance(key_last_rows(table), watermark(query_id, batch_id))
        outcome = "skipped" if result.skipped else ("merged" if result.merged else "written")
        duration = time.monotonic() - started
        self._metrics.record_rejected("prices", result.rejected)
        self._metrics.record_batch(
            batch_id=batch_id,
            outcome=outcome,
            rows=result.rows_inserted,
            duration_s=duration,
            received_at_us=table.column("received_at_us").to_numpy(),
            committed_at=committed_at,
        )
        self.batches_done += 1
        if rejected:
            log_dead_letters("batch", batch_id, len(rejected), result.rejected)
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
            rows = transform_batch(batch, {}, self._bounds()).where("is_key_last").toArrow()
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


def _origin(record: dict[str, Any]) -> RejectedRecord:
    """The Kafka record behind a parsed gap report (reason empty unless it was rejected)."""
    return RejectedRecord(
        topic=record["kafka_topic"],
        partition=record["kafka_partition"],
        offset=record["kafka_offset"],
        reason=record["reject_reason"] or "",
        detail=record["reject_detail"] or "",
        key=record["kafka_key"],
        value=record["kafka_value"],
        timestamp=record["kafka_timestamp"],
    )


class GapBatchWriter:
    """The foreachBatch function of the gaps query: upsert gap events into staging.feed_gaps."""

    def __init__(
        self, sink: PostgresSink, metrics: ConsumerMetrics, bounds: Callable[[], TimeBounds]
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._bounds = bounds
        self.batches_done = 0

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        rows: list[tuple[Any, ...]] = []
        origins: list[RejectedRecord] = []
        rejected: list[RejectedRecord] = []
        # Arrow, not collect(): its timestamps come back UTC-aware
        for record in parse_gaps(batch, self._bounds()).toArrow().to_pylist():
            origin = _origin(record)
            if origin.reason:  # a gap report without its key fields, a bad status, ...
                rejected.append(origin)
                continue
            record["window_start"] = _us_to_datetime(record["window_start_us"])
            record["window_end"] = _us_to_datetime(
                record["window_end_us"] or record["window_start_us"]
            )
            record["detected_at"] = _us_to_datetime(
                record["detected_at_us"] or record["window_end_us"] or record["window_start_us"]
            )
            record["filled_count"] = record["filled_count"] or 0
            record["unfilled_count"] = record["unfilled_count"] or 0
            record["reason"] = record["reason"] or ""
            rows.append(tuple(record[c] for c in GAP_COLUMNS))
            origins.append(origin)
        written, dead = self._sink.write_gaps(rows, origins, rejected)
        self._metrics.gap_rows_total.inc(written)
        self._metrics.record_rejected("gaps", dead)
        self.batches_done += 1
        if rejected or dead:
            refused = dead.get("rejected_by_database", 0)  # rows PostgreSQL refused
            log_dead_letters("gap batch", batch_id, len(rejected) + refused, dead)
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


def failure_text(failure: BaseException) -> str:
    """A query failure's message with its JVM stack (the "Caused by" chain names the cause)."""
    return f"{failure}\n{getattr(failure, '_stackTrace', '') or ''}"


class RestartingQuery:
    """One streaming query, started again from its checkpoint after it fails.

    The checkpoint makes a restart exact: the uncommitted batch runs again with the same id
    and offsets, and the ledger skips it if it had committed. retries.restart_decision says
    whether and when (a broker away for an hour is waited out; an unknown failure gives up
    after CONSUMER_QUERY_RESTART_LIMIT tries in a row, so the supervisor sees the exit).
    """

    def __init__(
        self,
        name: str,
        start: Callable[[], StreamingQuery],
        progress: Callable[[], int],
        settings: ConsumerSettings,
        metrics: ConsumerMetrics,
    ) -> None:
        self.name = name
        self._start = start
        self._progress = progress
        self._settings = settings
        self._metrics = metrics
        self.query = start()
        self._restart_at: float | None = None
        self._failures = 0  # failures since the last batch this process finished
        self._mark = progress()

    @property
    def active(self) -> bool:
        return self._restart_at is not None or self.query.isActive

    def check(self) -> None:
        """Restart a failed query when its delay is up; raise ConsumerError to give up."""
        if self._progress() != self._mark:
            self._mark, self._failures = self._progress(), 0
        if self._restart_at is not None:
            if time.monotonic() >= self._restart_at:
                self._restart_at = None
                self.query = self._start()
                log.info("query %s restarted from its checkpoint", self.name)
            return
        failure = self.query.exception()
        if failure is None:
            return
        text = failure_text(failure)
        self._failures += 1
        decision = restart_decision(
            classify_query_failure(text),
            self._failures,
            limit=self._settings.consumer_query_restart_limit,
            max_delay_s=self._settings.consumer_query_restart_max_delay_s,
        )
        if not decision.restart:
            raise ConsumerError(
                f"streaming query {self.name} failed ({decision.kind.value}, "
                f"{self._failures} failure(s) since the last batch): {failure}"
            )
        first_line = str(failure).strip().splitlines()[0][:1000] if str(failure).strip() else ""
        log.warning(
            "query %s failed (%s, %d since the last committed batch): %s; "
            "restarting it from its checkpoint in %.0fs",
            self.name,
            decision.kind.value,
            self._failures,
            first_line,
            decision.delay_s,
        )
        self._metrics.record_restart(self.name, decision.kind.value, first_line)
        self._restart_at = time.monotonic() + decision.delay_s

    def stop(self) -> None:
        self._restart_at = None
        if self.query.isActive:
            self.query.stop()


class ConsumerJob:
    """Wires settings, services and the two streaming queries; run() blocks until they end."""

    def __init__(self, settings: ConsumerSettings, *, spark: SparkSession | None = None) -> None:
        self.settings = settings
        self._spark = spark
        self.metrics = ConsumerMetrics(settings.status_path)
        self._stop = threading.Event()
        self._queries: list[RestartingQuery] = []
        self._sink_gaps = False
        self.progress = ProgressRecorder(
            settings.postgres_conninfo,
            settings.consumer_progress_interval_s,
            settings.kafka_bootstrap_servers,
        )

    @property
    def queries(self) -> list[StreamingQuery]:
        """The running streaming queries (the prices query first)."""
        return [q.query for q in self._queries]

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
            s.redis_url,
            s.consumer_redis_prefix,
            retry_seconds=s.consumer_retry_seconds,
            password=s.redis_password.get_secret_value() or None,
        )
        state.ping()
        on_retry = self._count_database_retry
        sink = PostgresSink(
            s.postgres_conninfo,
            retry_seconds=s.consumer_retry_seconds,
            write_mode=s.consumer_write_mode,
            copy_format=s.consumer_copy_format,
            on_retry=on_retry,
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
        gap_sink = PostgresSink(
            s.postgres_conninfo, retry_seconds=s.consumer_retry_seconds, on_retry=on_retry
        )
        return sink, gap_sink, state

    def _count_database_retry(self, reason: str) -> None:
        self.metrics.database_retries_total.labels(reason=reason).inc()

    def start(self) -> list[StreamingQuery]:
        s = self.settings
        sink, gap_sink, state = self.check_services()
        spark = self._spark or build_spark(s)
        self._spark = spark
        checkpoint = s.spark_checkpoint_dir.rstrip("/")
        trigger = _trigger(s)
        gaps_trigger = _gaps_trigger(s)

        query_id = _QueryId()

        def bounds() -> TimeBounds:  # read per batch: the consumer's clock moves
            return time_bounds(s)

        writer = PriceBatchWriter(sink, state, self.metrics, query_id, bounds)

        def start_prices() -> StreamingQuery:
            query = (
                kafka_stream(spark, s, s.kafka_topic_prices)
                .writeStream.queryName("consumer_prices")
                .option("checkpointLocation", f"{checkpoint}/prices")
                .foreachBatch(writer)
                .trigger(**trigger)
                .start()
            )
            query_id.set(str(query.id))  # the same id after a restart (the checkpoint's)
            return query

        prices = RestartingQuery(
            "consumer_prices", start_prices, lambda: writer.batches_done, s, self.metrics
        )
        prices_query = prices.query
        self._queries = [prices]
        if self._sink_gaps:
            gap_writer = GapBatchWriter(gap_sink, self.metrics, bounds)

            def start_gaps() -> StreamingQuery:
                return (
                    kafka_stream(spark, s, s.kafka_topic_gaps)
                    .writeStream.queryName("consumer_gaps")
                    .option("checkpointLocation", f"{checkpoint}/gaps")
                    .foreachBatch(gap_writer)
                    .trigger(**gaps_trigger)
                    .start()
                )

            self._queries.append(
                RestartingQuery(
                    "consumer_gaps", start_gaps, lambda: gap_writer.batches_done, s, self.metrics
                )
            )
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
        """Start the queries and wait for them; restart failed ones, raise when that cannot help."""
        self.metrics.serve(self.settings.consumer_metrics_port, self.settings.consumer_metrics_host)
        self.start()
        try:
            logged_batch = -1
            while not self._stop.is_set() and any(q.active for q in self._queries):
                prices = self._queries[0].query
                if prices.isActive:
                    try:
                        prices.awaitTermination(2)
                    except StreamingQueryException:
                        pass  # check() below decides what the failure means
                else:  # drained (availableNow), or failed and waiting for its restart
                    self._stop.wait(1)
                lag = consumer_lag(prices)
                self.metrics.set_lag(lag)
                self.progress.record(prices, lag)
                progress = prices.lastProgress
                if progress and progress.get("batchId", -1) != logged_batch:
                    logged_batch = progress["batchId"]
                    log.info(
                        "progress of batch %s: %s rows, durations ms %s",
                        logged_batch,
                        progress.get("numInputRows"),
                        progress.get("durationMs"),
                    )
                for query in self._queries:
                    query.check()
        finally:
            for query in self._queries:
                query.stop()
            self.metrics.set_lag(consumer_lag(self.queries[0]) if self.queries else None)
            self.metrics.set_state("stopped")


def install_signal_handlers(job: ConsumerJob) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping the streaming queries", signum)
        job.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
