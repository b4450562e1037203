"""Checks that the shared fixtures of tests/conftest.py keep their promises on the real services.

Data comes from the services `make services` runs (PostgreSQL, Redis, Kafka) and from init.sql.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.integration


def test_pg_dsn_is_a_fresh_database_with_the_warehouse_owned_by_the_pipeline_user(
    pg_dsn: str,
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        (user,) = conn.execute("select current_user").fetchone() or ("",)
        tables: dict[str, str] = dict(
            conn.execute(
                "select schemaname || '.' || tablename, tableowner from pg_tables"
                " where schemaname in ('staging', 'analytics')"
            ).fetchall()
        )
        (rows,) = conn.execute("select count(*) from staging.raw_prices").fetchone() or (None,)
    assert tables.get("staging.raw_prices") == user
    assert tables.get("staging.consumer_batches") == user
    assert rows == 0


def test_pg_dsn_database_is_writable_by_the_pipeline_user(pg_admin_dsn: str, pg_dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("call staging.create_raw_prices_partitions('2020-01-01', '2020-01-01')")
        conn.execute(
            "insert into staging.raw_prices (symbol, stream, sequence_id, event_time,"
            " exchange_event_time, price, received_at)"
            " values ('BTCUSDT', 'trade', 1, '2020-01-01T00:00:00Z', '2020-01-01T00:00:00Z',"
            " 7195.24, now())"
        )
    with psycopg.connect(pg_admin_dsn) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
    assert exists is not None


def test_redis_prefix_is_unique_and_usable(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set(redis_prefix + "last_price:BTCUSDT", "7195.24")
    assert client.get(redis_prefix + "last_price:BTCUSDT") == b"7195.24"
    client.close()


def test_make_topic_creates_a_topic_with_the_requested_partitions(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(3)
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(topic, timeout=10)
    assert len(metadata.topics[topic].partitions) == 3

    value = uuid.uuid4().hex.encode()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    producer.produce(topic, key=b"BTCUSDT", value=value)
    assert producer.flush(10) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    received = None
    for _ in range(60):
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            received = message.value()
            break
    consumer.close()
    assert received == value


def test_spark_jars_hold_the_kafka_connector_and_no_second_spark(spark_jars: str) -> None:
    names = [Path(j).name for j in spark_jars.split(",")]
    assert any(n.startswith("spark-sql-kafka-0-10_2.13-4.2.0") for n in names)
    assert any(n.startswith("kafka-clients-") for n in names)
    assert any(n.startswith("commons-pool2-") for n in names)
    # Spark core/sql and Hadoop come from the pyspark wheel; a second copy would clash.
    assert not [n for n in names if n.startswith(("spark-core", "spark-sql_", "hadoop-"))]
