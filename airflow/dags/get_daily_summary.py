"""
# get_daily_summary

The daily candle of every symbol, computed in PostgreSQL from `staging.raw_prices` (written by
the Spark consumer) into `analytics.daily_summary_dw`, its one-minute candles into
`analytics.candles_1m`, and checked against the exchange's own klines. Guide: `docs/warehouse.md`.

**Which run covers which day (the one rule).** The run with logical date **D** (UTC) summarises
the UTC day **D** = `[D 00:00, D+1 00:00)`. The scheduled run for D is created at D+1 00:00 UTC
(`CronTriggerTimetable("0 0 * * *", interval=1 day)`: data interval = the day) and first waits
until the day is complete. A run without a logical date (Airflow 3's plain *Trigger*)
summarises the UTC day before it was triggered. Never "now": retries and backfills redo their
own day.

**Tasks** (each idempotent):
1. `make_partitions` - day partitions D .. D+4, so the consumer finds tomorrow's ready.
2. `wait_for_day` - a sensor in *reschedule* mode (no worker slot while it waits): the day is
   complete when every symbol's committed events passed D+1 00:00 + `DAILY_SUMMARY_GRACE_S`, or
   the consumer is caught up (lag 0 in its fresh progress record, `staging.consumer_progress`)
   and the symbol idle for `DAILY_SUMMARY_IDLE_S`. After `DAILY_SUMMARY_WAIT_LIMIT_S` it fails
   naming each symbol's lag.
3. `summarize_day` - `CALL analytics.get_daily_summary(D)` (with trade-id completeness) and
   `CALL analytics.refresh_candles_1m(D)`.
4. `reconcile_with_exchange` - fetches the exchange's 1d and 1m klines for D from
   `BINANCE_REST_URL` into `analytics.exchange_klines` and gives each candle a status
   (`reconciled` / `mismatch` / `incomplete` / `unverified`). On a mismatch it re-fetches the
   differing minutes' trades from REST, produces them to Kafka (`source = "rest"`), waits until
   the consumer committed them, re-summarises and checks again; still different: the task
   fails listing the minutes and the differences. An unreachable exchange leaves `unverified`.
5. `check_data_quality` - every configured symbol that had data before D has a candle;
   `low <= open, close <= high`; `volume > 0` for trade candles (ticker-only candles have no
   volume). A failure fails at once (no retry: the data will not change by itself).
6. `recheck_recent_days` - the retained days before D whose rows changed after their candle
   (late events, REST fills) are re-summarised and re-reconciled.
7. `purge_raw_prices` - drops raw partitions older than `RAW_RETENTION_DAYS` (their one-minute
   candles are kept in `analytics.candles_1m`).

**No start date, no catch-up** (Airflow 3's default; `DAILY_SUMMARY_CATCHUP=true` with
`DAILY_SUMMARY_START_DATE` turns it on): a new deployment's first scheduled run is for the day
that ends after it was deployed. `DAILY_SUMMARY_SCHEDULE=none` turns the schedule off (the demo:
it replays a past day and triggers that day's run itself).

**Backfill** any past day, also from the UI (*Trigger* -> *Backfill*) and the REST API. A
backfill's dates are the runs' start times (Airflow's rule for a trigger timetable): the run
starting at D+1 00:00 is dated D and summarises D, so **to summarise the days A .. B, backfill
from A+1 to B+1**. CLI, for the day 2020-01-01:
`airflow backfill create --dag-id get_daily_summary --from-date 2020-01-02 --to-date 2020-01-02`.
`airflow dags test get_daily_summary 2020-01-01` runs the day 2020-01-01 in the foreground.

**Connection** `pipeline_postgres` (env `AIRFLOW_CONN_PIPELINE_POSTGRES`). Nothing touches the
database or Variables at parse time (only the environment is read).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import BaseSensorOperator, CronTriggerTimetable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from pydantic_settings import BaseSettings, SettingsConfigDict

# The helpers live beside this file (warehouse_checks/); Airflow puts the DAGs folder on
# sys.path in its own processes, a DagBag built elsewhere (tests, tools) may not.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from warehouse_checks.exchange import ExchangeClient, ExchangeError, Kline
from warehouse_checks.readiness import (
    ConsumerProgress,
    SymbolProgress,
    day_end,
    day_readiness,
)
from warehouse_checks.refill import (
    fetch_run_trades,
    minute_runs,
    produce,
    trade_event,
    wait_until,
)

logger = logging.getLogger(__name__)

CONN_ID = "pipeline_postgres"
PARTITION_DAYS_AHEAD = 3
DAY_MS = 86_400_000


class WarehouseDagError(Exception):
    """Base error of the get_daily_summary DAG."""


class DataQualityError(WarehouseDagError):
    """The day's candles failed one or more data-quality checks."""


