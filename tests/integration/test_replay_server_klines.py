"""The replay server's GET /api/v3/klines and /api/v3/time, over real HTTP, in Binance's shape.

Expected values come from Binance's official 1-minute klines for 2020-01-01
(tests/fixtures/BTCUSDT-1m-2020-01-01.zip, read here with csv) and from frames written here.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from producer_app.replay_server import ReplayServer, load_recording

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KLINES_ZIP = ROOT / "tests" / "fixtures" / "BTCUSDT-1m-2020-01-01.zip"
BTC_RECORDING = ROOT / "recordings" / "btcusdt-trade-2020-01-01.jsonl.gz"
TRX_RECORDING = ROOT / "recordings" / "trxusdt-trade-2025-03-04.jsonl.gz"
DAY_MS = 1577836800000  # 2020-01-01 00:00 UTC


def run_with_server(server: ReplayServer, body: Callable[[ReplayServer], Any]) -> Any:
    async def main() -> Any:
        await server.start("127.0.0.1", 0)
        try:
            return await asyncio.wait_for(asyncio.to_thread(body, server), timeout=120)
        finally:
            await server.stop()

    return asyncio.run(main())


def get(server: ReplayServer, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"{server.rest_url}{path}", timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def official() -> list[list[str]]:
    with zipfile.ZipFile(KLINES_ZIP) as archive:
        (name,) = archive.namelist()
        return list(csv.reader(io.TextIOWrapper(archive.open(name), encoding="ascii")))


def compared(kline: list[Any]) -> tuple[object, ...]:
    """The fields a trade-derived recording reproduces: open time, OHLC, volume, trades."""
    return (int(kline[0]), *(Decimal(v) for v in kline[1:6]), int(kline[8]))


def test_klines_of_the_bundled_day_equal_binances_official_ones() -> None:
    server = ReplayServer(load_recording(BTC_RECORDING))
    server.finished.set()  # the whole recording is past

    def body(server: ReplayServer) -> tuple[Any, ...]:
        first = get(
            server, f"/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={DAY_MS}&limit=1000"
        )
        rest = get(
            server,
            f"/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={DAY_MS + 1000 * 60_000}"
            f"&endTime={DAY_MS + 86_400_000 - 1}&limit=1000",
        )
        day = get(server, f"/api/v3/klines?symbol=BTCUSDT&interval=1d&startTime={DAY_MS}")
        default_limit = get(server, "/api/v3/klines?symbol=BTCUSDT&interval=1m")
        return first, rest, day, default_limit

    (s1, first), (s2, rest), (s3, day), (s4, newest) = run_with_server(server, body)
    assert (s1, s2, s3, s4) == (200, 200, 200, 200)
    assert len(first) == 1000 and len(rest) == 440
    ours = first + rest
    want = official()
    assert [compared(k) for k in ours] == [compared(k) for k in want]  # 1,440 minutes, 0 off
    assert [(k[0], k[6]) for k in ours[:2]] == [
        (DAY_MS, DAY_MS + 59_999),
        (DAY_MS + 60_000, DAY_MS + 119_999),
    ]
    assert all(len(k) == 12 and k[11] == "0" and isinstance(k[1], str) for k in ours)
    # taker-buy base volume is reproduced too (the recording was built to keep it)
    assert [Decimal(k[9]) for k in ours] == [Decimal(k[9]) for k in want]
    assert compared(day[0]) == (
        DAY_MS, Decimal("7195.24"), Decimal("7255.00"), Decimal("7175.15"), Decimal("7200.85"),
        Decimal("16792.388165"), 194_010,
    )  # fmt: skip
    assert len(day) == 1 and day[0][6] == DAY_MS + 86_400_000 - 1
    assert [k[0] for k in newest] == [DAY_MS + (940 + i) * 60_000 for i in range(500)]


def test_only_the_past_is_served_and_the_clock_is_the_recordings() -> None:
    recording = load_recording(TRX_RECORDING)
    server = ReplayServer(recording)
    frames = [json.loads(line)["data"] for line in recording.lines]
    server.cursor = 3000  # the feed has reached frame 3000

    def body(server: ReplayServer) -> tuple[Any, ...]:
        klines = get(server, "/api/v3/klines?symbol=TRXUSDT&interval=1m&limit=1000")
        clock = get(server, "/api/v3/time")
        micro = urllib.request.Request(  # noqa: S310 - loopback test URL
            f"{server.rest_url}/api/v3/klines?symbol=TRXUSDT&interval=1h",
            headers={"X-MBX-TIME-UNIT": "MICROSECOND"},
        )
        with urllib.request.urlopen(micro, timeout=30) as response:  # noqa: S310
            hour_us = json.loads(response.read())
        return klines, clock, hour_us

    (status, klines), (_, clock), hour_us = run_with_server(server, body)
    assert status == 200
    past = frames[:3000]
    assert sum(k[8] for k in klines) == 3000  # not one trade from the future
    last_ms = past[-1]["T"] // 1000  # the capture's times are µs; klines are ms
    assert klines[-1][0] == last_ms // 60_000 * 60_000
    assert klines[-1][4] == max(past, key=lambda f: (f["T"], f["t"]))["p"]
    assert clock == {"serverTime": frames[2999]["E"] // 1000}
    assert hour_us[0][0] == past[0]["T"] // 3_600_000_000 * 3_600_000_000


def test_a_minute_without_trades_carries_the_previous_close_and_errors_are_binances() -> None:
    def frame(trade_id: int, time_ms: int, price: str) -> bytes:
        data = {"e": "trade", "E": time_ms, "s": "ABCUSDT", "t": trade_id, "p": price,
                "q": "2.5", "T": time_ms, "m": trade_id % 2 == 0, "M": True}  # fmt: skip
        return json.dumps({"stream": "abcusdt@trade", "data": data}).encode()

    lines = [frame(1, DAY_MS + 1_000, "10.5"), frame(2, DAY_MS + 2_000, "11"),
             frame(3, DAY_MS + 180_500, "9")]  # fmt: skip
    server = ReplayServer(load_recording(lines))
    server.finished.set()

    def body(server: ReplayServer) -> list[tuple[int, Any]]:
        return [
            get(server, "/api/v3/klines?symbol=ABCUSDT&interval=1m"),
            get(server, "/api/v3/klines?symbol=ABCUSDT&interval=7m"),
            get(server, "/api/v3/klines?symbol=NOPE&interval=1m"),
            get(server, "/api/v3/klines?interval=1m"),
            get(server, "/api/v3/klines?symbol=ABCUSDT&interval=1m&startTime=x"),
        ]

    (status, klines), *errors = run_with_server(server, body)
    assert status == 200
    assert [(k[0] - DAY_MS, k[1], k[2], k[3], k[4], k[5], k[8]) for k in klines] == [
        (0, "10.5", "11", "10.5", "11", "5.0", 2),
        (60_000, "11", "11", "11", "11", "0", 0),  # quiet minutes: previous close, no volume
        (120_000, "11", "11", "11", "11", "0", 0),
        (180_000, "9", "9", "9", "9", "2.5", 1),
    ]
    assert Decimal(klines[0][7]) == Decimal("10.5") * Decimal("2.5") + 11 * Decimal("2.5")
    assert Decimal(klines[0][9]) == Decimal("2.5")  # trade 1: buyer is the taker (m false)
    assert [(s, b["code"]) for s, b in errors] == [
        (400, -1120),
        (400, -1121),
        (400, -1102),
        (400, -1100),
    ]
