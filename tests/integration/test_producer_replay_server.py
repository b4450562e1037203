"""The replay server speaks Binance's shapes; the recorder writes what the server replays.

No Kafka needed: a local replay server in-process and plain WebSocket/HTTP clients.
Expected values come from the fixture file read with the json module.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from producer_app.config import load_settings
from producer_app.recorder import record
from producer_app.replay_server import ReplayServer, load_recording

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "trxusdt-trade-2025-03-04.jsonl.gz"
with gzip.open(FIXTURE, "rt") as _handle:
    PAYLOADS = [json.loads(line) for line in _handle][:2000]
FRAMES = [
    json.dumps({"stream": "trxusdt@trade", "data": p}, separators=(",", ":")).encode()
    for p in PAYLOADS
]


async def _with_server(body, **kwargs):  # type: ignore[no-untyped-def]
    server = ReplayServer(load_recording(FRAMES), **kwargs)
    await server.start("127.0.0.1", 0)
    try:
        return await asyncio.wait_for(body(server), timeout=60)
    finally:
        await server.stop()


def test_combined_and_raw_paths_and_end_of_recording() -> None:
    async def body(server: ReplayServer) -> tuple[list[bytes], int, str]:
        received = []
        async with connect(f"{server.ws_url}/ws/trxusdt@trade") as ws:
            try:
                while True:
                    received.append(await ws.recv(decode=False))
            except ConnectionClosed as err:
                assert err.rcvd is not None
                return received, err.rcvd.code, err.rcvd.reason

    received, code, reason = asyncio.run(_with_server(body))
    assert [json.loads(f) for f in received] == PAYLOADS  # raw payloads on /ws/<stream>
    assert (code, reason) == (1000, "end of recording")


def test_only_subscribed_streams_are_sent_and_subscribe_is_answered() -> None:
    async def body(server: ReplayServer) -> tuple[object, int, int]:
        async with connect(f"{server.ws_url}/stream?streams=btcusdt@trade") as ws:
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 7}))
            reply = json.loads(await ws.recv())
            await server.finished.wait()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), timeout=0.5)
        return reply, server.stats.frames_sent, server.stats.messages_sent

    reply, frames_sent, messages_sent = asyncio.run(_with_server(body, close_at_end=False))
    assert reply == {"result": ["btcusdt@trade"], "id": 7}
    assert frames_sent == len(FRAMES)  # the feed went through the recording...
    assert messages_sent == 0  # ...and sent none of it: only trxusdt@trade is recorded


def test_historical_trades_serves_the_past_in_binance_shape() -> None:
    async def body(server: ReplayServer) -> list[dict[str, object]]:
        server.cursor = 100  # the feed has reached frame 100
        from_id = PAYLOADS[90]["t"]
        url = f"{server.rest_url}/api/v3/historicalTrades?symbol=TRXUSDT&fromId={from_id}&limit=50"

        def fetch() -> bytes:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
                return response.read()

        return json.loads(await asyncio.to_thread(fetch))

    trades = asyncio.run(_with_server(body))
    assert [t["id"] for t in trades] == [p["t"] for p in PAYLOADS[90:100]]  # not the future
    first, source = trades[0], PAYLOADS[90]
    assert set(first) == {"id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"}
    assert (first["price"], first["qty"], first["isBuyerMaker"]) == (
        source["p"],
        source["q"],
        source["m"],
    )
    assert first["time"] == source["T"] // 1000  # ms unless X-MBX-TIME-UNIT asks for µs


def test_recorder_writes_what_the_server_replays(tmp_path: Path) -> None:
    out = tmp_path / "session.jsonl.gz"

    async def body(server: ReplayServer) -> int:
        settings = load_settings(binance_ws_url=server.ws_url, producer_backoff_base_s=0.05)
        return await record(settings, out, ["trxusdt@trade"], duration_s=30)

    written = asyncio.run(_with_server(body))
    assert written == len(FRAMES)
    with gzip.open(out, "rb") as handle:
        assert [line.rstrip(b"\n") for line in handle] == FRAMES
    assert len(load_recording(out).lines) == len(FRAMES)  # readable by the replay server
