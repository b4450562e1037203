"""The Streamlit page (``python -m dashboard`` serves it): prices, candles, daily candles, health.

Data comes from the warehouse (dashboard/warehouse.py, read-only analyst role) and Prometheus
(dashboard/health.py); it goes to the browser. Each panel is a Streamlit fragment that
refreshes itself every DASHBOARD_REFRESH_SECONDS (the candles and daily table less often),
and each shows its own broken state (no data yet, PostgreSQL down, Prometheus down) as a
message in the page, never a traceback. Element keys (``st-key-...`` CSS classes) are what
the browser test (tests/e2e/test_dashboard_browser.py) finds.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import warehouse
from dashboard.charts import candle_label, candlestick_figure
from dashboard.config import DashboardSettings, get_settings
from dashboard.health import Health, PrometheusUnavailable, read_health

log = logging.getLogger(__name__)

NO_PRICES = (
    "No prices yet: the warehouse has no rows in staging.raw_prices. Start the feed with "
    "`make demo` (the bundled recording) or `make up` (live Binance); prices appear within "
    "seconds of the first trades."
)


def guarded(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Turn a panel's failure into a message in the page (the log keeps the details)."""

    def decorate(body: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(body)
        def run(*args: Any) -> None:
            try:
                body(*args)
            except warehouse.WarehouseError as err:
                st.error(str(err), icon=":material/database:")
            except PrometheusUnavailable as err:
                st.warning(str(err), icon=":material/monitoring:")
            except Exception:
                log.exception("panel %s failed", name)
                st.error(
                    f"The {name} panel failed unexpectedly; the details are in the dashboard's log."
                )

        return run

    return decorate


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "no traffic (5 min)"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _fmt_count(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.0f}{unit}"


def _fmt_up(value: float | None) -> str:
    if value is None:
        return "not scraped"
    return "up" if value >= 1 else "DOWN"


def _signed(value: Any) -> str:
    text = str(value)
    return text if text.startswith("-") else f"+{text}"


@guarded("prices")
def prices_panel(settings: DashboardSettings) -> None:
    st.subheader("Last price")
    with warehouse.connect(settings) as conn:
        rows = warehouse.latest_prices(conn)
    if not rows:
        st.info(NO_PRICES, icon=":material/hourglass_empty:")
        return
    columns = st.columns(min(len(rows), 4))
    for index, row in enumerate(rows):
        with (
            columns[index % len(columns)],
            st.container(key=f"price-{row['symbol']}-{row['stream']}", border=True),
        ):
            delta = None
            if row["price_change"] is not None:
                delta = _signed(row["price_change"])
                if row["price_change_pct"] is not None:
                    delta += f" ({_signed(row['price_change_pct'])}%)"
            st.metric(f"{row['symbol']} · {row['stream']}", str(row["last_price"]), delta)
            st.caption(f"{row['event_time']:%Y-%m-%d %H:%M:%S} UTC · change vs previous price")


@guarded("candles")
def candles_panel(settings: DashboardSettings) -> None:
    st.subheader("Candles")
    with warehouse.connect(settings) as conn:
        newest = {
            row["symbol"]: row["event_time"]
            for row in warehouse.latest_prices(conn)
            if row["stream"] == "trade"
        }
        if not newest:
            st.info(NO_PRICES, icon=":material/hourglass_empty:")
            return
        left, right = st.columns([1, 3])
        symbol = left.selectbox("Symbol", sorted(newest), key="candles-symbol")
        timeframe = right.segmented_control(
            "Timeframe", list(warehouse.TIMEFRAMES), default="1m", key="candles-timeframe"
        )
        timeframe = timeframe or "1m"
        bucket, from_time, to_time = warehouse.candle_window(newest[symbol], timeframe)
        rows = warehouse.candles(conn, symbol, bucket, from_time, to_time)
    if not rows:
        st.info(f"No {symbol} trades between {from_time:%Y-%m-%d %H:%M} and {to_time:%H:%M} UTC.")
        return
    with st.container(key=f"candles-{symbol}-{timeframe}"):
        st.plotly_chart(candlestick_figure(rows, symbol, timeframe, bucket), width="stretch")
        last = rows[-1]
        st.caption(
            f"{len(rows)} candle(s) from analytics.candles; newest "
            f"{last['bucket_start']:%Y-%m-%d %H:%M} UTC: {candle_label(last)}"
        )


def _daily_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows as exact strings; a status of null reads "not checked yet" (CONTRACT 2)."""
    table = pd.DataFrame([{k: "" if v is None else str(v) for k, v in row.items()} for row in rows])
    table["reconciliation_status"] = table["reconciliation_status"].replace("", "not checked yet")
    return table.rename(columns={"reconciliation_status": "status", "event_date": "day (UTC)"})


@guarded("daily candles")
def daily_panel(settings: DashboardSettings) -> None:
    st.subheader("Daily candles")
    with warehouse.connect(settings) as conn:
        symbols = sorted({row["symbol"] for row in warehouse.latest_prices(conn)})
        per_symbol = {symbol: warehouse.daily_candles(conn, symbol) for symbol in symbols}
    if not any(per_symbol.values()):
        st.info(
            "No daily candle yet: the Airflow DAG get_daily_summary computes each UTC day after "
            "it ends (or by hand: `call analytics.get_daily_summary('2020-01-01')`)."
        )
        return
    for symbol, rows in per_symbol.items():
        if not rows:
            continue
        with st.container(key=f"daily-{symbol}"):
            st.markdown(
                f"**{symbol}**: ours beside the exchange's (exchange_*) and the check's status"
            )
            st.table(_daily_table(rows))


def _health_tiles(health: Health, gaps: dict[str, Any] | None) -> None:
    f = health.figures
    tiles = [
        ("Producer", _fmt_up(f["producer_up"])),
        ("Consumer", _fmt_up(f["consumer_up"])),
        ("Kafka lag", _fmt_count(f["kafka_lag"], " offsets")),
        ("Event → commit p50", _fmt_seconds(f["latency_p50"])),
        ("Event → commit p99", _fmt_seconds(f["latency_p99"])),
        ("Rows per second", _fmt_count(f["rows_per_second"])),
        (
            "Dead letters (1 h / since start)",
            f"{_fmt_count(f['dead_letters_1h'])} / {_fmt_count(f['dead_letters_total'])}",
        ),
        (
            "Unfilled gaps",
            "n/a" if gaps is None else f"{gaps['gaps']} ({gaps['missing_trades']} trades)",
        ),
    ]
    columns = st.columns(4)
    for index, (label, value) in enumerate(tiles):
        with columns[index % 4], st.container(key=f"health-{index}", border=True):
            st.metric(label, value)


def _gaps_or_none(settings: DashboardSettings) -> dict[str, Any] | None:
    """Unfilled gaps from the warehouse; None (shown as n/a) when it cannot answer."""
    try:
        with warehouse.connect(settings) as conn:
            return warehouse.unfilled_gaps(conn)
    except warehouse.WarehouseError as err:
        log.warning("unfilled gaps: %s", err)
        return None


@guarded("pipeline health")
def health_panel(settings: DashboardSettings) -> None:
    st.subheader("Pipeline health")
    gaps = _gaps_or_none(settings)
    health = read_health(settings.prometheus_url)
    _health_tiles(health, gaps)
    with st.container(key="alerts"):
        if not health.alerts:
            st.success("No alert firing or pending (prometheus/alerts.yml).")
        for alert in health.alerts:
            where = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
            text = f"**{alert.name}** ({alert.state}, {alert.severity}) {alert.summary}"
            text += f" · {where}" if where else ""
            (st.error if alert.state == "firing" else st.warning)(text)


def main() -> None:
    settings = get_settings()
    st.set_page_config(
        page_title="Binance pipeline", page_icon=":chart_with_upwards_trend:", layout="wide"
    )
    st.title("Binance pipeline")
    st.caption(
        f"Warehouse {settings.postgres_address} as {settings.postgres_user} · Prometheus "
        f"{settings.prometheus_url} · refreshes every {settings.dashboard_refresh_seconds:g} s"
    )
    every = settings.dashboard_refresh_seconds
    fragment: Callable[..., Any] = st.fragment
    fragment(run_every=every)(prices_panel)(settings)
    fragment(run_every=every * 3)(candles_panel)(settings)
    fragment(run_every=every)(health_panel)(settings)
    fragment(run_every=every * 6)(daily_panel)(settings)


if __name__ == "__main__":
    main()
