"""Connection policy: stream URLs and the 1024-stream split, backoff, the attempt limiter."""

from __future__ import annotations

import random

import pytest

from producer_app.config import load_settings
from producer_app.ws import ConnectLimiter, backoff_delay, stream_urls

pytestmark = pytest.mark.unit


def test_combined_stream_url_is_lower_case_and_asks_for_microseconds() -> None:
    urls = stream_urls(
        "wss://data-stream.binance.vision/",
        ["BTCUSDT@trade", "ethusdt@miniTicker"],
        1024,
        "MICROSECOND",
    )
    assert urls == [
        "wss://data-stream.binance.vision/stream?streams=btcusdt@trade/ethusdt@miniTicker"
        "&timeUnit=MICROSECOND"
    ]
    assert stream_urls("ws://h:1", ["a@trade"], 1024, "MILLISECOND") == [
        "ws://h:1/stream?streams=a@trade"
    ]


def test_more_than_1024_streams_are_split_across_connections() -> None:
    symbols = ",".join(f"SYM{i}USDT" for i in range(700))
    settings = load_settings(binance_symbols=symbols, binance_streams="trade,miniTicker")
    names = settings.stream_names
    assert len(names) == 1400
    urls = stream_urls("ws://x", names, settings.producer_streams_per_connection, "MILLISECOND")
    counts = [len(url.split("streams=", 1)[1].split("/")) for url in urls]
    assert counts == [1024, 376]
    joined = [s for url in urls for s in url.split("streams=", 1)[1].split("/")]
    assert joined == [n.lower().replace("@miniticker", "@miniTicker") for n in names]


def test_backoff_is_immediate_first_then_exponential_capped_with_jitter() -> None:
    rng = random.Random(1)  # noqa: S311 - jitter draws
    assert backoff_delay(0, 0.5, 30, rng) == 0
    for failures, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0)]:
        delays = [backoff_delay(failures, 0.5, 30, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (
            failures,
            min(delays),
            max(delays),
        )
        assert max(delays) - min(delays) > ceiling / 10  # jittered


def test_limiter_never_allows_more_than_300_attempts_in_5_minutes() -> None:
    now = [0.0]
    limiter = ConnectLimiter(300, 300.0, clock=lambda: now[0])
    times = []
    # A client hammering reconnects: each attempt as soon as the limiter allows.
    for _ in range(1000):
        wait = limiter.delay()
        now[0] += wait
        limiter.record()
        times.append(now[0])
        now[0] += 0.01
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + 300.0)
        assert in_window <= 300
    assert times[299] < 300 <= times[300]


def test_settings_parse_symbols_and_streams() -> None:
    settings = load_settings(
        binance_symbols="btcusdt, ethusdt,btcusdt", binance_streams="miniticker,trade"
    )
    assert settings.binance_symbols == ("BTCUSDT", "ETHUSDT")
    assert settings.binance_streams == ("miniTicker", "trade")
    assert settings.stream_names[:2] == ("btcusdt@miniTicker", "btcusdt@trade")
    with pytest.raises(ValueError, match="unknown stream"):
        load_settings(binance_streams="kline_1m")
