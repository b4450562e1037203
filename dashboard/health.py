"""The dashboard's reads from Prometheus: pipeline health figures and the alerts.

Data comes from Prometheus's HTTP API (``/api/v1/query`` and ``/api/v1/alerts``) at
PROMETHEUS_URL, which scrapes the producer, the consumer and the exporters and evaluates
prometheus/alerts.yml; it goes to the page's health panel. The PromQL below only selects and
aggregates series; the thresholds live in the alert rules, not here.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

_ZERO_IF_SCRAPED = ' or on () (0 * max(up{job="producer"}))'

#: Health figure -> PromQL (one number each; no series = unknown)
QUERIES: dict[str, str] = {
    "producer_up": 'max(up{job="producer"})',
    "consumer_up": 'max(up{job="consumer"})',
    "kafka_lag": "sum(consumer_lag_offsets)",
    "latency_p50": "histogram_quantile(0.5, sum by (le) "
    "(rate(consumer_event_to_commit_latency_seconds_bucket[5m])))",
    "latency_p99": "histogram_quantile(0.99, sum by (le) "
    "(rate(consumer_event_to_commit_latency_seconds_bucket[5m])))",
    "rows_per_second": "sum(rate(consumer_rows_total[1m]))",
    # a reason's counter exists only after its first dead letter: none yet is 0 while the
    # producer is scraped (and unknown when it is not)
    "dead_letters_1h": "sum(increase(producer_dead_letters_total[1h]))" + _ZERO_IF_SCRAPED,
    "dead_letters_total": "sum(producer_dead_letters_total)" + _ZERO_IF_SCRAPED,
}


class PrometheusUnavailable(Exception):
    """Prometheus did not answer; ``str()`` says where and what to do."""


@dataclass(frozen=True)
class Alert:
    name: str
    state: str  # "firing" or "pending"
    severity: str
    summary: str
    labels: dict[str, str]
    active_at: str


@dataclass(frozen=True)
class Health:
    figures: dict[str, float | None]
    alerts: list[Alert] = field(default_factory=list)

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if a.state == "firing"]


def _get(base_url: str, path: str, params: dict[str, str] | None = None) -> Any:
    url = base_url.rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    if not url.startswith(("http://", "https://")):
        raise PrometheusUnavailable(f"PROMETHEUS_URL must be http(s)://..., got {base_url!r}")
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - scheme checked
            body = json.load(response)
    except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as err:
        log.warning("Prometheus at %s: %s", base_url, err)
        raise PrometheusUnavailable(
            f"Prometheus is not reachable at {base_url} ({err}). It starts with `make demo` / "
            "`make up`; check PROMETHEUS_URL in .env."
        ) from err
    if body.get("status") != "success":
        raise PrometheusUnavailable(f"Prometheus at {base_url} answered: {body.get('error')}")
    return body["data"]


def query_number(base_url: str, expr: str) -> float | None:
    """The value of a one-series instant query; None without a series or for NaN (no traffic)."""
    data = _get(base_url, "/api/v1/query", {"query": expr})
    result = data.get("result") or []
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


def alerts(base_url: str) -> list[Alert]:
    """Alerts firing or pending, firing first, then by name."""
    data = _get(base_url, "/api/v1/alerts")
    found = []
    for item in data.get("alerts", []):
        labels = dict(item.get("labels", {}))
        found.append(
            Alert(
                name=labels.pop("alertname", "?"),
                state=item.get("state", "?"),
                severity=labels.pop("severity", ""),
                summary=item.get("annotations", {}).get("summary", ""),
                labels=labels,
                active_at=item.get("activeAt", ""),
            )
        )
    return sorted(found, key=lambda a: (a.state != "firing", a.name))


def read_health(base_url: str) -> Health:
    """Every figure of the health panel and the alerts, or PrometheusUnavailable."""
    figures = {name: query_number(base_url, expr) for name, expr in QUERIES.items()}
    return Health(figures=figures, alerts=alerts(base_url))
