"""The dashboard: live prices, candles and the pipeline's health in a browser (docs/dashboard.md).

A thin reader. Data comes from the PostgreSQL warehouse (as the read-only analyst role:
analytics.latest_prices, analytics.candles, analytics.daily_candles, analytics.unfilled_gaps)
and from Prometheus's HTTP API (scrapes of the producer, the consumer and the exporters, and
the alert rules in prometheus/alerts.yml); it goes to a Streamlit page on DASHBOARD_PORT.
Nothing here computes what the warehouse owns: candles come from analytics.candles.
"""
