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
    assert sorted(dagbag.dags) == ["get_daily_summary", "refresh_recent_candles"]


def test_refresh_recent_candles_runs_every_few_minutes_one_at_a_time(dagbag: Any) -> None:
    dag = dagbag.dags["refresh_recent_candles"]
    assert dag.task_ids == ["refresh_recent_minutes"]
    assert dag.timetable.expression == "*/5 * * * *"
    assert dag.catchup is False and dag.start_date is None
    assert dag.max_active_runs == 1
    assert dag.is_paused_upon_creation is False
    assert all(task.retries >= 2 for task in dag.tasks)


def test_a_backfill_of_the_start_time_d_plus_1_gives_the_run_dated_d(dagbag: Any) -> None:
    """The docs' backfill rule: a backfill's bounds are run start times (the restriction
    Airflow's backfill hands the timetable), the run starting at D+1 00:00 is dated D."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    # the scheduler's (serialised) DAG, whose timetable the backfill asks
    dag = dagbag.dags["get_daily_summary"]
    timetable = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable
    bound = pendulum.datetime(2020, 1, 2, tz="UTC")
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(bound, bound, True)
    )
    assert info is not None and info.data_interval is not None
    assert info.logical_date == datetime(2020, 1, 1, tzinfo=UTC)
    assert (info.data_interval.start, info.data_interval.end, info.run_after) == (
        datetime(2020, 1, 1, tzinfo=UTC), bound, bound
    )  # fmt: skip
    # bounds around a day that hold no start time give no run at all
    inside = TimeRestriction(bound - timedelta(hours=23), bound - timedelta(hours=1), True)
    assert timetable.next_dagrun_info(last_automated_data_interval=None, restriction=inside) is None


def test_get_daily_summary_tasks_schedule_and_retries(dagbag: Any) -> None:
    dag = dagbag.dags["get_daily_summary"]
    order = [
        "make_partitions", "wait_for_day", "summarize_day", "reconcile_with_exchange",
        "check_data_quality", "recheck_recent_days", "purge_raw_prices",
    ]  # fmt: skip
    assert sorted(dag.task_ids) == sorted(order)
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert dag.get_task("make_partitions").upstream_task_ids == set()
    # a new deployment queues nothing for days it never saw: no start date, no catch-up,
    # and the first scheduled run waits for the next midnight (run_immediately False)
    assert dag.catchup is False
    assert dag.start_date is None
    assert dag.max_active_runs == 1
    assert dag.timetable.expression == "0 0 * * *"
    assert str(dag.timetable.timezone) in {"UTC", "Timezone('UTC')"}
    assert dag.timetable.interval == timedelta(days=1)
    assert all(task.retries >= 2 for task in dag.tasks)
    sensor = dag.get_task("wait_for_day")
    assert sensor.mode == "reschedule"  # holds no worker slot while it waits
    assert dag.doc_md and "The run with logical date **D** (UTC) summarises" in dag.doc_md
    assert {"warehouse", "daily"} <= set(dag.tags)


def test_the_run_dated_d_summarises_d_and_scheduled_runs_cover_exactly_that_day(
    dagbag: Any, dag_module: ModuleType
) -> None:
    from airflow.serialization.encoders import coerce_to_core_timetable

    timetable = coerce_to_core_timetable(dagbag.dags["get_daily_summary"].timetable)
    # the scheduled run created at 2026-11-25 00:00 UTC: data interval = the day 11-24
    info = _first_run(timetable, datetime(2026, 11, 24, 12, tzinfo=UTC))
    assert info is not None
    assert (info.data_interval.start, info.data_interval.end) == (
        datetime(2026, 11, 24, tzinfo=UTC),
        datetime(2026, 11, 25, tzinfo=UTC),
    )
    assert info.logical_date == datetime(2026, 11, 24, tzinfo=UTC)
    assert dag_module.run_day(info.logical_date, info.run_after) == date(2026, 11, 24)
    assert dag_module.run_day(datetime(2020, 1, 1, tzinfo=UTC), datetime.now(UTC)) == date(
        2020, 1, 1
    )


def _first_run(timetable: Any, now: datetime) -> Any:
    """The first run the scheduler creates for a new deployment at `now` (no catch-up)."""
    from unittest import mock

    import pendulum
    from airflow.timetables.base import TimeRestriction

    restriction = TimeRestriction(earliest=None, latest=None, catchup=False)
    with mock.patch("airflow.timetables.trigger.utcnow", return_value=pendulum.instance(now)):
        return timetable.next_dagrun_info(
            last_automated_data_interval=None, restriction=restriction
        )


def test_run_day_is_the_utc_date_even_for_a_non_utc_datetime(dag_module: ModuleType) -> None:
    import pendulum

    tokyo_morning = pendulum.datetime(2024, 3, 10, 8, 0, tz="Asia/Tokyo")  # 2024-03-09 23:00 UTC
    assert dag_module.run_day(tokyo_morning, tokyo_morning) == date(2024, 3, 9)


def test_a_ui_trigger_without_logical_date_summarises_the_utc_day_before_it(
    dag_module: ModuleType,
) -> None:
    # Airflow 3's "Trigger" button may create a run with no logical date and no data interval.
    triggered = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)
    assert dag_module.run_day(None, triggered) == date(2026, 11, 23)
    import pendulum

    tokyo = pendulum.datetime(2026, 11, 25, 8, 0, tz="Asia/Tokyo")  # 2026-11-24 23:00 UTC
    assert dag_module.run_day(None, tokyo) == date(2026, 11, 23)


def test_schedule_none_and_catch_up_need_what_they_say(
    dag_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert dag_module._schedule(dag_module.DagSettings(daily_summary_schedule="none")) is None
    with pytest.raises(dag_module.WarehouseDagError, match="DAILY_SUMMARY_START_DATE"):
        dag_module._start_date(dag_module.DagSettings(daily_summary_catchup=True))
    start = dag_module._start_date(
        dag_module.DagSettings(daily_summary_catchup=True, daily_summary_start_date="2020-01-01")
    )
    assert start == datetime(2020, 1, 1, tzinfo=UTC)


def _candle(
    module: ModuleType, symbol: str, o: str, h: str, low: str, c: str, v: str, source: str = "trade"
) -> Any:
    return module.Candle(
        symbol, Decimal(o), Decimal(h), Decimal(low), Decimal(c), Decimal(v), 3, source
    )


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


def test_ticker_only_candles_get_no_volume_check(dag_module: ModuleType) -> None:
    ticker = _candle(dag_module, "XRPUSDT", "1", "1.2", "0.9", "1.1", "0", source="miniTicker")
    assert dag_module.quality_failures(("XRPUSDT",), [ticker]) == []


def test_settings_split_and_normalise_symbols(
    dag_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BINANCE_SYMBOLS", " btcusdt, ETHUSDT,,btcusdt ")
    monkeypatch.setenv("RAW_RETENTION_DAYS", "9")
    settings = dag_module.DagSettings()
    assert settings.expected_symbols == ("BTCUSDT", "ETHUSDT")
    assert settings.raw_retention_days == 9