class DagSettings(BaseSettings):
    """The DAG's settings, read from the environment (schedule at parse time, rest per task)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    binance_symbols: str = "BTCUSDT,ETHUSDT,BNBUSDT"
    binance_rest_url: str = "https://api.binance.com"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prices: str = "binance.prices"
    raw_retention_days: int = 7
    # cron expression in UTC, or "none": runs only when triggered or backfilled (the demo)
    daily_summary_schedule: str = "0 0 * * *"
    daily_summary_catchup: bool = False
    daily_summary_start_date: date | None = None  # only needed with catch-up
    daily_summary_grace_s: float = 300.0  # events up to day end + grace make the day complete
    daily_summary_idle_s: float = (
        120.0  # ... or the consumer caught up and the symbol idle this long
    )
    daily_summary_progress_max_age_s: float = 120.0  # older consumer progress = consumer down
    daily_summary_wait_limit_s: float = 6 * 3600.0  # the sensor fails after this, naming the lag
    daily_summary_poke_s: float = 60.0
    daily_summary_refill_max_trades: int = 200_000  # REST trades fetched per symbol and day
    daily_summary_refill_wait_s: float = 600.0  # until the consumer committed the refill

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
    candle_source: str = "trade"


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


def run_day(logical_date: datetime | None, run_after: datetime) -> date:
    """The UTC day a run summarises: its logical date's; without one, the day before run_after."""
    if logical_date is not None:
        return pendulum.instance(logical_date).in_timezone("UTC").date()
    return pendulum.instance(run_after).in_timezone("UTC").date() - timedelta(days=1)


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
        # ticker prices carry no quantities: a ticker-only candle has no volume by definition
        if c.candle_source == "trade" and not c.volume > 0:
            failures.append(f"{symbol}: volume {c.volume} is not > 0 ({c.trade_count} trades)")
    return failures


def describe_gap(gap: Gap) -> str:
    last = gap.last_missing_id if gap.last_missing_id is not None else "?"
    return (
        f"{gap.symbol} {gap.stream}: ids {gap.first_missing_id}..{last} "
        f"({gap.unfilled_count} unfilled) between {gap.window_start.isoformat()} and "
        f"{gap.window_end.isoformat()}: {gap.reason}"
    )


def describe_difference(symbol: str, difference: dict[str, Any]) -> str:
    """`BTCUSDT 1m 2020-01-01T00:37: trade_count ours 0 / exchange 131, ...`."""
    ours, theirs = difference.get("ours") or {}, difference.get("exchange") or {}
    fields = ", ".join(
        f"{f} ours {ours.get(f, '-')} / exchange {theirs.get(f, '-')}"
        for f in difference.get("fields") or []
    )
    return f"{symbol} {difference['interval']} {str(difference['open_time'])[:16]}: {fields}"


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


def _run_day() -> date:
    """run_day() of the running task."""
    context = get_current_context()
    return run_day(context.get("logical_date"), context["dag_run"].run_after)


def _ms(day: date) -> int:
    return int(day_end(day - timedelta(days=1)).timestamp() * 1000)


# ----------------------------------------------------------------------------- completeness


def readiness_now(day: date) -> Any:
    settings = get_settings()
    consumer_rows = _fetch(
        "select consumer, kafka_lag, progress_at, updated_at from staging.consumer_progress "
        "order by updated_at desc limit 1",
        (),
    )
    symbol_rows = _fetch(
        "select symbol, stream, newest_event_time, changed_at "
        "from staging.consumer_symbol_progress",
        (),
    )
    now_rows = _fetch("select now()", ())
    return day_readiness(
        day,
        settings.expected_symbols,
        ConsumerProgress(*consumer_rows[0]) if consumer_rows else None,
        [SymbolProgress(*row) for row in symbol_rows],
        now=now_rows[0][0],
        grace=timedelta(seconds=settings.daily_summary_grace_s),
        idle=timedelta(seconds=settings.daily_summary_idle_s),
        max_age=timedelta(seconds=settings.daily_summary_progress_max_age_s),
    )


