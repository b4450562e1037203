"""WebSocket client: combined-stream connections with rotation, watchdog, backoff and rate limit.

Data comes from Binance (``BINANCE_WS_URL``, or the local replay server) as text frames on
``<base>/stream?streams=a/b/...``; each frame goes, as bytes, to a handler (the pipeline)
together with the connection that delivered it.

Lifecycle of one ``StreamGroup`` (one set of at most 1024 streams):

* **pings** are answered by the ``websockets`` library itself (RFC 6455: a pong echoing
  the ping's payload, sent as soon as the ping is read); the replay server checks the echo.
* **rotation**: after ``PRODUCER_ROTATION_INTERVAL_S`` (23 h; Binance closes at 24 h) a
  second connection is opened on the same streams; both feed the pipeline, whose
  ``SequenceTracker`` drops the overlap; once the new one has delivered a frame the old one
  is closed. Nothing is missed (the old connection runs until the new one delivers) and
  nothing is doubled (dedup by symbol, stream, sequence id).
* **serverShutdown** triggers the same overlap switch at once.
* **watchdog**: a connection that delivered no data frame for
  ``PRODUCER_WATCHDOG_TIMEOUT_S`` is aborted and replaced.
* **reconnect** after a lost connection: immediately the first time, then exponential
  backoff ``base * 2**(n-1)`` capped at ``PRODUCER_BACKOFF_CAP_S`` with "equal jitter"
  (a uniform draw in [d/2, d]); every attempt of every group passes one shared
  ``ConnectLimiter`` that keeps attempts within 300 per 5 minutes (Binance's per-IP limit).
  The lost connection's trade symbols get a reconnect window in the tracker (gap filling).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from producer_app.config import ProducerSettings
from producer_app.metrics import ProducerMetrics

log = logging.getLogger(__name__)

#: The replay server closes with this code and reason when its recording is exhausted.
END_OF_RECORDING_CODE: Final = 1000
END_OF_RECORDING_REASON: Final = "end of recording"
# Frames larger than PRODUCER_MAX_FRAME_BYTES are dead-lettered by the parser; the socket
# limit is far above it so such a frame does not kill the connection (1009) first.
_SOCKET_MAX_SIZE: Final = 16 * 1024 * 1024

_ids = itertools.count(1)


class ConnectLimiter:
    """At most ``max_attempts`` connection attempts in any ``window_s`` (sliding log).

    A sliding log is exact where a token bucket would only bound the average: Binance
    counts attempts per 5 minutes per IP and bans repeated violators.
    """

    def __init__(
        self, max_attempts: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_attempts
        self._window = window_s
        self._clock = clock
        self._attempts: collections.deque[float] = collections.deque()

    def delay(self) -> float:
        """Seconds to wait before the next attempt is allowed (0 = now)."""
        now = self._clock()
        while self._attempts and self._attempts[0] <= now - self._window:
            self._attempts.popleft()
        if len(self._attempts) < self._max:
            return 0.0
        return self._attempts[0] + self._window - now

    def record(self) -> None:
        self._attempts.append(self._clock())

    async def acquire(self) -> None:
        while (wait := self.delay()) > 0:
            log.warning("connection attempts at the limit; waiting %.1f s", wait)
            await asyncio.sleep(wait)
        self.record()

    def attempts_in_window(self) -> int:
        self.delay()
        return len(self._attempts)


def backoff_delay(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Delay before reconnect attempt number ``failures`` (0 = first: no wait)."""
    if failures <= 0:
        return 0.0
    ceiling = min(cap_s, base_s * 2 ** min(failures - 1, 30))
    return rng.uniform(ceiling / 2, ceiling)


