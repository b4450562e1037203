"""The dashboard's readers on a real PostgreSQL and a real Prometheus.

Data: trades written here with COPY into a fresh database (init.sql applied), expected
values computed in plain Python from those trades; the apps' own metric registries
(producer_app.metrics, consumer_app.metrics) served over HTTP and scraped by Debian's
Prometheus with the repository's alert rules.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from dashboard_stack import copy_trades, free_port, prometheus
from prometheus_client import start_http_server

from consumer_app.metrics import ConsumerMetrics
from dashboard import warehouse
from dashboard.config import DashboardSettings
from dashboard.health import PrometheusUnavailable, read_health
from producer_app.metrics import ProducerMetrics

pytestmark = pytest.mark.integration

T0 = datetime(2020, 1, 1, tzinfo=UTC)
# (seconds after T0, trade id, price, quantity): two minutes, the second falling
TRADES = [
    (0.5, 1, "7195.24", "0.1"),
    (10.0, 2, "7199.00", "0.25"),
    (59.999, 3, "7190.10", "1"),
    (60.0, 4, "7190.00", "2"),
    (61.0, 5, "7180.50", "0.5"),
]


def settings_for(dsn: str, **extra: str) -> DashboardSettings:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    values = {
        "POSTGRES_HOST": str(params["host"]),
        "POSTGRES_PORT": str(params["port"]),
        "POSTGRES_DB": str(params["dbname"]),
        "POSTGRES_USER": str(params["user"]),
        "POSTGRES_PASSWORD": str(params.get("password") or ""),
    }
    return DashboardSettings(_env_file=None, **(values | extra))  # type: ignore[call-arg, arg-type]


@pytest.fixture
def loaded_dsn(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("call staging.create_raw_prices_partitions('2020-01-01', '2020-01-01')")
        copy_trades(
            conn,
            (
                ("BTCUSDT", trade_id, when, when, Decimal(price), Decimal(quantity), False)
                for offset, trade_id, price, quantity in TRADES
                for when in [T0 + timedelta(seconds=offset)]
            ),
        )
    return pg_dsn


def test_latest_price_and_candles_come_back_exactly(loaded_dsn: str) -> None:
    with warehouse.connect(settings_for(loaded_dsn)) as conn:
        (latest,) = warehouse.latest_prices(conn)
        bucket, start, end = warehouse.candle_window(latest["event_time"], "1m")
        minutes = warehouse.candles(conn, "BTCUSDT", bucket, start, end)
        day_bucket, day_start, day_end = warehouse.candle_window(latest["event_time"], "1d")
        days = warehouse.candles(conn, "BTCUSDT", day_bucket, day_start, day_end)
    assert latest["last_price"] == Decimal("7180.5")
    assert latest["price_change"] == Decimal("7180.50") - Decimal("7190.00")
    assert latest["event_time"] == T0 + timedelta(seconds=61)
    # expectation from TRADES: minute 0 = trades 1-3, minute 1 = trades 4-5
    assert [
        (m["bucket_start"], m["open_price"], m["high_price"], m["low_price"], m["close_price"],
         m["volume"], m["trade_count"])
        for m in minutes
    ] == [
        (T0, Decimal("7195.24"), Decimal("7199"), Decimal("7190.1"), Decimal("7190.1"),
         Decimal("1.35"), 3),
        (T0 + timedelta(minutes=1), Decimal("7190"), Decimal("7190"), Decimal("7180.5"),
         Decimal("7180.5"), Decimal("2.5"), 2),
    ]  # fmt: skip
    assert [
        (d["bucket_start"], d["open_price"], d["close_price"], d["trade_count"]) for d in days
    ] == [(T0, Decimal("7195.24"), Decimal("7180.5"), 5)]


def test_daily_candles_carry_the_status_and_an_empty_gap_table_counts_zero(
    loaded_dsn: str,
) -> None:
    settings = settings_for(loaded_dsn)
    with psycopg.connect(loaded_dsn, autocommit=True) as conn:
        conn.execute("call analytics.get_daily_summary('2020-01-01')")
    with warehouse.connect(settings) as conn:
        (day,) = warehouse.daily_candles(conn, "BTCUSDT")
        gaps = warehouse.unfilled_gaps(conn)
    assert (day["open"], day["close"], day["trade_count"]) == (
        Decimal("7195.24"),
        Decimal("7180.5"),
        5,
    )
    assert day["reconciliation_status"] is None  # not checked yet
    assert (gaps["gaps"], gaps["missing_trades"]) == (0, 0)


def test_postgres_down_names_the_address_and_the_fix(loaded_dsn: str) -> None:
    closed = free_port()
    settings = settings_for(loaded_dsn, POSTGRES_PORT=str(closed))
    with pytest.raises(warehouse.WarehouseUnavailable) as raised:
        with warehouse.connect(settings):
            pass
    assert f"127.0.0.1:{closed}" in str(raised.value)
    assert "make services" in str(raised.value)


def test_a_database_without_the_schema_says_apply_init_sql(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema analytics cascade")
    with pytest.raises(warehouse.SchemaMissing, match="init.sql"):
        with warehouse.connect(settings_for(pg_dsn)) as conn:
            warehouse.latest_prices(conn)


def test_the_session_is_read_only(loaded_dsn: str) -> None:
    with pytest.raises(warehouse.WarehouseError, match="read-only"):
        with warehouse.connect(settings_for(loaded_dsn)) as conn:
            conn.execute("delete from staging.raw_prices")


@pytest.fixture
def app_metrics() -> Iterator[tuple[ProducerMetrics, ConsumerMetrics, int, int]]:
    producer, consumer = ProducerMetrics(), ConsumerMetrics()
    ports = free_port(), free_port()
    servers = [
        start_http_server(ports[0], addr="127.0.0.1", registry=producer.registry),
        start_http_server(ports[1], addr="127.0.0.1", registry=consumer.registry),
    ]
    yield producer, consumer, *ports
    for server, _thread in servers:
        server.shutdown()


def test_health_reads_the_apps_metrics_and_the_alerts_through_prometheus(
    tmp_path: Path, app_metrics: tuple[ProducerMetrics, ConsumerMetrics, int, int]
) -> None:
    producer, consumer, producer_port, consumer_port = app_metrics
    consumer.set_lag(1234)
    producer.dead_letters.labels("invalid_json").inc(3)
    targets = {
        "producer": [f"127.0.0.1:{producer_port}"],
        "consumer": [f"127.0.0.1:{consumer_port}"],
        "postgres": [f"127.0.0.1:{free_port()}"],  # nothing listens: WarehouseDown pending
    }
    with prometheus(tmp_path / "prometheus", targets) as url:
        deadline = time.monotonic() + 240  # a loaded machine: Prometheus evaluates late
        while True:
            health = read_health(url)
            names = {(a.name, a.state) for a in health.alerts}
            if health.figures["kafka_lag"] is not None and ("WarehouseDown", "pending") in names:
                break
            assert time.monotonic() < deadline, f"no figures/alerts yet: {health}"
            time.sleep(1)
    assert health.figures["producer_up"] == 1.0
    assert health.figures["consumer_up"] == 1.0
    assert health.figures["kafka_lag"] == 1234.0
    assert health.figures["dead_letters_total"] == 3.0
    assert health.figures["latency_p99"] is None  # no commit yet: no traffic, not zero
    assert "ConsumerDown" not in {a.name for a in health.alerts}


def test_prometheus_down_names_the_address_and_how_to_start_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusUnavailable) as raised:
        read_health(url)
    assert url in str(raised.value) and "make demo" in str(raised.value)
