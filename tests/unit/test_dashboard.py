"""The dashboard's pure parts: settings, the Streamlit command line, candle windows, figures.

Data: hand-written candle rows with exact decimals; no service is started.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from psycopg.conninfo import conninfo_to_dict

from dashboard.__main__ import streamlit_argv
from dashboard.app import _daily_table
from dashboard.charts import candlestick_figure
from dashboard.config import DashboardSettings
from dashboard.warehouse import TIMEFRAMES, candle_window

pytestmark = pytest.mark.unit


def _settings(**values: str) -> DashboardSettings:
    return DashboardSettings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def test_defaults_are_the_read_only_analyst_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POSTGRES_USER", "DASHBOARD_HOST", "DASHBOARD_PORT", "PROMETHEUS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = _settings()
    assert settings.postgres_user == "pipeline_analyst"
    assert settings.dashboard_host == "127.0.0.1"
    assert settings.dashboard_port == 8501
    assert settings.prometheus_url == "http://127.0.0.1:9090"
    options = conninfo_to_dict(settings.postgres_conninfo)["options"]
    assert "default_transaction_read_only=on" in str(options)


def test_a_password_with_every_awkward_character_survives_the_conninfo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = "a'b\\c d@e:f/g%h#i\"j"  # noqa: S105 - a test value
    monkeypatch.setenv("POSTGRES_PASSWORD", password)
    assert conninfo_to_dict(_settings().postgres_conninfo)["password"] == password


def test_streamlit_serves_the_page_on_the_settings_address_without_error_details(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DASHBOARD_PORT", "17501")
    monkeypatch.setenv("DASHBOARD_HOST", "127.0.0.1")
    from dashboard import config

    config.get_settings.cache_clear()
    try:
        argv = streamlit_argv()
    finally:
        config.get_settings.cache_clear()
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert argv[:2] == ["streamlit", "run"] and argv[2].endswith("dashboard/app.py")
    assert flags["--server.address"] == "127.0.0.1"
    assert flags["--server.port"] == "17501"
    assert flags["--client.showErrorDetails"] == "none"
    assert flags["--browser.gatherUsageStats"] == "false"


def test_every_timeframe_of_the_issue_is_offered() -> None:
    assert list(TIMEFRAMES) == ["1m", "5m", "15m", "1h", "4h", "1d"]


def test_the_window_ends_one_bucket_after_the_newest_event_not_at_the_clock() -> None:
    newest = datetime(2020, 1, 1, 23, 59, 59, 990000, tzinfo=UTC)
    bucket, start, end = candle_window(newest, "1d")
    assert bucket == timedelta(days=1)
    assert start <= datetime(2020, 1, 1, tzinfo=UTC) < end
    bucket, start, end = candle_window(newest, "1m")
    assert (bucket, end - start) == (timedelta(minutes=1), timedelta(hours=6, minutes=1))


ROWS = [
    {
        "bucket_start": datetime(2020, 1, 1, 0, 0, tzinfo=UTC),
        "open_price": Decimal("7195.24"),
        "high_price": Decimal("7196.25"),
        "low_price": Decimal("7183.14"),
        "close_price": Decimal("7186.68"),
        "volume": Decimal("51.642812"),
        "trade_count": 493,
    },
    {
        "bucket_start": datetime(2020, 1, 1, 0, 1, tzinfo=UTC),
        "open_price": Decimal("7187.67"),
        "high_price": Decimal("7188.06"),
        "low_price": Decimal("7182.2"),
        "close_price": Decimal("7184.03"),
        "volume": Decimal("7.248148"),
        "trade_count": 135,
    },
]


def test_the_figure_draws_each_candle_and_its_volume_with_the_exact_values() -> None:
    figure = candlestick_figure(ROWS, "BTCUSDT", "1m", timedelta(minutes=1))
    candle, volume = figure.data
    assert candle.type == "candlestick" and volume.type == "bar"
    assert list(candle.open) == [Decimal("7195.24"), Decimal("7187.67")]
    assert list(candle.close) == [Decimal("7186.68"), Decimal("7184.03")]
    assert list(volume.y) == [Decimal("51.642812"), Decimal("7.248148")]
    assert candle.text[0] == "O 7195.24 H 7196.25 L 7183.14 C 7186.68 V 51.642812 (493 trades)"
    # the first minute fell (close < open): its volume bar has the falling colour
    assert volume.marker.color[0] == candle.decreasing.line.color


def test_the_daily_table_keeps_exact_strings_and_names_an_unchecked_day() -> None:
    table = _daily_table(
        [
            {"event_date": "2020-01-02", "reconciliation_status": None, "open": Decimal("7200.77")},
            {"event_date": "2020-01-01", "reconciliation_status": "reconciled", "open": None},
        ]
    )
    assert list(table.columns) == ["day (UTC)", "status", "open"]
    assert table.to_dict("records") == [
        {"day (UTC)": "2020-01-02", "status": "not checked yet", "open": "7200.77"},
        {"day (UTC)": "2020-01-01", "status": "reconciled", "open": ""},
    ]
