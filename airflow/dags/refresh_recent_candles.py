"""
# refresh_recent_candles

Materialises today's closed one-minute candles every few minutes, so `analytics.candles` over
the current day reads `analytics.candles_1m` and only the last few minutes from
`staging.raw_prices` (a 10M-row day at 1 hour: 1.0-1.6 s on a loaded machine instead of
~90 s from raw rows; docs/benchmarks.md).
Guide: `docs/warehouse.md`, "Candles during the day".

One task, `refresh_recent_minutes`: `CALL analytics.refresh_candles_1m_recent(grace)` - the
minutes since the last run, up to the consumer's committed progress
(`staging.consumer_symbol_progress`) minus `DAILY_SUMMARY_RECENT_GRACE_S`, and every
materialised minute whose rows changed since (late events, REST fills; marked by the triggers
on `staging.raw_prices`). Exactness never depends on this DAG: a minute not materialised yet,
or changed since, is read from the raw rows.

**Schedule** `DAILY_SUMMARY_RECENT_SCHEDULE` (cron in UTC, default every 5 minutes; `none`
turns it off), no catch-up, one run at a time: a missed run is simply done by the next.
Unpaused on creation (the stack's new deployments need nothing clicked).

**Connection** `pipeline_postgres` (role `pipeline_dag`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronTriggerTimetable, dag, task
from pydantic_settings import BaseSettings, SettingsConfigDict

CONN_ID = "pipeline_postgres"


class RecentCandlesSettings(BaseSettings):
    """The DAG's settings, read from the environment."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    # cron expression in UTC, or "none"
    daily_summary_recent_schedule: str = "*/5 * * * *"
    # minutes closed this long before the consumer's newest committed event are materialised
    daily_summary_recent_grace_s: float = 120.0


def _schedule(settings: RecentCandlesSettings) -> CronTriggerTimetable | None:
    expression = settings.daily_summary_recent_schedule.strip()
    if expression.lower() in ("", "none"):
        return None
    return CronTriggerTimetable(expression, timezone="UTC")


@dag(
    dag_id="refresh_recent_candles",
    schedule=_schedule(RecentCandlesSettings()),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,
    default_args={
        "owner": "warehouse",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": timedelta(minutes=10),
    },
    tags=["warehouse", "candles"],
    doc_md=__doc__,
)
def refresh_recent_candles() -> None:
    @task
    def refresh_recent_minutes() -> str:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        grace = RecentCandlesSettings().daily_summary_recent_grace_s
        PostgresHook(postgres_conn_id=CONN_ID).run(
            "call analytics.refresh_candles_1m_recent(make_interval(secs => %s))",
            autocommit=True,
            parameters=(grace,),
        )
        return f"refreshed with a grace of {grace:.0f} s"

    refresh_recent_minutes()


refresh_recent_candles()
