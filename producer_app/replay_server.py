"""Local stand-in for Binance: replays a recording over Binance's WebSocket and REST shapes.

``python -m producer_app.replay_server --recording FILE --speed FACTOR|max [--host H --port P]``

Data comes from a recording (JSON Lines, optionally gzip, one combined-stream frame per
line, see recordings/README.md); it goes to WebSocket clients on

* ``/stream?streams=a/b/c`` (combined frames ``{"stream": ..., "data": ...}``, sent as
  recorded) and ``/ws/<stream>`` (raw payloads), each client getting only the streams it
  asked for (plus ``SUBSCRIBE``/``UNSUBSCRIBE``/``LIST_SUBSCRIPTIONS`` requests, answered
  like Binance with ``{"result": ..., "id": ...}``);
* ``GET /api/v3/historicalTrades?symbol=X&fromId=N&limit=L`` on the same port: trades of
  the recording the feed has already reached (sent or skipped), shaped like Binance's
  "Old trade lookup" (``id, price, qty, quoteQty, time, isBuyerMaker, isBestMatch``),
  ``time`` in ms, or in µs with header ``X-MBX-TIME-UNIT: MICROSECOND``;
* ``GET /api/v3/klines?symbol=X&interval=1m&startTime=&endTime=&limit=`` (Binance's
  "Kline/Candlestick data": arrays ``[open time, open, high, low, close, volume, close time,
  quote volume, trades, taker buy base, taker buy quote, "0"]``, decimals as strings, limit
  500 by default, 1000 at most, intervals 1m .. 1d), computed from the same past trades: every
  bucket from the symbol's first trade to its newest past one, a bucket without trades
  carrying the previous close with zero volume, as Binance does;
* ``GET /api/v3/time``: ``{"serverTime": ms}``, the event time the feed has reached (the
  recording's clock), or the wall clock once the recording is finished (all of it is past).

The feed behaves like a live market shared by all clients: one cursor walks the recording
(paced by the frames' event times divided by ``--speed``, or as fast as clients read
with ``max``) and sends each frame to every connected subscriber of its stream. It waits
while nobody is listening, so nothing is lost unless a fault says so. Frames are sent as
recorded: ``timeUnit`` in the URL is accepted but times are not converted (the producer
reads the unit from each value's magnitude).

Like Binance it pings every ``--ping-interval`` seconds (20) and closes a connection whose
pong (which must echo the ping payload) does not come within ``--ping-timeout`` (60).

At the end of the recording it closes every connection with code 1000 and reason
"end of recording" (and refuses new ones the same way) but keeps serving REST, so a
producer can still fill its last gaps. Fault injection (one-shot, by global frame index):
drop all connections (``--drop-after N``, then skip ``--drop-skip K`` frames as if they
happened while clients were away), ``serverShutdown`` (``--shutdown-after N``), go silent
(``--silent-after N``), malformed frames (``--malformed-after N``), frames withheld from
the WebSocket but served over REST (``--skip-frames A:B``), ids REST will not return
(``--rest-missing-ids``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gzip
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from producer_app.ws import END_OF_RECORDING_CODE, END_OF_RECORDING_REASON

log = logging.getLogger(__name__)

#: Malformed frames injected by ``--malformed-after``: (frame, the dead-letter reason code
#: the producer must give it). Tests import this list.
MALFORMED_FRAMES: Final[tuple[tuple[bytes, str], ...]] = (
    (b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1577836800134', "invalid_json"),
    (b"[1,2,3]", "not_an_object"),
    (
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1577836800134,"s":"BTCUSDT",'
        b'"t":1,"p":"NaN","q":"0.1","T":1577836800133,"m":true,"M":true}}',
        "bad_decimal",
    ),
    (
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1577836800134,"s":"BTCUSDT",'
        b'"t":1,"p":"0.00000000","q":"0.1","T":1577836800133,"m":true,"M":true}}',
        "non_positive_value",
    ),
    (
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1577836800134,"s":"BTCUSDT",'
        b'"t":1,"q":"0.1","T":1577836800133,"m":true,"M":true}}',
        "missing_field",
    ),
    (
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":"1577836800134","s":"BTCUSDT",'
        b'"t":1,"p":"7195.24","q":"0.1","T":1577836800133,"m":true,"M":true}}',
        "wrong_type",
    ),
    (
        b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1577836800134,"s":"BTCUSDT",'
        b'"k":{"t":1577836800000,"T":1577836859999,"s":"BTCUSDT","i":"1m","o":"7195.24"}}}',
        "unsupported_event_type",
    ),
)


#: Kline intervals the replay server answers, in ms (Binance's fixed-length ones up to 1d).
KLINE_INTERVALS_MS: Final[dict[str, int]] = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
}


class RecordingError(ValueError):
    """The recording file is missing or not in the documented format."""


@dataclass(frozen=True, slots=True)
class RecordedTrade:
    trade_id: int
    frame_index: int
    price: str
    qty: str
    time: int  # as recorded (ms or µs)
    is_buyer_maker: bool


@dataclass
class Recording:
    """Frames in order plus a per-symbol trade index for the REST endpoint."""

    lines: list[bytes]
    streams: list[str]  # lower-cased stream name of each frame
    event_times_s: list[float]  # E of each frame in seconds (pacing)
    trades: dict[str, list[RecordedTrade]]  # symbol -> trades sorted by id
    trade_ids: dict[str, list[int]]
    kinds: list[str] = field(default_factory=list)  # stream types as recorded (miniTicker)

    @property
    def symbols(self) -> list[str]:
        seen: dict[str, None] = {}
        for stream in self.streams:
            seen[stream.split("@", 1)[0].upper()] = None
        return list(seen)

    @property
    def stream_kinds(self) -> list[str]:
        """Stream types in first-seen order, with the recording's case (``miniTicker``)."""
        return list(self.kinds)


