"""DagBag integrity of airflow/dags/ and the DAG's pure helpers (no database, no scheduler).

Airflow is imported with a throw-away AIRFLOW_HOME so the test never touches ~/airflow; the
DAG file is parsed exactly as the DAG processor parses it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.unit

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "airflow" / "dags"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("airflow_home")
    overrides = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
    }
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def dagbag(airflow_env: None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture(scope="module")
def dag_module(airflow_env: None) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "get_daily_summary_dag", DAGS_FOLDER / "get_daily_summary.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_dags_import_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert list(dagbag.dags) == ["get_daily_summary"]


def test_get_daily_summary_tasks_schedule_and_retries(dagbag: Any) -> None:
    dag = dagbag.dags["get_daily_summary"]
    order = ["make_partitions", "summarize_day", "check_data_quality", "purge_raw_prices"]
    assert sorted(dag.task_ids) == sorted(order)
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert dag.get_task("make_partitions").upstream_task_ids == set()
    assert dag.catchup is True
    assert dag.max_active_runs == 1
    assert dag.start_date == datetime(2026, 11, 24, tzinfo=UTC)
    assert dag.timetable.expression == "15 0 * * *"
    assert str(dag.timetable.timezone) in {"UTC", "Timezone('UTC')"}
    assert dag.timetable.interval == timedelta(days=1)
    assert all(task.retries >= 2 for task in dag.tasks)
    assert dag.doc_md and "data_interval_start" in dag.doc_md
    assert {"warehouse", "daily"} <= set(dag.tags)


def test_a_run_triggered_for_2020_01_02_summarises_2020_01_01(
    dagbag: Any, dag_module: ModuleType
) -> None:
    from airflow.serialization.encoders import coerce_to_core_timetable

    timetable = coerce_to_core_timetable(dagbag.dags["get_daily_summary"].timetable)
    interval = timetable.infer_manual_data_interval(run_after=datetime(2020, 1, 2, tzinfo=UTC))
    assert interval.start == datetime(2020, 1, 1, tzinfo=UTC)
    assert dag_module.summary_day(interval.start) == date(2020, 1, 1)
    # The scheduled run at 2026-11-25 00:15 UTC covers [11-24 00:15, 11-25 00:15): day 11-24.
    scheduled_start = datetime(2026, 11, 25, 0, 15, tzinfo=UTC) - timedelta(days=1)
    assert dag_module.summary_day(scheduled_start) == date(2026, 11, 24)


def test_summary_day_is_the_utc_date_even_for_a_non_utc_datetime(dag_module: ModuleType) -> None:
    import pendulum

    tokyo_morning = pendulum.datetime(2024, 3, 10, 8, 0, tz="Asia/Tokyo")  # 2024-03-09 23:00 UTC
    assert dag_module.summary_day(tokyo_morning) == date(2024, 3, 9)


def test_a_ui_trigger_without_logical_date_summarises_the_utc_day_before_it(
    dag_module: ModuleType,
) -> None:
    # Airflow 3's "Trigger" button may create a run with no logical date and no data interval.
    triggered = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)
    assert dag_module.run_days(None, None, triggered) == (date(2026, 11, 23), date(2026, 11, 24))
    # Just after midnight in Tokyo is still the previous UTC day.
    import pendulum

    tokyo = pendulum.datetime(2026, 11, 25, 8, 0, tz="Asia/Tokyo")  # 2026-11-24 23:00 UTC
    assert dag_module.run_days(None, None, tokyo) == (date(2026, 11, 23), date(2026, 11, 24))
    # With a data interval, the interval decides and run_after is ignored.
    start = datetime(2020, 1, 1, 0, 15, tzinfo=UTC)
    assert dag_module.run_days(start, start + timedelta(days=1), triggered) == (
        date(2020, 1, 1),
        date(2020, 1, 2),
    )


def _candle(module: ModuleType, symbol: str, o: str, h: str, low: str, c: str, v: str) -> Any:
    return module.Candle(symbol, Decimal(o), Decimal(h), Decimal(low), Decimal(c), Decimal(v), 3)


def test_quality_passes_a_sound_day(dag_module: ModuleType) -> None:
    candles = [
        _candle(dag_module, "BTCUSDT", "7195.24", "7255.00", "7175.15", "7200.85", "16792.388165")
    ]
    assert dag_module.quality_failures(("BTCUSDT",), candles) == []


def test_quality_lists_every_failure(dag_module: ModuleType) -> None:
    candles = [
        _candle(dag_module, "BTCUSDT", "10", "12", "11", "12", "1"),  # low above open
        _candle(dag_module, "BNBUSDT", "10", "9", "8", "9", "1"),  # high below open
        _candle(dag_module, "XRPUSDT", "1", "1", "1", "1", "0"),  # no volume
    ]
    failures = dag_module.quality_failures(("BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT"), candles)
    assert failures == [
        "ETHUSDT: no rows in staging.raw_prices that day (no candle)",
        "BNBUSDT: high 9 below open 10 or close 9",
        "BTCUSDT: low 11 above open 10 or close 12",
        "XRPUSDT: volume 0 is not > 0 (3 trades)",
    ]


def test_settings_split_and_normalise_symbols(
    dag_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BINANCE_SYMBOLS", " btcusdt, ETHUSDT,,btcusdt ")
    monkeypatch.setenv("RAW_RETENTION_DAYS", "9")
    settings = dag_module.DagSettings()
    assert settings.expected_symbols == ("BTCUSDT", "ETHUSDT")
    assert settings.raw_retention_days == 9
