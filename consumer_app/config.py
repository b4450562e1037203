"""Settings of the consumer, read once from the environment (and `.env`).

Where the values come from: the process environment, then `.env` in the working
directory. Where they go: every other consumer module receives this object (or a
field of it) as an argument; nothing else in consumer_app reads os.environ.
The names are fixed by docs/architecture.md; consumer-only knobs start with CONSUMER_.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsumerSettings(BaseSettings):
    """Everything the Spark streaming job needs to know about its world."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Spark
    spark_master: str = Field(default="local[*]", validation_alias="SPARK_MASTER")
    spark_checkpoint_dir: str = Field(
        default=".local/checkpoints/consumer", validation_alias="SPARK_CHECKPOINT_DIR"
    )
    # "" = as fast as possible (processingTime 0), "availableNow" = drain the topic then
    # stop, anything else is a processingTime interval such as "15 seconds".
    spark_trigger_interval: str = Field(default="", validation_alias="SPARK_TRIGGER_INTERVAL")
    spark_max_offsets_per_trigger: int = Field(
        default=200_000, validation_alias="SPARK_MAX_OFFSETS_PER_TRIGGER", gt=0
    )
    spark_jars: str = Field(default="", validation_alias="SPARK_JARS")

    # Kafka
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    kafka_topic_prices: str = Field(default="binance.prices", validation_alias="KAFKA_TOPIC_PRICES")
    kafka_topic_gaps: str = Field(default="binance.gaps", validation_alias="KAFKA_TOPIC_GAPS")

    # PostgreSQL
    postgres_host: str = Field(default="127.0.0.1", validation_alias="POSTGRES_HOST")
    postgres_port: int = Field(default=5432, validation_alias="POSTGRES_PORT")
    postgres_db: str = Field(default="crypto", validation_alias="POSTGRES_DB")
    postgres_user: str = Field(default="pipeline", validation_alias="POSTGRES_USER")
    postgres_password: SecretStr = Field(
        default=SecretStr(""), validation_alias="POSTGRES_PASSWORD"
    )

    # Redis
    redis_host: str = Field(default="127.0.0.1", validation_alias="REDIS_HOST")
    redis_port: int = Field(default=6379, validation_alias="REDIS_PORT")
    redis_db: int = Field(default=0, validation_alias="REDIS_DB")
    # Redis requires it (requirepass); never part of a URL or a log line.
    redis_password: SecretStr = Field(default=SecretStr(""), validation_alias="REDIS_PASSWORD")

    # consumer's own knobs
    # 0 disables the metrics HTTP server (tests run several jobs in one process).
    consumer_metrics_port: int = Field(default=9109, validation_alias="CONSUMER_METRICS_PORT")
    # Loopback unless asked: compose sets 0.0.0.0 inside the container.
    consumer_metrics_host: str = Field(
        default="127.0.0.1", validation_alias="CONSUMER_METRICS_HOST"
    )
    consumer_redis_prefix: str = Field(
        default="consumer:last_price", validation_alias="CONSUMER_REDIS_PREFIX"
    )
    consumer_shuffle_partitions: int = Field(
        default=2, validation_alias="CONSUMER_SHUFFLE_PARTITIONS", gt=0
    )
    consumer_driver_memory: str = Field(default="2g", validation_alias="CONSUMER_DRIVER_MEMORY")
    # Where the Spark driver's RPC endpoint and block manager listen (spark.driver.bindAddress)
    # and the address executors use to reach it (spark.driver.host). Neither authenticates, so
    # loopback by default; a cluster sets the driver's host name (compose: the container's).
    consumer_spark_driver_host: str = Field(
        default="127.0.0.1", validation_alias="CONSUMER_SPARK_DRIVER_HOST"
    )
    # empty = the driver host
    consumer_spark_driver_bind_address: str = Field(
        default="", validation_alias="CONSUMER_SPARK_DRIVER_BIND_ADDRESS"
    )
    # Kafka's fetch.max.wait.ms for the source's consumers. With Kafka's 500 ms default the
    # batch holding the last records of a burst took 1.2-2.7 s instead of 0.2-0.3 s, its
    # read tasks waiting out the fetch wait (docs/consumer.md, "Spark settings that matter").
    consumer_kafka_fetch_max_wait_ms: int = Field(
        default=50, validation_alias="CONSUMER_KAFKA_FETCH_MAX_WAIT_MS", ge=0
    )
    # true: stop when Kafka has already deleted offsets we never read (exactly-once
    # cannot be kept); false: log and skip them.
    consumer_fail_on_data_loss: bool = Field(
        default=True, validation_alias="CONSUMER_FAIL_ON_DATA_LOSS"
    )
    consumer_sink_gaps: bool = Field(default=True, validation_alias="CONSUMER_SINK_GAPS")
    # Trigger of the gaps query (gap reports are rare and not latency-critical). Idle at
    # processingTime 0 a query asks Kafka for its end offsets every 10 ms: over 30 s idle
    # the broker used 4.3 s of CPU with the gaps query at 0, 2.9 s at 5 s
    # (bench/bench_consumer_idle.py; docs/consumer.md). Empty = the prices trigger;
    # SPARK_TRIGGER_INTERVAL=availableNow drains both whatever this says.
    consumer_gaps_trigger_interval: str = Field(
        default="5 seconds", validation_alias="CONSUMER_GAPS_TRIGGER_INTERVAL"
    )
    consumer_status_file: str = Field(default="", validation_alias="CONSUMER_STATUS_FILE")
    # Seconds between progress records for the DAG's completeness sensor
    # (staging.consumer_progress, consumer_app/progress.py); 0 = none.
    consumer_progress_interval_s: float = Field(
        default=5.0, validation_alias="CONSUMER_PROGRESS_INTERVAL_S", ge=0
    )
    # how long a lost Redis/PostgreSQL connection is retried before the job gives up
    consumer_retry_seconds: float = Field(
        default=60.0, validation_alias="CONSUMER_RETRY_SECONDS", ge=0
    )
    # optimistic: COPY straight into staging.raw_prices, merge only after a key conflict;
    # merge: always COPY into a temp table + INSERT ... ON CONFLICT DO NOTHING
    consumer_write_mode: Literal["optimistic", "merge"] = Field(
        default="optimistic", validation_alias="CONSUMER_WRITE_MODE"
    )
    consumer_copy_format: Literal["text", "binary"] = Field(
        default="text", validation_alias="CONSUMER_COPY_FORMAT"
    )

    # riding out failures (issue 12; docs/consumer.md, "Failure behaviour")
    # Kafka's default.api.timeout.ms for the source's clients: how long one blocking Kafka call
    # (offsets, position) waits for a broker before the query fails and is restarted.
    consumer_kafka_api_timeout_ms: int = Field(
        default=60_000, validation_alias="CONSUMER_KAFKA_API_TIMEOUT_MS", gt=0
    )
    # a failed query is restarted from its checkpoint after 1, 2, 4 ... s, at most this long
    consumer_query_restart_max_delay_s: float = Field(
        default=60.0, validation_alias="CONSUMER_QUERY_RESTART_MAX_DELAY_S", gt=0
    )
    # failures of an unknown kind restarted in a row (no batch committed between) before the
    # process exits non-zero; failures of an unreachable service are restarted without limit
    consumer_query_restart_limit: int = Field(
        default=5, validation_alias="CONSUMER_QUERY_RESTART_LIMIT", ge=0
    )
    # a price time more than this after the event's received_at_us (or a received_at_us more
    # than this after the consumer's clock) is dead-lettered as time_out_of_range
    consumer_max_event_ahead_s: float = Field(
        default=3600.0, validation_alias="CONSUMER_MAX_EVENT_AHEAD_S", gt=0
    )
    # a price time more than this before its received_at_us is dead-lettered; 0 = no bound
    # (replays of old recordings and REST gap fills are received long after they happened)
    consumer_max_event_delay_s: float = Field(
        default=0.0, validation_alias="CONSUMER_MAX_EVENT_DELAY_S", ge=0
    )

    @property
    def postgres_conninfo(self) -> str:
        """libpq conninfo built from the POSTGRES_* settings (password never logged)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.postgres_host,
            port=self.postgres_port,
            dbname=self.postgres_db,
            user=self.postgres_user,
            password=self.postgres_password.get_secret_value() or None,
            application_name="consumer_app",
        )

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"

    @property
    def status_path(self) -> str:
        """The JSON status file `make status` reads (default: inside the checkpoint dir)."""
        return self.consumer_status_file or f"{self.spark_checkpoint_dir.rstrip('/')}/status.json"


@lru_cache(maxsize=1)
def get_settings() -> ConsumerSettings:
    """The process-wide settings, read from the environment exactly once."""
    return ConsumerSettings()