class DayCompleteSensor(BaseSensorOperator):
    """Waits (rescheduling, no worker slot held) until the run's day is complete."""

    def poke(self, context: Any) -> bool:
        day = run_day(context.get("logical_date"), context["dag_run"].run_after)
        readiness = readiness_now(day)
        if readiness.complete:
            logger.info("day %s complete: %s", day, readiness.describe())
            return True
        first = context["ti"].get_first_reschedule_date(context) or datetime.now(UTC)
        waited = (datetime.now(UTC) - first).total_seconds()
        limit = get_settings().daily_summary_wait_limit_s
        if waited >= limit:
            raise AirflowFailException(
                f"day {day} still incomplete after waiting {waited:.0f} s "
                f"(DAILY_SUMMARY_WAIT_LIMIT_S={limit:.0f}): " + "; ".join(readiness.waiting)
            )
        logger.info("waiting for day %s (%.0f s so far): %s", day, waited, readiness.describe())
        return False


# ----------------------------------------------------------------------------- reconciliation


def store_klines(symbol: str, interval: str, klines: Sequence[Kline]) -> None:
    connection = _connect()
    try:
        with connection.cursor() as cursor:
            for k in klines:
                cursor.execute(
                    "insert into analytics.exchange_klines (symbol, kline_interval, open_time, "
                    "close_time, open_price, high_price, low_price, close_price, volume, "
                    "quote_volume, trade_count, taker_buy_volume, taker_buy_quote_volume, "
                    "fetched_at) values (%s, %s, to_timestamp(%s / 1000.0), "
                    "to_timestamp(%s / 1000.0), %s, %s, %s, %s, %s, %s, %s, %s, %s, now()) "
                    "on conflict (symbol, kline_interval, open_time) do update set "
                    "close_time = excluded.close_time, open_price = excluded.open_price, "
                    "high_price = excluded.high_price, low_price = excluded.low_price, "
                    "close_price = excluded.close_price, volume = excluded.volume, "
                    "quote_volume = excluded.quote_volume, trade_count = excluded.trade_count, "
                    "taker_buy_volume = excluded.taker_buy_volume, "
                    "taker_buy_quote_volume = excluded.taker_buy_quote_volume, "
                    "fetched_at = excluded.fetched_at",
                    (
                        symbol, interval, k.open_time_ms, k.close_time_ms, k.open_price,
                        k.high_price, k.low_price, k.close_price, k.volume, k.quote_volume,
                        k.trade_count, k.taker_buy_volume, k.taker_buy_quote_volume,
                    ),
                )  # fmt: skip
    finally:
        connection.close()


def reconciliation(day: date, symbol: str) -> tuple[str | None, list[dict[str, Any]], str | None]:
    rows = _fetch(
        "select status, differences, detail from analytics.daily_reconciliation "
        "where event_date = %s and symbol = %s",
        (day, symbol),
    )
    if not rows:
        return None, [], None
    status, differences, detail = rows[0]
    return status, list(differences or []), detail


def fetch_and_compare(client: ExchangeClient, day: date, symbols: Sequence[str]) -> None:
    """Stores the exchange's klines of `day` and records each symbol's status."""
    start_ms = _ms(day)
    try:
        server_ms = client.server_time_ms()
    except ExchangeError as err:
        for symbol in symbols:
            _call(
                "call analytics.reconcile_day(%s, %s, 'unreachable', %s)", (day, symbol, str(err))
            )
        return
    for symbol in symbols:
        if server_ms < start_ms + DAY_MS:
            _call("call analytics.reconcile_day(%s, %s, 'open')", (day, symbol))
            continue
        try:
            store_klines(symbol, "1d", client.klines(symbol, "1d", start_ms, start_ms))
            store_klines(symbol, "1m", client.klines(symbol, "1m", start_ms, start_ms + DAY_MS - 1))
        except ExchangeError as err:
            _call(
                "call analytics.reconcile_day(%s, %s, 'unreachable', %s)", (day, symbol, str(err))
            )
            continue
        _call("call analytics.reconcile_day(%s, %s)", (day, symbol))


def refill_from(day: date, symbol: str, run_start_ms: int, run_end_ms: int) -> int | None:
    """The trade id to page historicalTrades from for the minutes [run_start, run_end)."""
    before = _fetch(
        "select sequence_id from staging.raw_prices where symbol = %s and stream = 'trade' "
        "and event_time < to_timestamp(%s / 1000.0) and event_time >= %s::date "
        "order by event_time desc, sequence_id desc limit 1",
        (symbol, run_start_ms, day),
    )
    if before:
        return int(before[0][0]) + 1
    # no trade before the run that day: the first stored trade after it, minus the exchange's
    # trade counts of the run's minutes (trade ids are consecutive per symbol on Binance)
    after = _fetch(
        "select sequence_id from staging.raw_prices where symbol = %s and stream = 'trade' "
        "and event_time >= to_timestamp(%s / 1000.0) and event_time < %s::date + 1 "
        "order by event_time, sequence_id limit 1",
        (symbol, run_end_ms, day),
    )
    counts = _fetch(
        "select coalesce(sum(trade_count), 0) from analytics.exchange_klines where symbol = %s "
        "and kline_interval = '1m' and open_time >= to_timestamp(%s / 1000.0) "
        "and open_time < to_timestamp(%s / 1000.0)",
        (symbol, run_start_ms, run_end_ms),
    )
    if not after:
        return None
    return max(int(after[0][0]) - int(counts[0][0]), 0)


