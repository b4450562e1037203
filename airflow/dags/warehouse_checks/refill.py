"""Refilling differing minutes from the exchange's REST API through the normal path.

Data comes from ``GET /api/v3/historicalTrades`` (exchange.py), paged forward from a trade id
the DAG derives from what PostgreSQL holds. It goes to the prices topic (KAFKA_TOPIC_PRICES)
as ordinary price events with ``source = "rest"``, keyed by symbol, so the Spark consumer stays
the single writer of ``staging.raw_prices`` (its unique key drops trades already there). The
event JSON is the contract of docs/architecture.md (field order of producer_app/events.py; a
contract test checks it).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from warehouse_checks.exchange import ExchangeClient, ExchangeError

log = logging.getLogger(__name__)

MINUTE_MS = 60_000


@dataclass(frozen=True)
class MinuteRun:
    """Consecutive differing minutes [start_ms, end_ms) of one symbol."""

    start_ms: int
    end_ms: int


def minute_runs(minute_starts_ms: Iterable[int]) -> list[MinuteRun]:
    """Adjacent minutes merged into runs, in time order."""
    runs: list[MinuteRun] = []
    for start in sorted(set(minute_starts_ms)):
        if runs and runs[-1].end_ms == start:
            runs[-1] = MinuteRun(runs[-1].start_ms, start + MINUTE_MS)
        else:
            runs.append(MinuteRun(start, start + MINUTE_MS))
    return runs


def trade_event(symbol: str, trade: dict[str, Any], received_at_us: int) -> bytes:
    """One historicalTrades element as a price event (the wire contract), source "rest"."""
    trade_time = int(trade["time"])
    trade_time_us = trade_time if trade_time >= 10**14 else trade_time * 1000
    if not isinstance(trade.get("isBuyerMaker"), bool):
        raise ExchangeError(f"trade without a boolean isBuyerMaker: {trade!r:.200}")
    event = {
        "symbol": symbol,
        "stream": "trade",
        "event_time_us": trade_time_us,  # REST trades carry no event time: the trade time
        "trade_time_us": trade_time_us,
        "sequence_id": int(trade["id"]),
        "price": str(trade["price"]),
        "quantity": str(trade["qty"]),
        "is_buyer_maker": trade["isBuyerMaker"],
        "received_at_us": received_at_us,
        "source": "rest",
    }
    return json.dumps(event, separators=(",", ":")).encode()


def fetch_run_trades(
    client: ExchangeClient, symbol: str, from_id: int, run: MinuteRun, max_trades: int
) -> list[dict[str, Any]]:
    """The exchange's trades of one run of minutes, paging forward from `from_id`."""
    found: list[dict[str, Any]] = []
    cursor = from_id
    seen = 0
    while seen < max_trades:
        page = client.historical_trades(symbol, cursor)
        if not page:
            break
        seen += len(page)
        times = [int(t["time"]) // (1000 if int(t["time"]) >= 10**14 else 1) for t in page]
        found.extend(
            t for t, ms in zip(page, times, strict=True) if run.start_ms <= ms < run.end_ms
        )
        if max(times) >= run.end_ms or len(page) < 1000:
            break
        cursor = int(page[-1]["id"]) + 1
    else:
        log.warning("refill of %s stopped after %d trades (limit)", symbol, max_trades)
    return found


def produce(bootstrap_servers: str, topic: str, symbol: str, events: Sequence[bytes]) -> None:
    """Produce events keyed by symbol with idempotence and acks=all; raise on any failure."""
    from confluent_kafka import KafkaException, Producer

    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer(
        {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True, "acks": "all",
         "linger.ms": 20, "compression.type": "zstd"}
    )  # fmt: skip
    try:
        for event in events:
            while True:
                try:
                    producer.produce(topic, value=event, key=symbol.encode(), on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.5)
        remaining = producer.flush(60)
    except KafkaException as err:
        raise ExchangeError(f"Kafka at {bootstrap_servers} refused the refill: {err}") from err
    if remaining or failures:
        raise ExchangeError(
            f"Kafka at {bootstrap_servers} did not acknowledge {remaining + len(failures)} of "
            f"{len(events)} refill event(s): {'; '.join(failures[:3]) or 'flush timed out'}"
        )


def wait_until(check: Any, timeout_s: float, poll_s: float = 2.0) -> bool:
    """Poll `check()` until it is true or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