def stream_urls(
    base_url: str, stream_names: Sequence[str], per_connection: int, time_unit: str
) -> list[str]:
    """Combined-stream URLs, ``per_connection`` streams each (Binance: at most 1024)."""
    base = base_url.rstrip("/")
    urls = []
    for start in range(0, len(stream_names), per_connection):
        chunk = "/".join(
            _lower_symbol(name) for name in stream_names[start : start + per_connection]
        )
        url = f"{base}/stream?streams={quote(chunk, safe='/@_')}"
        if time_unit == "MICROSECOND":
            url += "&timeUnit=MICROSECOND"
        urls.append(url)
    return urls


def _lower_symbol(name: str) -> str:
    # Symbols are lower case in stream names; the stream type keeps its case (miniTicker).
    symbol, _, kind = name.partition("@")
    return f"{symbol.lower()}@{kind}"


FrameHandler = Callable[[bytes, "StreamConnection"], None]


class StreamConnection:
    """One open WebSocket and the task reading it."""

    def __init__(
        self, url: str, ws: ClientConnection, handler: FrameHandler, wake: asyncio.Event
    ) -> None:
        self.id = next(_ids)
        self.url = url
        self.ws = ws
        self.opened_at = time.monotonic()
        self.last_frame_at = self.opened_at
        self.frames = 0
        self.delivered = asyncio.Event()
        self.shutdown_notice = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self.error: BaseException | None = None
        self._handler = handler
        self._wake = wake  # the owning group's supervisor
        self.task = asyncio.create_task(self._read(), name=f"ws-reader-{self.id}")

    async def _read(self) -> None:
        ws = self.ws
        handler = self._handler
        monotonic = time.monotonic
        try:
            while True:
                frame = await ws.recv(decode=False)
                self.last_frame_at = monotonic()
                self.frames += 1
                if self.frames == 1:
                    self.delivered.set()
                handler(frame, self)
        except ConnectionClosed as err:
            if err.rcvd is not None:
                self.close_code, self.close_reason = err.rcvd.code, err.rcvd.reason
            log.info("connection %s closed: %s", self.id, err)

    def notice_server_shutdown(self) -> None:
        self.shutdown_notice.set()
        self._wake.set()

    @property
    def done(self) -> bool:
        return self.task.done()

    @property
    def ended_by_end_of_recording(self) -> bool:
        return (
            self.close_code == END_OF_RECORDING_CODE
            and self.close_reason == END_OF_RECORDING_REASON
        )

    async def close(self) -> None:
        await self.ws.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout=5)
        except TimeoutError:
            self.task.cancel()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (watchdog)."""
        self.ws.transport.abort()
        self.task.cancel()


class StreamGroup:
    """Keeps one set of streams flowing through connection after connection."""

    def __init__(
        self,
        url: str,
        symbols: Sequence[str],
        settings: ProducerSettings,
        handler: FrameHandler,
        limiter: ConnectLimiter,
        metrics: ProducerMetrics,
        on_lost: Callable[[Sequence[str]], None],
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.symbols = tuple(symbols)
        self._settings = settings
        self._handler = handler
        self._limiter = limiter
        self._metrics = metrics
        self._on_lost = on_lost
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self.current: StreamConnection | None = None
        self.finished_by_end_of_recording = False
        self.connections_opened = 0
        self._failures = 0  # consecutive attempts that did not lead to a delivering connection
        self.reconnects: collections.Counter[str] = collections.Counter()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def _connect_once(self) -> StreamConnection | None:
        await self._limiter.acquire()
        self._metrics.connect_attempts.inc()
        try:
            ws = await connect(
                self.url,
                max_size=_SOCKET_MAX_SIZE,
                max_queue=4096,
                ping_interval=None,  # Binance pings us; the watchdog covers dead links
                open_timeout=self._settings.producer_connect_timeout_s,
                close_timeout=2,
                compression=None,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as err:
            log.warning("connect to %s failed: %s", self.url, err)
            return None
        self.connections_opened += 1
        self._metrics.open_connections.inc()
        conn = StreamConnection(self.url, ws, self._handler, self._wake)
        conn.task.add_done_callback(self._connection_ended)
        log.info("connection %s open: %s", conn.id, self.url)
        return conn

    def _connection_ended(self, _task: asyncio.Task[None]) -> None:
        self._metrics.open_connections.dec()
        self._wake.set()

    async def _connect_with_backoff(self) -> StreamConnection | None:
        # Failures carry over from connections that closed before delivering anything, so a
        # server that accepts and at once closes is retried with backoff, not in a burst.
        failures = self._failures
        while not self._stop.is_set():
            delay = backoff_delay(
                failures,
                self._settings.producer_backoff_base_s,
                self._settings.producer_backoff_cap_s,
                self._rng,
            )
            if delay:
                log.info("reconnecting in %.2f s (attempt %s)", delay, failures + 1)
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                    return None
                except TimeoutError:
                    pass
            conn = await self._connect_once()
            if conn is not None:
                self._failures = failures
                return conn
            failures += 1
        return None

    async def run(self) -> None:
        settings = self._settings
        tick = min(
            1.0, settings.producer_watchdog_timeout_s / 4, settings.producer_rotation_interval_s / 4
        )
        self.current = await self._connect_with_backoff()
        while self.current is not None and not self._stop.is_set():
            current = self.current
            now = time.monotonic()
            if current.done:
                if current.ended_by_end_of_recording and settings.producer_stop_at_end_of_recording:
                    log.info("end of recording on %s", self.url)
                    self.finished_by_end_of_recording = True
                    break
                cause = "closed" if current.close_code is not None else "error"
                await self._replace_lost(cause)
                continue
            if now - current.last_frame_at > settings.producer_watchdog_timeout_s:
                log.warning(
                    "connection %s silent for %.1f s: replacing it",
                    current.id,
                    now - current.last_frame_at,
                )
                current.abort()
                await self._replace_lost("watchdog")
                continue
            if current.shutdown_notice.is_set():
                await self._switch("server_shutdown")
                continue
            if now - current.opened_at >= settings.producer_rotation_interval_s:
                await self._switch("rotation")
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=tick)
            except TimeoutError:
                pass
        if self.current is not None and not self.current.done:
            await self.current.close()

    async def _replace_lost(self, cause: str) -> None:
        lost = self.current
        self._failures = 0 if lost is not None and lost.frames > 0 else self._failures + 1
        self._metrics.reconnects.labels(cause).inc()
        self.reconnects[cause] += 1
        self._on_lost(self.symbols)
        self.current = await self._connect_with_backoff()

    async def _switch(self, cause: str) -> None:
        """Open a replacement, keep both until it delivers, then close the old one."""
        old = self.current
        assert old is not None  # noqa: S101 - run() only switches an open connection
        log.info("switching connection %s (%s)", old.id, cause)
        new = await self._connect_with_backoff()
        if new is None:
            return
        waiters = {
            asyncio.ensure_future(new.delivered.wait()),
            asyncio.ensure_future(new.task),
            asyncio.ensure_future(self._stop.wait()),
        }
        _done, pending = await asyncio.wait(
            waiters,
            timeout=self._settings.producer_watchdog_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for waiter in pending:
            if waiter is not new.task:
                waiter.cancel()
        if new.delivered.is_set() or (old.done and not new.done):
            self._metrics.reconnects.labels(cause).inc()
            self.reconnects[cause] += 1
            if not old.done:
                await old.close()
            self.current = new
            log.info("switched to connection %s", new.id)
        else:
            log.warning("replacement connection %s did not deliver; keeping %s", new.id, old.id)
            if not new.done:
                await new.close()
            old.shutdown_notice.clear()  # the server will close it; that path reconnects
            if cause == "rotation":
                old.opened_at = (
                    time.monotonic()
                    - self._settings.producer_rotation_interval_s
                    + tick_retry(self._settings)
                )


def tick_retry(settings: ProducerSettings) -> float:
    """After a failed rotation, try again after this long (bounded by the watchdog)."""
    return min(60.0, settings.producer_watchdog_timeout_s)