def refill_symbol(client: ExchangeClient, day: date, symbol: str) -> str:
    """Re-fetches the differing minutes' trades through Kafka; returns what it did."""
    settings = get_settings()
    _, differences, _ = reconciliation(day, symbol)
    minutes = [
        int(pendulum.parse(str(d["open_time"])).timestamp() * 1000)  # type: ignore[union-attr]
        for d in differences
        if d["interval"] == "1m"
    ]
    events: list[bytes] = []
    ids: list[int] = []
    received_at_us = int(time.time() * 1_000_000)
    for run in minute_runs(minutes):
        from_id = refill_from(day, symbol, run.start_ms, run.end_ms)
        if from_id is None:
            logger.warning("%s: no stored trade near %s to start a refill from", symbol, run)
            continue
        for trade in fetch_run_trades(
            client, symbol, from_id, run, settings.daily_summary_refill_max_trades
        ):
            events.append(trade_event(symbol, trade, received_at_us))
            ids.append(int(trade["id"]))
    if not events:
        return f"{symbol}: the exchange gave back no trades for {len(minutes)} differing minute(s)"
    produce(settings.kafka_bootstrap_servers, settings.kafka_topic_prices, symbol, events)
    wanted = sorted(set(ids))

    def committed() -> bool:
        rows = _fetch(
            "select count(distinct sequence_id) from staging.raw_prices where symbol = %s "
            "and stream = 'trade' and event_time >= %s::date and event_time < %s::date + 1 "
            "and sequence_id = any(%s)",
            (symbol, day, day, wanted),
        )
        return int(rows[0][0]) >= len(wanted)

    if not wait_until(committed, settings.daily_summary_refill_wait_s):
        raise AirflowFailException(
            f"{symbol}: {len(wanted)} trade(s) refilled from REST into "
            f"{settings.kafka_topic_prices} were not committed by the consumer within "
            f"{settings.daily_summary_refill_wait_s:.0f} s ({readiness_now(day).describe()})"
        )
    return f"{symbol}: {len(wanted)} trade(s) of {len(minutes)} minute(s) refilled from REST"


def summarise(day: date) -> list[str]:
    notices = _call("call analytics.get_daily_summary(%s)", (day,))
    notices += _call("call analytics.refresh_candles_1m(%s)", (day,))
    return notices


def reconcile_day_with_exchange(day: date, symbols: Sequence[str] | None = None) -> dict[str, Any]:
    """Compare, refill what differs, re-summarise, compare again; fail on a lasting mismatch."""
    settings = get_settings()
    if symbols is None:
        symbols = [
            row[0]
            for row in _fetch(
                "select symbol from analytics.daily_summary_dw where event_date = %s "
                "order by symbol",
                (day,),
            )
        ]
    try:
        client = ExchangeClient(settings.binance_rest_url)
    except ExchangeError as err:
        for symbol in symbols:
            _call(
                "call analytics.reconcile_day(%s, %s, 'unreachable', %s)", (day, symbol, str(err))
            )
        client = None
    if client is not None:
        fetch_and_compare(client, day, symbols)
    refilled: list[str] = []
    mismatched = [s for s in symbols if reconciliation(day, s)[0] == "mismatch"]
    if mismatched and client is not None:
        for symbol in mismatched:
            refilled.append(refill_symbol(client, day, symbol))
            logger.info("%s", refilled[-1])
        summarise(day)
        fetch_and_compare(client, day, mismatched)
    outcome = {s: reconciliation(day, s) for s in symbols}
    for symbol, (status, _, detail) in outcome.items():
        if status in ("unverified", "incomplete"):
            logger.warning("%s %s: %s (%s)", symbol, day, status, detail)
    lasting = {s: diffs for s, (status, diffs, _) in outcome.items() if status == "mismatch"}
    if lasting:
        lines = [describe_difference(s, d) for s, diffs in lasting.items() for d in diffs]
        message = (
            f"candles of {day} differ from the exchange's klines after a REST refill "
            f"({'; '.join(refilled) or 'nothing refilled'}):\n"
            + "\n".join(f"  - {x}" for x in lines)
        )
        logger.error("%s", message)
        raise AirflowFailException(message)
    return {
        "day": day.isoformat(),
        "status": {s: status for s, (status, _, _) in outcome.items()},
        "refilled": refilled,
    }


