"""The original project's consumer, reproduced faithfully as the benchmark's reference design.

What it reproduces: tahatuzel/real-time-crypto-currency-price-processing (consumer_app/
consumer.py, init.sql, docker-compose.yaml), written anew here, step for step, with the same
work per batch. Only the addresses are adapted (Kafka, PostgreSQL, Redis and the topic come
from the environment; its Redis keys get a prefix so runs sharing one Redis server do not
meet). What it does, as the original does:
- its schema: `staging.raw_prices (event_time timestamp, symbol varchar(10), price_usd
  decimal(15,5), old_price_usd decimal(15,5), exchange_rate decimal(10,5))`, no key, no index
  (ORIGINAL_SCHEMA, applied to a database of its own, never ours);
- its input: records `{"timestamp": E ms, "symbol", "price"}` without a key
  (bench/backlog.py produces them);
- Spark's Kafka source from the earliest offset, no maxOffsetsPerTrigger (the first batch
  takes the whole backlog), no checkpoint location, update mode, a 15-second
  processingTime trigger, Spark's default settings otherwise (200 shuffle partitions);
- per batch (foreachBatch): event time = timestamp / 1000 as a timestamp, the symbol without
  "USDT", the price as a double rounded to 3 decimals; cache; count; the batch's distinct
  symbols collected; one Redis MGET of their last prices; those as "history" rows unioned
  with the batch; lag over (symbol; history first, then event time) for the old price; the
  rate (price - old) / old, 0 when there is no old price; the history rows dropped; a JDBC
  append into staging.raw_prices; the newest price per symbol (row_number over event time
  descending) collected and written back with one Redis MSET; unpersist.

Instrumentation the original lacks, which changes no work: one stdout line per batch with
its id, rows and timings (`ORIGINAL batch ...`), read by bench/bench_backlog.py.

Run (settings from the environment, see `OriginalSettings`):
    .venv/bin/python bench/original_design.py
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The original's init.sql, table for table (its analytics objects are not part of the load).
ORIGINAL_SCHEMA = """
create schema if not exists staging;
create table if not exists staging.raw_prices (
    event_time timestamp,
    symbol varchar(10),
    price_usd decimal(15, 5),
    old_price_usd decimal(15, 5),
    exchange_rate decimal(10, 5)
);
"""
TRIGGER = "15 seconds"


@dataclass(frozen=True)
class OriginalSettings:
    """Where the reference job reads and writes: the only part adapted from the original."""

    spark_master: str
    spark_jars: str
    kafka_bootstrap_servers: str
    topic: str
    jdbc_url: str
    postgres_user: str
    postgres_password: str
    redis_host: str
    redis_port: int
    redis_password: str
    redis_prefix: str

    @classmethod
    def from_env(cls) -> OriginalSettings:
        env = os.environ
        return cls(
            spark_master=env.get("SPARK_MASTER", "local[*]"),
            spark_jars=env.get("SPARK_JARS", ""),
            kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
            topic=env["ORIGINAL_TOPIC"],
            jdbc_url=env["ORIGINAL_JDBC_URL"],
            postgres_user=env["POSTGRES_USER"],
            postgres_password=env.get("POSTGRES_PASSWORD", ""),
            redis_host=env["REDIS_HOST"],
            redis_port=int(env["REDIS_PORT"]),
            redis_password=env.get("REDIS_PASSWORD", ""),
            redis_prefix=env.get("ORIGINAL_REDIS_PREFIX", "original:"),
        )


def postgres_jar() -> str:
    """The PostgreSQL JDBC driver the original loads with --packages org.postgresql:postgresql."""
    jars = sorted((ROOT / ".local" / "jars" / "spark").glob("postgresql-*.jar"))
    if jars:
        return str(jars[-1])
    debian = Path("/usr/share/java/postgresql.jar")
    if debian.is_file():
        return str(debian)
    raise SystemExit("no PostgreSQL JDBC jar: `make install` fetches it into .local/jars/spark")


def run(settings: OriginalSettings) -> None:
    import redis
    from pyspark.sql import DataFrame, SparkSession, Window
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql.types import (
        BooleanType,
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    jars = ",".join(filter(None, [settings.spark_jars, postgres_jar()]))
    spark = (
        SparkSession.builder.master(settings.spark_master)
        .appName("original_consumer")
        .config("spark.jars", jars)
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    record_schema = StructType(
        [
            StructField("timestamp", LongType()),
            StructField("symbol", StringType()),
            StructField("price", StringType()),
        ]
    )
    history_schema = StructType(
        [
            StructField("symbol", StringType()),
            StructField("price_usd", DoubleType()),
            StructField("is_history", BooleanType()),
        ]
    )
    jdbc_properties = {
        "user": settings.postgres_user,
        "password": settings.postgres_password,
        "driver": "org.postgresql.Driver",
    }

    def redis_key(symbol: str) -> str:
        return settings.redis_prefix + symbol

    def each_batch(batch: DataFrame, batch_id: int) -> None:
        started = time.time()
        # the original opens a new Redis client in every batch
        client = redis.Redis(
            host=settings.redis_host,
            port=settings.redis_port,
            password=settings.redis_password or None,
            db=0,
        )
        prices = batch.select(
            (F.col("timestamp") / 1000).cast(TimestampType()).alias("event_time"),
            F.regexp_replace(F.col("symbol"), "USDT", "").alias("symbol"),
            F.round(F.col("price").cast(DoubleType()), 3).alias("price_usd"),
        )
        prices.cache()
        rows = prices.count()
        if rows > 0:
            symbols = [r.symbol for r in prices.select("symbol").distinct().collect()]
            stored = client.mget([redis_key(s) for s in symbols]) if symbols else []
            known = [
                (symbol, float(value), True)
                for symbol, value in zip(symbols, stored, strict=True)
                if value
            ]
            history = spark.createDataFrame(known, history_schema).withColumn(
                "event_time", F.lit(None).cast(TimestampType())
            )
            combined = history.select(
                "event_time", "symbol", "price_usd", "is_history"
            ).unionByName(prices.withColumn("is_history", F.lit(False)))
            in_order = Window.partitionBy("symbol").orderBy(
                F.col("is_history").desc(), F.col("event_time")
            )
            with_old = combined.withColumn("old_price_usd", F.lag("price_usd", 1).over(in_order))
            with_rate = with_old.withColumn(
                "exchange_rate",
                F.when(
                    F.col("old_price_usd").isNotNull() & (F.col("old_price_usd") != 0),
                    (F.col("price_usd") - F.col("old_price_usd")) / F.col("old_price_usd"),
                ).otherwise(0),
            )
            new_rows = with_rate.filter(~F.col("is_history")).drop("is_history")
            new_rows.write.jdbc(
                url=settings.jdbc_url,
                table="staging.raw_prices",
                mode="append",
                properties=jdbc_properties,
            )
            written = time.time()
            newest_first = Window.partitionBy("symbol").orderBy(F.col("event_time").desc())
            newest = (
                prices.withColumn("row_num", F.row_number().over(newest_first))
                .filter(F.col("row_num") == 1)
                .select("symbol", "price_usd")
                .collect()
            )
            updates = {redis_key(r.symbol): str(r.price_usd) for r in newest}
            if updates:
                client.mset(updates)
        else:
            written = time.time()
        prices.unpersist()
        client.close()
        print(
            f"ORIGINAL batch {batch_id} rows {rows} started {started:.3f} "
            f"written {written:.3f} done {time.time():.3f}",
            flush=True,
        )

    records = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", settings.topic)
        .option("startingOffsets", "earliest")
        .load()
        .select(F.col("value").cast("string"))
        .select(F.from_json(F.col("value"), record_schema).alias("data"))
        .select("data.*")
    )
    print(f"ORIGINAL session ready {time.time():.3f}", flush=True)
    query: Any = (
        records.writeStream.outputMode("update")
        .foreachBatch(each_batch)
        .trigger(processingTime=TRIGGER)
        .start()
    )
    query.awaitTermination()


if __name__ == "__main__":
    run(OriginalSettings.from_env())
