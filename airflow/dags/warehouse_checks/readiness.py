"""When is a UTC day complete enough to summarise? The rule of the DAG's sensor (pure logic).

Data comes from the consumer's own progress record (``staging.consumer_progress`` and
``staging.consumer_symbol_progress``, written by consumer_app/progress.py). A symbol is past
day D when

* its newest committed event time is at or after D+1 00:00 UTC + grace (a live, busy symbol), or
* the consumer is caught up (Kafka lag 0 in a progress record younger than ``max_age``) and
  nothing newer was committed for the symbol for ``idle`` (a rare symbol with no trade after
  midnight, or a historical replay that ended before the day did: nothing more will come).

The day is complete when every symbol the DAG cares about is past it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta


@dataclass(frozen=True)
class ConsumerProgress:
    consumer: str
    kafka_lag: int | None
    progress_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class SymbolProgress:
    symbol: str
    stream: str
    newest_event_time: datetime
    changed_at: datetime


@dataclass(frozen=True)
class Readiness:
    complete: bool
    past: list[str] = field(default_factory=list)  # one line per symbol past the day
    waiting: list[str] = field(default_factory=list)  # one line per symbol (or consumer) waited on

    def describe(self) -> str:
        return "; ".join(self.waiting or self.past) or "no symbols to wait for"


def day_end(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)


def caught_up(consumer: ConsumerProgress | None, now: datetime, max_age: timedelta) -> str | None:
    """None when the consumer is caught up, else why not (naming its lag and record age)."""
    if consumer is None:
        return (
            "no consumer progress record (staging.consumer_progress is empty): is the consumer "
            "running? (`make status`)"
        )
    age = now - consumer.updated_at
    if age > max_age:
        return (
            f"the consumer's progress record is {age.total_seconds():.0f} s old (> "
            f"{max_age.total_seconds():.0f} s): is the consumer running? (`make status`)"
        )
    if consumer.progress_at is None or now - consumer.progress_at > max_age:
        return f"Spark reported no progress within {max_age.total_seconds():.0f} s"
    if consumer.kafka_lag is None:
        return "the consumer's Kafka lag is unknown"
    if consumer.kafka_lag > 0:
        return f"the consumer is {consumer.kafka_lag} event(s) behind Kafka"
    return None


def day_readiness(
    day: date,
    symbols: Iterable[str],
    consumer: ConsumerProgress | None,
    progress: Sequence[SymbolProgress],
    *,
    now: datetime,
    grace: timedelta,
    idle: timedelta,
    max_age: timedelta,
) -> Readiness:
    """Whether `day` is complete for every symbol in `symbols` and those with progress rows."""
    newest: dict[str, SymbolProgress] = {}
    for entry in progress:
        best = newest.get(entry.symbol)
        if best is None or entry.newest_event_time > best.newest_event_time:
            newest[entry.symbol] = entry
    changed = {s: max(r.changed_at for r in progress if r.symbol == s) for s in newest}
    threshold = day_end(day) + grace
    lag_reason = caught_up(consumer, now, max_age)
    past: list[str] = []
    waiting: list[str] = []
    for symbol in sorted(set(symbols) | set(newest)):
        row: SymbolProgress | None = newest.get(symbol)
        if row is not None and row.newest_event_time >= threshold:
            past.append(f"{symbol}: committed events up to {row.newest_event_time.isoformat()}")
            continue
        idle_for = now - changed[symbol] if row is not None else None
        if lag_reason is None and (idle_for is None or idle_for >= idle):
            since = (
                "never seen" if idle_for is None else f"idle for {idle_for.total_seconds():.0f} s"
            )
            past.append(f"{symbol}: consumer caught up, {since}")
            continue
        seen = (
            "nothing committed yet"
            if row is None
            else (f"newest committed event {row.newest_event_time.isoformat()}")
        )
        why = lag_reason or (
            f"still receiving (last change {idle_for.total_seconds():.0f} s ago, idle after "
            f"{idle.total_seconds():.0f} s)"
            if idle_for is not None
            else "still receiving"
        )
        waiting.append(f"{symbol}: {seen}, needs {threshold.isoformat()} (day end + grace); {why}")
    return Readiness(complete=not waiting, past=past, waiting=waiting)