# ----------------------------------------------------------------------------- the DAG


def _schedule(settings: DagSettings) -> CronTriggerTimetable | None:
    expression = settings.daily_summary_schedule.strip()
    if expression.lower() in ("", "none"):
        return None
    return CronTriggerTimetable(expression, timezone="UTC", interval=timedelta(days=1))


def _start_date(settings: DagSettings) -> datetime | None:
    if settings.daily_summary_start_date is None:
        if settings.daily_summary_catchup:
            raise WarehouseDagError(
                "DAILY_SUMMARY_CATCHUP=true needs DAILY_SUMMARY_START_DATE (the first day)"
            )
        return None
    return pendulum.datetime(*settings.daily_summary_start_date.timetuple()[:3], tz="UTC")


@dag(
    dag_id="get_daily_summary",
    schedule=_schedule(get_settings()),
    start_date=_start_date(get_settings()),
    catchup=get_settings().daily_summary_catchup,
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
    settings = get_settings()

    @task
    def make_partitions() -> str:
        day = _run_day()
        days_ahead = 1 + PARTITION_DAYS_AHEAD
        _call("call staging.ensure_raw_prices_partitions(%s, %s)", (days_ahead, day))
        return f"partitions {day} .. {day + timedelta(days=days_ahead)}"

    wait_for_day = DayCompleteSensor(
        task_id="wait_for_day",
        mode="reschedule",
        poke_interval=settings.daily_summary_poke_s,
        timeout=settings.daily_summary_wait_limit_s + 3 * settings.daily_summary_poke_s,
        execution_timeout=None,
    )

    @task
    def summarize_day() -> str:
        return "; ".join(summarise(_run_day()))

    @task
    def reconcile_with_exchange() -> dict[str, Any]:
        return reconcile_day_with_exchange(_run_day())

    @task
    def check_data_quality() -> dict[str, object]:
        day = _run_day()
        candles = [
            Candle(*row)
            for row in _fetch(
                "select symbol, open_price, high_price, low_price, close_price, volume, "
                "trade_count, candle_source from analytics.daily_summary_dw "
                "where event_date = %s order by symbol",
                (day,),
            )
        ]
        # a configured symbol must have a candle on D once it had data before D (a symbol
        # added later, or a replay of another period, is not missing)
        expected = [
            row[0]
            for row in _fetch(
                "select s.symbol from unnest(%s::text[]) with ordinality as s(symbol, n) "
                "where exists (select 1 from analytics.daily_summary_dw as dw "
                "              where dw.symbol = s.symbol and dw.event_date < %s) "
                "   or exists (select 1 from staging.raw_prices as r "
                "              where r.symbol = s.symbol and r.event_time < %s::date) "
                "order by s.n",
                (list(get_settings().expected_symbols), day, day),
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
        failures = quality_failures(expected, candles)
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
    def recheck_recent_days() -> list[str]:
        """Retained days before D whose rows changed after their candle: summarise again."""
        day = _run_day()
        keep = get_settings().raw_retention_days
        done: list[str] = []
        for offset in range(keep - 1, 0, -1):
            earlier = day - timedelta(days=offset)
            if not _fetch(
                "select 1 from analytics.daily_summary_dw where event_date = %s limit 1",
                (earlier,),
            ):
                continue  # never summarised: not this run's business
            summarise(earlier)  # a no-op unless rows changed (the upsert compares values)
            stale = [
                row[0]
                for row in _fetch(
                    "select symbol from analytics.daily_candles where event_date = %s and "
                    "candle_source = 'trade' and (reconciliation_status is null or "
                    "reconciliation_status in ('incomplete', 'unverified')) order by symbol",
                    (earlier,),
                )
            ]
            if stale:
                reconcile_day_with_exchange(earlier, stale)
                done.append(f"{earlier}: re-reconciled {', '.join(stale)}")
        return done

    @task
    def purge_raw_prices() -> str:
        day = _run_day()
        keep_days = get_settings().raw_retention_days
        notices = _call(
            "call analytics.purge_raw_prices(%s, %s)", (keep_days, day + timedelta(days=1))
        )
        return "; ".join(notices)

    (
        make_partitions()
        >> wait_for_day
        >> summarize_day()
        >> reconcile_with_exchange()
        >> check_data_quality()
        >> recheck_recent_days()
        >> purge_raw_prices()
    )


get_daily_summary()