def load_recording(source: str | Path | Iterable[bytes]) -> Recording:
    """Read a JSON Lines recording (``.gz`` by suffix) or an iterable of frame lines."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise RecordingError(f"recording not found: {path}")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw_lines = [line.rstrip(b"\r\n") for line in handle]
    else:
        raw_lines = [line.rstrip(b"\r\n") for line in source]
    lines: list[bytes] = []
    streams: list[str] = []
    times: list[float] = []
    trades: dict[str, list[RecordedTrade]] = {}
    kinds: dict[str, None] = {}
    last_time = 0.0
    for number, line in enumerate(raw_lines, start=1):
        if not line.strip():
            continue
        try:
            frame = orjson.loads(line)
            stream = frame["stream"]
            data = frame["data"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as err:
            raise RecordingError(f"line {number}: not a combined-stream frame: {err}") from err
        event_time = data.get("E") if isinstance(data, dict) else None
        if isinstance(event_time, int) and event_time > 0:
            last_time = event_time / 1e6 if event_time >= 10**14 else event_time / 1e3
        index = len(lines)
        lines.append(line)
        streams.append(str(stream).lower())  # routing is case-insensitive
        kinds[str(stream).partition("@")[2]] = None
        times.append(last_time)
        if isinstance(data, dict) and data.get("e") == "trade":
            try:
                trades.setdefault(data["s"], []).append(
                    RecordedTrade(
                        int(data["t"]), index, data["p"], data["q"], int(data["T"]), bool(data["m"])
                    )
                )
            except (KeyError, TypeError, ValueError) as err:
                raise RecordingError(f"line {number}: bad trade payload: {err}") from err
    for symbol_trades in trades.values():
        symbol_trades.sort(key=lambda t: t.trade_id)
    return Recording(
        lines,
        streams,
        times,
        trades,
        {s: [t.trade_id for t in ts] for s, ts in trades.items()},
        list(kinds),
    )


def _trade_time_ms(trade: RecordedTrade) -> int:
    return trade.time // 1000 if trade.time >= 10**14 else trade.time


def _plain(value: Decimal) -> str:
    return format(value, "f")


def compute_klines(
    trades: Sequence[RecordedTrade],
    interval_ms: int,
    start_ms: int | None,
    end_ms: int | None,
    limit: int,
) -> list[list[Any]]:
    """Binance-shaped klines of trades given in (time, id) order.

    Buckets are UTC-aligned (open time a multiple of the interval), from the first trade's
    bucket to the last one's; a bucket without trades has open = high = low = close = the
    previous close and zero volume and count, as Binance reports quiet minutes. Selection as
    Binance: open time in [startTime, endTime]; without startTime, the newest `limit`.
    """
    if not trades:
        return []
    first_open = _trade_time_ms(trades[0]) // interval_ms * interval_ms
    last_open = _trade_time_ms(trades[-1]) // interval_ms * interval_ms
    lo = (
        first_open
        if start_ms is None
        else max(first_open, -(-start_ms // interval_ms) * interval_ms)
    )
    hi = last_open if end_ms is None else min(last_open, end_ms // interval_ms * interval_ms)
    if lo > hi:
        return []
    if start_ms is None:
        lo = max(lo, hi - (limit - 1) * interval_ms)
    hi = min(hi, lo + (limit - 1) * interval_ms)
    times = [_trade_time_ms(t) for t in trades]
    index = bisect.bisect_left(times, lo)
    previous_close = trades[index - 1].price if index > 0 else trades[0].price
    rows: list[list[Any]] = []
    zero = Decimal(0)
    for open_ms in range(lo, hi + 1, interval_ms):
        end = bisect.bisect_left(times, open_ms + interval_ms, lo=index)
        bucket = trades[index:end]
        index = end
        if bucket:
            prices = [Decimal(t.price) for t in bucket]
            qtys = [Decimal(t.qty) for t in bucket]
            quote = [p * q for p, q in zip(prices, qtys, strict=True)]
            taker = [i for i, t in enumerate(bucket) if not t.is_buyer_maker]
            previous_close = bucket[-1].price
            values = [
                bucket[0].price,
                _plain(max(prices)),
                _plain(min(prices)),
                bucket[-1].price,
                _plain(sum(qtys, zero)),
                _plain(sum(quote, zero)),
                len(bucket),
                _plain(sum((qtys[i] for i in taker), zero)),
                _plain(sum((quote[i] for i in taker), zero)),
            ]
        else:
            close = previous_close
            values = [close, close, close, close, "0", "0", 0, "0", "0"]
        rows.append(
            [
                open_ms,
                *values[:5],
                open_ms + interval_ms - 1,
                values[5],
                values[6],
                *values[7:],
                "0",
            ]
        )
    return rows


@dataclass
class FaultPlan:
    """One-shot faults keyed by global frame index (0-based: "after N frames")."""

    drop_after: int | None = None
    drop_skip: int = 0
    shutdown_after: int | None = None
    shutdown_close_after: int = 50  # frames later the announced shutdown happens
    silent_after: int | None = None
    malformed_after: int | None = None
    skip_frames: tuple[int, int] | None = None  # [a, b) withheld from WS, served on REST
    rest_missing_ids: frozenset[int] = frozenset()
    rest_unavailable: bool = False
    rest_fail_first: int = 0  # the first N historicalTrades requests answer 503


@dataclass
class ReplayStats:
    frames_sent: int = 0  # frames of the recording sent at least once
    frames_skipped: int = 0  # withheld by faults
    messages_sent: int = 0  # WebSocket messages over all connections (incl. malformed)
    connections: int = 0
    pings_sent: int = 0
    pongs_received: int = 0
    rest_requests: int = 0
    faults_fired: list[str] = field(default_factory=list)


class _Subscriber:
    def __init__(self, ws: ServerConnection, streams: set[str], raw: bool) -> None:
        self.ws = ws
        self.streams = streams
        self.raw = raw
        self.muted = False
        self.close_after: int | None = None  # global frame index (announced shutdown)


class ReplayServer:
    """The replay feed, usable in-process (tests, ``producer_app.replay``) or as a command."""

    def __init__(
        self,
        recording: Recording,
        speed: float | None = None,  # None = as fast as possible
        faults: FaultPlan | None = None,
        ping_interval_s: float = 20.0,
        ping_timeout_s: float = 60.0,
        close_at_end: bool = True,
        min_subscribers: int = 1,
    ) -> None:
        self.recording = recording
        # The feed starts once this many clients listen (a producer splitting >1024 streams
        # over several connections gets the first frames on all of them).
        self.min_subscribers = min_subscribers
        self.speed = speed
        self.faults = faults or FaultPlan()
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.close_at_end = close_at_end
        self.stats = ReplayStats()
        self.cursor = 0  # frames before this index are in the past (REST-visible)
        self.finished = asyncio.Event()
        self._subscribers: list[_Subscriber] = []
        self._listener = asyncio.Event()
        self._server: Server | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self._by_time: dict[str, list[RecordedTrade]] = {}  # klines: trades in time order

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            ping_interval=None,  # our own ping loop counts the pongs
            max_size=1 << 20,
            compression=None,
        )
        sock = next(iter(self._server.sockets))
        self.host, self.port = sock.getsockname()[:2]
        self._feed_task = asyncio.create_task(self._feed(), name="replay-feed")
        log.info(
            "replay server on ws://%s:%s (%s frames)",
            self.host,
            self.port,
            len(self.recording.lines),
        )
        return self.port

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self._feed_task is not None:
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed_task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- REST --------------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path.startswith("/ws/") or parts.path == "/stream":
            return None  # WebSocket handshake continues in _handle
        endpoints = {
            "/api/v3/historicalTrades": self.historical_trades,
            "/api/v3/klines": self.klines,
            "/api/v3/time": self.server_time,
        }
        endpoint = endpoints.get(parts.path)
        if endpoint is not None:
            self.stats.rest_requests += 1
            status, body = endpoint(parts.query, request.headers)
            headers = Headers(
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return Response(status.value, status.phrase, headers, body)
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")

    def _past(self, trade: RecordedTrade) -> bool:
        """Whether the feed has reached this trade (REST serves only the past, as Binance)."""
        return self.finished.is_set() or trade.frame_index < self.cursor

    def server_time(self, query: str, headers: Headers | None = None) -> tuple[HTTPStatus, bytes]:
        """``/api/v3/time``: the recording's clock, or the wall clock once it is all past."""
        del query, headers
        if self.finished.is_set() or not self.recording.event_times_s:
            now_ms = int(time.time() * 1000)
        else:
            index = min(max(self.cursor - 1, 0), len(self.recording.event_times_s) - 1)
            now_ms = int(self.recording.event_times_s[index] * 1000)
        return HTTPStatus.OK, orjson.dumps({"serverTime": now_ms})

    def klines(self, query: str, headers: Headers | None = None) -> tuple[HTTPStatus, bytes]:
        """``/api/v3/klines`` computed from the past trades of the recording (module doc)."""
        if self.faults.rest_unavailable:
            return HTTPStatus.SERVICE_UNAVAILABLE, orjson.dumps(
                {"code": -1001, "msg": "Internal error"}
            )
        params = parse_qs(query)
        symbol = (params.get("symbol") or [""])[0]
        interval = (params.get("interval") or [""])[0]
        if not symbol or not interval:
            missing = "symbol" if not symbol else "interval"
            return HTTPStatus.BAD_REQUEST, orjson.dumps(
                {"code": -1102, "msg": f"Mandatory parameter '{missing}' was not sent."}
            )
        if interval not in KLINE_INTERVALS_MS:
            return HTTPStatus.BAD_REQUEST, orjson.dumps({"code": -1120, "msg": "Invalid interval."})
        if symbol not in self.recording.trades:
            return HTTPStatus.BAD_REQUEST, orjson.dumps({"code": -1121, "msg": "Invalid symbol."})
        try:
            limit = min(max(int((params.get("limit") or ["500"])[0]), 1), 1000)
            start_ms = int(params["startTime"][0]) if "startTime" in params else None
            end_ms = int(params["endTime"][0]) if "endTime" in params else None
        except ValueError:
            return HTTPStatus.BAD_REQUEST, orjson.dumps(
                {"code": -1100, "msg": "Illegal characters in parameter."}
            )
        micro = (
            headers is not None and str(headers.get("X-MBX-TIME-UNIT", "")).upper() == "MICROSECOND"
        )
        rows = compute_klines(
            [t for t in self._trades_by_time(symbol) if self._past(t)],
            KLINE_INTERVALS_MS[interval],
            start_ms,
            end_ms,
            limit,
        )
        if micro:
            rows = [[r[0] * 1000, *r[1:6], r[6] * 1000 + 999, *r[7:]] for r in rows]
        return HTTPStatus.OK, orjson.dumps(rows)

    def _trades_by_time(self, symbol: str) -> list[RecordedTrade]:
        cached = self._by_time.get(symbol)
        if cached is None:
            cached = sorted(
                self.recording.trades[symbol], key=lambda t: (_trade_time_ms(t), t.trade_id)
            )
            self._by_time[symbol] = cached
        return cached

    def historical_trades(
        self, query: str, headers: Headers | None = None
    ) -> tuple[HTTPStatus, bytes]:
        if self.faults.rest_unavailable or self.stats.rest_requests <= self.faults.rest_fail_first:
            return HTTPStatus.SERVICE_UNAVAILABLE, orjson.dumps(
                {"code": -1001, "msg": "Internal error"}
            )
        params = parse_qs(query)
        symbol = (params.get("symbol") or [""])[0]
        if not symbol:
            return HTTPStatus.BAD_REQUEST, orjson.dumps(
                {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent."}
            )
        trades = self.recording.trades.get(symbol)
        if trades is None:
            return HTTPStatus.BAD_REQUEST, orjson.dumps({"code": -1121, "msg": "Invalid symbol."})
        try:
            limit = min(max(int((params.get("limit") or ["500"])[0]), 1), 1000)
            from_ids = params.get("fromId")
            from_id = int(from_ids[0]) if from_ids else None
        except ValueError:
            return HTTPStatus.BAD_REQUEST, orjson.dumps(
                {"code": -1100, "msg": "Illegal characters in parameter."}
            )
        micro = (
            headers is not None and str(headers.get("X-MBX-TIME-UNIT", "")).upper() == "MICROSECOND"
        )
        ids = self.recording.trade_ids[symbol]
        finished = self.finished.is_set()
        cursor = self.cursor
        candidates: Sequence[RecordedTrade]
        if from_id is None:
            candidates = [t for t in trades if finished or t.frame_index < cursor][-limit:]
        else:
            candidates = trades[bisect.bisect_left(ids, from_id) :]
        out = []
        for trade in candidates:
            if not finished and trade.frame_index >= cursor:
                break  # only the past is served, as on Binance
            if trade.trade_id in self.faults.rest_missing_ids:
                continue
            t_us = trade.time if trade.time >= 10**14 else trade.time * 1000
            out.append(
                {
                    "id": trade.trade_id,
                    "price": trade.price,
                    "qty": trade.qty,
                    "quoteQty": format(Decimal(trade.price) * Decimal(trade.qty), "f"),
                    "time": t_us if micro else t_us // 1000,
                    "isBuyerMaker": trade.is_buyer_maker,
                    "isBestMatch": True,
                }
            )
            if len(out) == limit:
                break
        return HTTPStatus.OK, orjson.dumps(out)

    # -- WebSocket ---------------------------------------------------------------------------------
    @staticmethod
    def _requested_streams(path: str) -> tuple[set[str], bool] | None:
        parts = urlsplit(path)
        if parts.path.startswith("/ws/"):
            name = parts.path[len("/ws/") :]
            return ({name.lower()} if name else set()), True
        if parts.path == "/stream":
            names = (parse_qs(parts.query).get("streams") or [""])[0]
            return {n.lower() for n in names.split("/") if n}, False
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        requested = self._requested_streams(ws.request.path if ws.request else "")
        if requested is None:
            await ws.close(1008, "unknown path")
            return
        if self.finished.is_set() and self.close_at_end:
            await ws.close(END_OF_RECORDING_CODE, END_OF_RECORDING_REASON)
            return
        streams, raw = requested
        subscriber = _Subscriber(ws, streams, raw)
        self.stats.connections += 1
        self._subscribers.append(subscriber)
        self._listener.set()
        pinger = asyncio.create_task(self._ping_loop(ws))
        try:
            async for message in ws:
                await self._on_request(subscriber, message)
        except ConnectionClosed:
            pass
        finally:
            pinger.cancel()
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    async def _on_request(self, subscriber: _Subscriber, message: str | bytes) -> None:
        try:
            request = orjson.loads(message)
            method, request_id = request["method"], request.get("id")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            error = {"error": {"code": 2, "msg": "Invalid request"}, "id": None}
            await subscriber.ws.send(orjson.dumps(error), text=True)
            return
        params = [str(p).lower() for p in request.get("params") or []]
        result: Any = None
        if method == "SUBSCRIBE":
            subscriber.streams.update(params)
        elif method == "UNSUBSCRIBE":
            subscriber.streams.difference_update(params)
        elif method == "LIST_SUBSCRIPTIONS":
            result = sorted(subscriber.streams)
        else:
            await subscriber.ws.send(
                orjson.dumps(
                    {"error": {"code": 2, "msg": f"Invalid method {method}"}, "id": request_id}
                ),
                text=True,
            )
            return
        await subscriber.ws.send(orjson.dumps({"result": result, "id": request_id}), text=True)

    async def _ping_loop(self, ws: ServerConnection) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            payload = os.urandom(8)
            try:
                pong = await ws.ping(payload)  # resolves only on a pong echoing this payload
                self.stats.pings_sent += 1
                await asyncio.wait_for(pong, timeout=self.ping_timeout_s)
                self.stats.pongs_received += 1
            except TimeoutError:
                log.warning("no pong within %.0f s: closing", self.ping_timeout_s)
                await ws.close(1008, "pong timeout")
                return
            except ConnectionClosed:
                return

    # -- the feed ----------------------------------------------------------------------------------
    def _listeners(self) -> list[_Subscriber]:
        return [s for s in self._subscribers if not s.muted]

    async def _wait_for_listener(self) -> None:
        while not self._listeners():
            self._listener.clear()
            await self._listener.wait()

    async def _send(self, subscriber: _Subscriber, message: bytes) -> None:
        try:
            await subscriber.ws.send(message, text=True)
            self.stats.messages_sent += 1
        except ConnectionClosed:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    async def _broadcast_raw(self, message: bytes) -> None:
        for subscriber in list(self._listeners()):
            await self._send(subscriber, message)

    async def _fire_faults(self, index: int) -> int:
        """Faults due before frame ``index``; returns how many frames to skip."""
        faults = self.faults
        if faults.drop_after == index:
            self.stats.faults_fired.append(f"drop@{index}")
            for subscriber in list(self._subscribers):
                subscriber.ws.transport.abort()
                self._subscribers.remove(subscriber)
            return faults.drop_skip
        if faults.shutdown_after == index:
            self.stats.faults_fired.append(f"serverShutdown@{index}")
            notice = orjson.dumps({"e": "serverShutdown", "E": int(time.time() * 1000)})
            for subscriber in list(self._listeners()):
                subscriber.close_after = index + faults.shutdown_close_after
                await self._send(subscriber, notice)
        if faults.silent_after == index:
            self.stats.faults_fired.append(f"silent@{index}")
            for subscriber in self._subscribers:
                subscriber.muted = True
        if faults.malformed_after == index:
            self.stats.faults_fired.append(f"malformed@{index}")
            for frame, _reason in MALFORMED_FRAMES:
                await self._broadcast_raw(frame)
        return 0

    async def _feed(self) -> None:
        recording = self.recording
        lines, streams, times = recording.lines, recording.streams, recording.event_times_s
        skip_range = self.faults.skip_frames
        raw_cache: dict[int, bytes] = {}
        while len(self._listeners()) < self.min_subscribers:
            self._listener.clear()
            await self._listener.wait()
        started_wall = time.monotonic()
        started_event = times[0] if times else 0.0
        skip = 0
        for index in range(len(lines)):
            skip += await self._fire_faults(index)
            if skip > 0 or (skip_range is not None and skip_range[0] <= index < skip_range[1]):
                skip = max(0, skip - 1)
                self.stats.frames_skipped += 1
                self.cursor = index + 1
                continue
            await self._wait_for_listener()
            if self.speed is not None:
                due = started_wall + (times[index] - started_event) / self.speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            stream = streams[index]
            for subscriber in list(self._subscribers):
                if subscriber.muted or stream not in subscriber.streams:
                    continue
                if subscriber.raw:
                    message = raw_cache.get(index)
                    if message is None:
                        message = orjson.dumps(orjson.loads(lines[index])["data"])
                        raw_cache.clear()
                        raw_cache[index] = message
                else:
                    message = lines[index]
                await self._send(subscriber, message)
                if subscriber.close_after is not None and index >= subscriber.close_after:
                    await subscriber.ws.close(1001, "server shutdown")
                    if subscriber in self._subscribers:
                        self._subscribers.remove(subscriber)
            self.cursor = index + 1
            self.stats.frames_sent += 1
        self.cursor = len(lines)
        self.finished.set()
        log.info(
            "end of recording: %s frames sent, %s skipped",
            self.stats.frames_sent,
            self.stats.frames_skipped,
        )
        if self.close_at_end:
            for subscriber in list(self._subscribers):
                with contextlib.suppress(ConnectionClosed):
                    await subscriber.ws.close(END_OF_RECORDING_CODE, END_OF_RECORDING_REASON)
            self._subscribers.clear()


def parse_speed(text: str) -> float | None:
    """``max`` (as fast as possible) or a positive factor."""
    if text.lower() == "max":
        return None
    speed = float(text)
    if not speed > 0:
        raise argparse.ArgumentTypeError("speed must be > 0 or 'max'")
    return speed


def _range(text: str) -> tuple[int, int]:
    first, _, last = text.partition(":")
    return int(first), int(last)


def build_arg_parser(default_host: str, default_port: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m producer_app.replay_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--recording", required=True, help="JSON Lines recording (.jsonl or .jsonl.gz)"
    )
    parser.add_argument("--speed", type=parse_speed, default=1.0, help="speed factor, or 'max'")
    parser.add_argument("--host", default=default_host)
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--ping-interval", type=float, default=20.0)
    parser.add_argument("--ping-timeout", type=float, default=60.0)
    parser.add_argument(
        "--no-close-at-end", action="store_true", help="keep connections open after the last frame"
    )
    parser.add_argument(
        "--exit-at-end", action="store_true", help="exit once the recording is exhausted"
    )
    parser.add_argument(
        "--rest-only",
        action="store_true",
        help="no feed: the whole recording is past at once (REST: klines, trades, time)",
    )
    parser.add_argument("--drop-after", type=int)
    parser.add_argument("--drop-skip", type=int, default=0)
    parser.add_argument("--shutdown-after", type=int)
    parser.add_argument("--silent-after", type=int)
    parser.add_argument("--malformed-after", type=int)
    parser.add_argument(
        "--skip-frames", type=_range, help="A:B, frames withheld from the WebSocket"
    )
    parser.add_argument(
        "--rest-missing-ids", default="", help="comma-separated trade ids REST will not return"
    )
    parser.add_argument(
        "--rest-fail-first", type=int, default=0, help="the first N REST requests answer 503"
    )
    return parser


async def _serve_forever(args: argparse.Namespace) -> int:
    recording = load_recording(args.recording)
    faults = FaultPlan(
        drop_after=args.drop_after,
        drop_skip=args.drop_skip,
        shutdown_after=args.shutdown_after,
        silent_after=args.silent_after,
        malformed_after=args.malformed_after,
        skip_frames=args.skip_frames,
        rest_missing_ids=frozenset(int(x) for x in args.rest_missing_ids.split(",") if x.strip()),
        rest_fail_first=args.rest_fail_first,
    )
    server = ReplayServer(
        recording,
        args.speed,
        faults,
        args.ping_interval,
        args.ping_timeout,
        not args.no_close_at_end,
    )
    if args.rest_only:
        server.finished.set()  # the exchange's view of a day that is over
    await server.start(args.host, args.port)
    print(
        f"replay server on {server.ws_url} (REST {server.rest_url}), {len(recording.lines)} frames",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.create_task(stop.wait())]
    if args.exit_at_end:
        waiters.append(asyncio.create_task(server.finished.wait()))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    await server.stop()
    print(f"frames sent: {server.stats.frames_sent}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from producer_app.config import load_settings

    settings = load_settings()
    logging.basicConfig(
        level=settings.producer_log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    args = build_arg_parser(settings.replay_host, settings.replay_port).parse_args(argv)
    try:
        return asyncio.run(_serve_forever(args))
    except RecordingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
