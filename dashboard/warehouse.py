"""The dashboard's reads from the PostgreSQL warehouse, one function per panel.

Data comes from views and functions init.sql owns (analytics.latest_prices, analytics.candles,
analytics.daily_candles, analytics.unfilled_gaps), read as the read-only analyst role over
one short-lived connection per refresh; it goes to the page as plain rows (dicts). Decimals
stay ``Decimal`` (trailing zeros trimmed by ``trim_scale`` in SQL, for reading only); candles
are never recomputed here. Failures become a ``WarehouseError`` whose text a person can act on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import dict_row

from dashboard.config import DashboardSettings

log = logging.getLogger(__name__)

Row = dict[str, Any]

#: Timeframe label -> (bucket interval for analytics.candles, span shown before the newest event)
TIMEFRAMES: dict[str, tuple[timedelta, timedelta]] = {
    "1m": (timedelta(minutes=1), timedelta(hours=6)),
    "5m": (timedelta(minutes=5), timedelta(days=1)),
    "15m": (timedelta(minutes=15), timedelta(days=3)),
    "1h": (timedelta(hours=1), timedelta(days=14)),
    "4h": (timedelta(hours=4), timedelta(days=60)),
    "1d": (timedelta(days=1), timedelta(days=365)),
}


class WarehouseError(Exception):
    """The warehouse could not answer; ``str()`` says what and what to do."""


class WarehouseUnavailable(WarehouseError):
    """PostgreSQL is down, unreachable or refused the login."""


class SchemaMissing(WarehouseError):
    """A view or function the page reads is not in the database (init.sql not applied)."""


@contextmanager
def connect(settings: DashboardSettings) -> Iterator[psycopg.Connection[Row]]:
    """One read-only connection; errors come out as WarehouseError with the fix in the text."""
    try:
        conn = psycopg.connect(settings.postgres_conninfo, autocommit=True, row_factory=dict_row)
    except psycopg.OperationalError as err:
        log.warning("PostgreSQL at %s: %s", settings.postgres_address, err)
        raise WarehouseUnavailable(
            f"PostgreSQL is not reachable at {settings.postgres_address} as "
            f"{settings.postgres_user} ({_first_line(err)}). Start it with `make services` "
            "(or `make demo`), or check POSTGRES_* in .env."
        ) from err
    try:
        yield conn
    except (errors.UndefinedTable, errors.UndefinedFunction, errors.UndefinedColumn) as err:
        log.warning("warehouse schema: %s", err)
        raise SchemaMissing(
            f"The warehouse lacks what this page reads ({_first_line(err)}). "
            "Apply init.sql: `make services` does it, or `scripts/stack.sh reset-db`."
        ) from err
    except errors.InsufficientPrivilege as err:
        raise WarehouseError(
            f"{settings.postgres_user} may not read this ({_first_line(err)}); "
            "the grants for pipeline_analyst are in init.sql."
        ) from err
    except psycopg.OperationalError as err:
        raise WarehouseUnavailable(
            f"PostgreSQL at {settings.postgres_address} went away ({_first_line(err)}). "
            "Check it with `make status`."
        ) from err
    except psycopg.Error as err:
        log.exception("warehouse query failed")
        raise WarehouseError(f"A warehouse query failed: {_first_line(err)}") from err
    finally:
        conn.close()


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def latest_prices(conn: psycopg.Connection[Row]) -> list[Row]:
    """Newest price per (symbol, stream) with its change vs the previous price (the view's)."""
    return conn.execute(
        """
        select symbol,
               stream,
               trim_scale(last_price)      as last_price,
               trim_scale(previous_price)  as previous_price,
               trim_scale(price_change)    as price_change,
               round(price_change_pct, 4)  as price_change_pct,
               event_time
        from analytics.latest_prices
        order by symbol, stream
        """
    ).fetchall()


def candles(
    conn: psycopg.Connection[Row],
    symbol: str,
    bucket: timedelta,
    from_time: datetime,
    to_time: datetime,
) -> list[Row]:
    """analytics.candles(symbol, bucket, from, to): one row per UTC-aligned bucket with trades."""
    return conn.execute(
        """
        select bucket_start,
               trim_scale(open_price)  as open_price,
               trim_scale(high_price)  as high_price,
               trim_scale(low_price)   as low_price,
               trim_scale(close_price) as close_price,
               trim_scale(volume)      as volume,
               trade_count
        from analytics.candles(%s, %s, %s, %s)
        order by bucket_start
        """,
        (symbol, bucket, from_time, to_time),
    ).fetchall()


def candle_window(newest_event: datetime, timeframe: str) -> tuple[timedelta, datetime, datetime]:
    """The bucket and [from, to) shown for a timeframe: the span before the symbol's newest event.

    Anchored on the data, not on the clock, so a replayed day (the demo's 2020-01-01) shows.
    """
    bucket, span = TIMEFRAMES[timeframe]
    return bucket, newest_event - span, newest_event + bucket


def daily_candles(conn: psycopg.Connection[Row], symbol: str, days: int = 30) -> list[Row]:
    """The newest daily candles of a symbol with their reconciliation status and the
    exchange's values beside ours (analytics.daily_candles, CONTRACT 2)."""
    return conn.execute(
        """
        select event_date,
               reconciliation_status,
               open, high, low, close, volume, trade_count,
               exchange_open, exchange_high, exchange_low, exchange_close,
               exchange_volume, exchange_trade_count,
               missing_trade_ids,
               mismatched_minutes
        from analytics.daily_candles
        where symbol = %s
        order by event_date desc
        limit %s
        """,
        (symbol, days),
    ).fetchall()


def unfilled_gaps(conn: psycopg.Connection[Row]) -> Row:
    """How many feed gaps REST could not fill, and how many trades they miss (all days)."""
    row = conn.execute(
        """
        select count(*) as gaps,
               coalesce(sum(unfilled_count), 0) as missing_trades,
               max(detected_at) as newest_detected_at
        from analytics.unfilled_gaps
        """
    ).fetchone()
    return row or {"gaps": 0, "missing_trades": 0, "newest_detected_at": None}
