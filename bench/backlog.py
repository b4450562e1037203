"""Backlogs for the issue-11 benchmark: two UTC days of trades at real volume, two wire formats.

Where the data comes from: Binance's official 1-minute BTCUSDT klines of 2020-01-01
(tests/fixtures/BTCUSDT-1m-2020-01-01.zip, read by recordings/make_demo_recording.py), played
twice: as 2020-01-01 and, shifted by one day, as 2020-01-02. Each minute gets a share of the
requested event count in proportion to its real trade count (largest remainders, so the total
is exact; 822,521 by default, about 2.1 trades per real one), trade times inside the minute and
sorted, the first trade at the kline's open and the last at its close, every other price on the
0.01 tick grid inside [low, high], quantities splitting the minute's volume. Trade ids are
contiguous per symbol. Deterministic: seeded. The candles are real; single trades are synthetic.

Two backlogs of the same size:
- single symbol: every trade is BTCUSDT;
- three symbols: each trade goes to BTCUSDT, ETHUSDT or BNBUSDT (seeded draw, equal odds), the
  latter two priced as BTCUSDT times their 2020-01-01 price ratio (130.80 / 7,195.24 and
  13.73 / 7,195.24), on the 0.01 tick.

Where it goes: a fresh Kafka topic, produced the way each design's producer does:
- ours (producer_app): the contract's JSON (producer_app.events.encode_event), key = symbol
  (one symbol's events in one partition), producer_app's librdkafka settings (idempotent,
  acks=all, zstd, linger 20 ms);
- the original (tahatuzel/real-time-crypto-currency-price-processing, producer_app/producer.py):
  `{"timestamp": E in ms, "symbol": ..., "price": ...}`, no key (librdkafka spreads unkeyed
  records over the partitions), librdkafka's defaults. The original never calls poll() and
  fails after 100,000 messages (docs/benchmarks.md, producer); filling a backlog has to poll.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson
from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer_app.config import ProducerSettings  # noqa: E402
from producer_app.events import encode_event  # noqa: E402
from producer_app.sink import kafka_config  # noqa: E402
from recordings.make_demo_recording import DEFAULT_KLINES, Kline, read_klines  # noqa: E402

DEFAULT_EVENTS = 822_521
SEED = 20200102
DAY_MS = 86_400_000
MINUTE_MS = 60_000
TICK = Decimal("0.01")
QUANTITY_STEP = Decimal("0.00000001")
# 2020-01-01 closes (USDT) of the three symbols, for the three-symbol backlog's price ratios
REFERENCE_CLOSE = {"BTCUSDT": Decimal("7195.24"), "ETHUSDT": Decimal("130.80")}
REFERENCE_CLOSE["BNBUSDT"] = Decimal("13.73")
SYMBOLS_ONE = ("BTCUSDT",)
SYMBOLS_THREE = ("BTCUSDT", "ETHUSDT", "BNBUSDT")


@dataclass(frozen=True, slots=True)
class BacklogTrade:
    """One synthetic trade: the fields both wire formats are made from."""

    symbol: str
    trade_id: int
    trade_time_ms: int
    event_time_ms: int
    price: str
    quantity: str
    is_buyer_maker: bool


def _minute_counts(klines: list[Kline], events: int) -> list[int]:
    """Split `events` over the minutes of two days in proportion to their real trade counts."""
    weights = [k.trade_count for k in klines] * 2
    total = sum(weights)
    exact = [w * events / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: events - sum(counts)]:
        counts[i] += 1
    return counts


def _price(btc_price: Decimal, symbol: str) -> Decimal:
    if symbol == "BTCUSDT":
        return btc_price
    scaled = btc_price * REFERENCE_CLOSE[symbol] / REFERENCE_CLOSE["BTCUSDT"]
    return max(TICK, scaled.quantize(TICK))


def backlog_trades(
    events: int = DEFAULT_EVENTS, symbols: tuple[str, ...] = SYMBOLS_ONE
) -> Iterator[BacklogTrade]:
    """The backlog's trades in time order (see module docstring)."""
    rng = random.Random(SEED)  # noqa: S311 - seeded benchmark data, not cryptography
    klines = read_klines(DEFAULT_KLINES)
    next_id = dict.fromkeys(symbols, 1)
    counts = _minute_counts(klines, events)
    for index, count in enumerate(counts):
        if count == 0:
            continue
        kline = klines[index % len(klines)]
        day_shift = DAY_MS * (index // len(klines))
        low, high = int(kline.low / TICK), int(kline.high / TICK)
        times = sorted(
            kline.open_time_ms + day_shift + rng.randrange(MINUTE_MS) for _ in range(count)
        )
        step_units = max(1, int(kline.volume / QUANTITY_STEP) // count)
        event_time = 0
        for i, trade_time in enumerate(times):
            if i == 0:
                btc = kline.open
            elif i == count - 1:
                btc = kline.close
            else:
                btc = TICK * rng.randint(low, high)
            symbol = symbols[rng.randrange(len(symbols))] if len(symbols) > 1 else symbols[0]
            event_time = max(event_time, trade_time + rng.randint(0, 5))
            trade_id = next_id[symbol]
            next_id[symbol] = trade_id + 1
            yield BacklogTrade(
                symbol=symbol,
                trade_id=trade_id,
                trade_time_ms=trade_time,
                event_time_ms=event_time,
                price=f"{_price(btc, symbol):.8f}",
                quantity=f"{QUANTITY_STEP * rng.randint(1, 2 * step_units):.8f}",
                is_buyer_maker=rng.random() < 0.5,
            )


def ours_value(trade: BacklogTrade) -> bytes:
    """The contract's JSON, as producer_app writes it (received 1-9 ms after the event)."""
    return encode_event(
        trade.symbol,
        "trade",
        trade.event_time_ms * 1000,
        trade.trade_time_ms * 1000,
        trade.trade_id,
        trade.price,
        trade.quantity,
        trade.is_buyer_maker,
        trade.event_time_ms * 1000 + 1000 + trade.trade_id % 8000,
        "ws",
    )


def original_value(trade: BacklogTrade) -> bytes:
    """The original producer's record: event time E in ms, the symbol, the price string."""
    return orjson.dumps(
        {"timestamp": trade.event_time_ms, "symbol": trade.symbol, "price": trade.price}
    )


def _produce_all(
    producer: Producer, topic: str, records: Iterator[tuple[bytes | None, bytes]]
) -> int:
    sent = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
    left = producer.flush(300)
    if left:
        raise RuntimeError(f"{left} records to {topic} were not acknowledged")
    return sent


def produce_ours(bootstrap: str, topic: str, trades: list[BacklogTrade]) -> float:
    """Keyed by symbol with producer_app's settings; returns events/s."""
    config = kafka_config(
        ProducerSettings().model_copy(update={"kafka_bootstrap_servers": bootstrap})
    )
    config["client.id"] = "bench_backlog_ours"
    started = time.monotonic()
    _produce_all(Producer(config), topic, ((t.symbol.encode(), ours_value(t)) for t in trades))
    return len(trades) / (time.monotonic() - started)


def produce_original(bootstrap: str, topic: str, trades: list[BacklogTrade]) -> float:
    """No key, librdkafka's defaults (the original's producer config is its bootstrap only)."""
    started = time.monotonic()
    _produce_all(
        Producer({"bootstrap.servers": bootstrap}),
        topic,
        ((None, original_value(t)) for t in trades),
    )
    return len(trades) / (time.monotonic() - started)
