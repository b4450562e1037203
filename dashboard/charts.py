"""Plotly figures of the dashboard: a candlestick over volume bars for one symbol.

Data comes from analytics.candles rows (dashboard/warehouse.py), drawn as they are: one
candle per bucket, the exact decimal strings in the hover text (the axes are floats, as any
chart's are); it goes to ``st.plotly_chart``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

UP_COLOR = "#26a69a"
DOWN_COLOR = "#ef5350"


def candle_label(row: dict[str, Any]) -> str:
    """The exact values of one candle, as the warehouse gave them."""
    return (
        f"O {row['open_price']} H {row['high_price']} L {row['low_price']} "
        f"C {row['close_price']} V {row['volume']} ({row['trade_count']} trades)"
    )


def candlestick_figure(
    rows: list[dict[str, Any]], symbol: str, timeframe: str, bucket: timedelta
) -> go.Figure:
    """Candles on top (row 1), volume bars below (row 2), a shared UTC time axis that shows
    at least a few buckets (one candle alone would otherwise fill a millisecond-wide axis)."""
    times = [row["bucket_start"] for row in rows]
    labels = [candle_label(row) for row in rows]
    rising = [row["close_price"] >= row["open_price"] for row in rows]
    figure = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.03, row_heights=[0.75, 0.25]
    )
    figure.add_trace(
        go.Candlestick(
            x=times,
            open=[row["open_price"] for row in rows],
            high=[row["high_price"] for row in rows],
            low=[row["low_price"] for row in rows],
            close=[row["close_price"] for row in rows],
            text=labels,
            hoverinfo="x+text",
            name=f"{symbol} {timeframe}",
            increasing_line_color=UP_COLOR,
            decreasing_line_color=DOWN_COLOR,
        ),
        row=1,
        col=1,
    )
    figure.add_trace(
        go.Bar(
            x=times,
            y=[row["volume"] for row in rows],
            marker_color=[UP_COLOR if up else DOWN_COLOR for up in rising],
            name="volume",
            hovertemplate="%{x}<br>volume %{y}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    figure.update_layout(
        height=520,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        showlegend=False,
        xaxis_rangeslider_visible=False,
        title={"text": f"{symbol} · {timeframe} candles (UTC)", "x": 0.01},
    )
    if times:
        figure.update_xaxes(range=[times[0] - bucket * 2, times[-1] + bucket * 2])
    figure.update_yaxes(title_text="price", row=1, col=1)
    figure.update_yaxes(title_text="volume", row=2, col=1)
    return figure
