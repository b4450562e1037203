"""
# get_daily_summary

The daily candle of every symbol, computed in PostgreSQL from `staging.raw_prices` (written by
the Spark consumer) into `analytics.daily_summary_dw` (read by analysts in psql and by the
views `analytics.daily_candles` / `analytics.latest_prices`). Guide: `docs/warehouse.md`.

**Schedule.** Every day at 00:15 UTC (`CronTriggerTimetable("15 0 * * *", interval=1 day)`);
the run that triggers at `D+1 00:15` has the data interval `[D 00:15, D+1 00:15)` and
summarises the UTC day **D = the UTC date of `data_interval_start`** — never "now", so
retries, catch-up runs and backfills always recompute their own day.

**Tasks** (each idempotent, retried twice):
1. `make_partitions` — `CALL staging.ensure_raw_prices_partitions(...)`: day partitions from D
   to the run's end date + 3, so the consumer finds tomorrow's partition ready.
2. `summarize_day` — `CALL analytics.get_daily_summary(D)`: upsert of one candle per symbol.
3. `check_data_quality` — every symbol in `BINANCE_SYMBOLS` has a candle for D (so had rows),
   `low <= open, close <= high`, `volume > 0`; unfilled feed gaps touching D are logged as
   warnings. A failed check **fails the task without retrying** (the data will not change by
   itself) with one message listing every failure, and the purge does not run.
4. `purge_raw_prices` — `CALL analytics.purge_raw_prices(RAW_RETENTION_DAYS, end date)`:
   drops whole day partitions older than the retention window (candles are kept).

**Backfill.** `catchup=True`. A run's logical date is its data-interval start (the run at
2026-11-24 00:15 shows as 2026-11-23 00:15 and summarises 2026-11-23). The UI's
*Trigger → Backfill* from A+1 00:00 to B+1 00:15 (UTC) re-runs the days A .. B, e.g.
`airflow backfill create --dag-id get_daily_summary --from-date 2026-11-20
--to-date 2026-11-23T00:15:00+00:00` for 2026-11-19 .. 2026-11-22.
`airflow dags test get_daily_summary 2020-01-02` summarises 2020-01-01 (see the start date).

**Start date** 2026-11-24 = the first UTC day the scheduler summarises (env
`DAILY_SUMMARY_START_DATE` overrides it). Airflow creates no task for a run (other than a
backfill) whose logical date is before the start date: the first catch-up run, for the day
before the start date, completes empty, and `dags test` or a manual trigger of an older day
needs `DAILY_SUMMARY_START_DATE` at or before it. Backfills are exempt.

**Connection** `pipeline_postgres` (env `AIRFLOW_CONN_PIPELINE_POSTGRES`). Nothing touches the
database or Variables at parse time (only the environment is read).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import pendulum
from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

CONN_ID = "pipeline_postgres"
PARTITION_DAYS_AHEAD = 3


class WarehouseDagError(Exception):
    """Base error of the get_daily_summary DAG."""


class DataQualityError(WarehouseDagError):
    """The day's candles failed one or more data-quality checks."""


class DagSettings(BaseSettings):
    """The DAG's settings, read from the environment once per task process (never at parse time)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    binance_symbols: str = "BTCUSDT,ETHUSDT,BNBUSDT"
    raw_retention_days: int = 7
    # First UTC day the scheduler summarises (runs with an earlier logical date get no tasks,
    # backfills excepted). Fixed; move it back only to `dags test` old days by hand.
    daily_summary_start_date: date = date(2026, 11, 24)

    @property
    def expected_symbols(self) -> tuple[str, ...]:
        """Configured symbols, upper case, in their order, without blanks or repeats."""
        seen: dict[str, None] = {}
        for raw in self.binance_symbols.split(","):
            if raw.strip():
                seen[raw.strip().upper()] = None
        return tuple(seen)


@lru_cache(maxsize=1)
def get_settings() -> DagSettings:
    return DagSettings()


@dataclass(frozen=True)
class Candle:
    """One analytics.daily_summary_dw row, as the data-quality check reads it."""

    symbol: str
    open_price: Decimal
    high_price: Decimal
    low_price: Decimal
    close_price: Decimal
    volume: Decimal
    trade_count: int


@dataclass(frozen=True)
class Gap:
    """One analytics.unfilled_gaps row touching the checked day."""

    symbol: str
    stream: str
    first_missing_id: int
    last_missing_id: int | None
    window_start: datetime
    window_end: datetime
    unfilled_count: int
    reason: str


def summary_day(data_interval_start: datetime) -> date:
    """The UTC day a run summarises: the UTC date of its data-interval start."""
    return pendulum.instance(data_interval_start).in_timezone("UTC").date()


def quality_failures(expected_symbols: Sequence[str], candles: Iterable[Candle]) -> list[str]:
    """Every data-quality failure of one day's candles, as readable lines (empty: all good)."""
    by_symbol = {c.symbol: c for c in candles}
    failures = [
        f"{symbol}: no rows in staging.raw_prices that day (no candle)"
        for symbol in expected_symbols
        if symbol not in by_symbol
    ]
    for symbol in sorted(by_symbol):
        c = by_symbol[symbol]
        if c.low_price > min(c.open_price, c.close_price):
            failures.append(
                f"{symbol}: low {c.low_price} above open {c.open_price} or close {c.close_price}"
            )
        if c.high_price < max(c.open_price, c.close_price):
            failures.append(
                f"{symbol}: high {c.high_price} below open {c.open_price} or close {c.close_price}"
            )
        if not c.volume > 0:
            failures.append(f"{symbol}: volume {c.volume} is not > 0 ({c.trade_count} trades)")
    return failures


def describe_gap(gap: Gap) -> str:
    last = gap.last_missing_id if gap.last_missing_id is not None else "?"
    return (
        f"{gap.symbol} {gap.stream}: ids {gap.first_missing_id}..{last} "
        f"({gap.unfilled_count} unfilled) between {gap.window_start.isoformat()} and "
        f"{gap.window_end.isoformat()}: {gap.reason}"
    )


def _connect() -> Any:
    """An autocommit DB-API connection on `pipeline_postgres` (psycopg 3 or 2: the hook picks)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    connection: Any = PostgresHook(postgres_conn_id=CONN_ID).get_conn()
    connection.autocommit = True  # each CALL is its own transaction
    return connection


def _call(statement: str, params: Sequence[object]) -> list[str]:
    """Runs one CALL and returns the NOTICE messages the procedure raised."""
    connection = _connect()
    notices: list[str] = []
    if hasattr(connection, "add_notice_handler"):  # psycopg 3
        connection.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
        notices.extend(str(n).strip() for n in getattr(connection, "notices", []))  # psycopg 2
    finally:
        connection.close()
    for notice in notices:
        logger.info("postgres: %s", notice)
    return notices


def _fetch(query: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
    connection = _connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(query, params)
            return list(cursor.fetchall())
    finally:
        connection.close()


def run_days(
    data_interval_start: datetime | None,
    data_interval_end: datetime | None,
    run_after: datetime,
) -> tuple[date, date]:
    """(UTC day to summarise, UTC date of the data-interval end) of a run.

    Airflow 3 lets a user trigger a run from the UI without a logical date; such a run has no
    data interval, so it summarises the UTC day before it was triggered (`run_after`, fixed
    for the run, so a re-run picks the same day), like the procedure's own default.
    """
    if data_interval_start is None or data_interval_end is None:
        end_day = pendulum.instance(run_after).in_timezone("UTC").date()
        return end_day - timedelta(days=1), end_day
    end_day = pendulum.instance(data_interval_end).in_timezone("UTC").date()
    return summary_day(data_interval_start), end_day


def _run_days() -> tuple[date, date]:
    """run_days() of the running task."""
    context = get_current_context()
    return run_days(
        context.get("data_interval_start"),
        context.get("data_interval_end"),
        context["dag_run"].run_after,
    )


@dag(
    dag_id="get_daily_summary",
    schedule=CronTriggerTimetable("15 0 * * *", timezone="UTC", interval=timedelta(days=1)),
    start_date=pendulum.datetime(
        *get_settings().daily_summary_start_date.timetuple()[:3], tz="UTC"
    ),
    catchup=True,
    max_active_runs=1,
    default_args={
        "owner": "warehouse",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(minutes=30),
    },
    tags=["warehouse", "binance", "daily"],
    doc_md=__doc__,
)
def get_daily_summary() -> None:
    @task
    def make_partitions() -> str:
        day, end_day = _run_days()
        days_ahead = (end_day - day).days + PARTITION_DAYS_AHEAD
        _call("call staging.ensure_raw_prices_partitions(%s, %s)", (days_ahead, day))
        return f"partitions {day} .. {day + timedelta(days=days_ahead)}"

    @task
    def summarize_day() -> str:
        day, _ = _run_days()
        notices = _call("call analytics.get_daily_summary(%s)", (day,))
        return "; ".join(notices) or f"summarised {day}"

    @task
    def check_data_quality() -> dict[str, object]:
        day, _ = _run_days()
        settings = get_settings()
        candles = [
            Candle(*row)
            for row in _fetch(
                "select symbol, open_price, high_price, low_price, close_price, volume, "
                "trade_count from analytics.daily_summary_dw where event_date = %s "
                "order by symbol",
                (day,),
            )
        ]
        gaps = [
            Gap(*row)
            for row in _fetch(
                "select symbol, stream, first_missing_id, last_missing_id, window_start, "
                "window_end, unfilled_count, reason from analytics.unfilled_gaps "
                "where first_day <= %s and last_day >= %s order by symbol, window_start",
                (day, day),
            )
        ]
        for gap in gaps:
            logger.warning("unfilled feed gap on %s: %s", day, describe_gap(gap))
        failures = quality_failures(settings.expected_symbols, candles)
        if failures:
            message = f"data quality failed for {day} ({len(failures)} problem(s)):\n" + "\n".join(
                f"  - {line}" for line in failures
            )
            logger.error("%s", message)
            # Retrying cannot change the data: fail at once, keep the raw rows (no purge).
            raise AirflowFailException(message)
        logger.info("data quality ok for %s: %d candle(s)", day, len(candles))
        return {
            "day": day.isoformat(),
            "candles": len(candles),
            "unfilled_gaps": [describe_gap(g) for g in gaps],
        }

    @task
    def purge_raw_prices() -> str:
        _, end_day = _run_days()
        keep_days = get_settings().raw_retention_days
        notices = _call("call analytics.purge_raw_prices(%s, %s)", (keep_days, end_day))
        return "; ".join(notices)

    make_partitions() >> summarize_day() >> check_data_quality() >> purge_raw_prices()


get_daily_summary()
