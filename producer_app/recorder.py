"""``python -m producer_app.recorder --out FILE [--symbols ..] [--streams ..] [--duration S]``

Records live Binance frames into the recording format the replay server reads: JSON Lines
(gzip when FILE ends in ``.gz``), one combined-stream frame per line, byte for byte as
received. Data comes from ``BINANCE_WS_URL`` (``<base>/stream?streams=...``); it goes to
FILE. Control messages (``serverShutdown``, subscription replies) are not recorded. On a
lost connection it reconnects with the producer's backoff and rate limit and keeps
appending; it stops after ``--duration`` seconds, after ``--max-frames``, or on
SIGINT/SIGTERM, and prints how many frames it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import logging
import random
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from producer_app.config import ProducerSettings, load_settings
from producer_app.ws import ConnectLimiter, backoff_delay, stream_urls

log = logging.getLogger(__name__)


def _is_market_frame(frame: bytes) -> bool:
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return False
    return isinstance(message, dict) and "stream" in message and "data" in message


async def record(
    settings: ProducerSettings,
    out: Path,
    stream_names: Sequence[str],
    duration_s: float | None = None,
    max_frames: int | None = None,
    time_unit: str = "MILLISECOND",
    stop: asyncio.Event | None = None,
) -> int:
    """Append frames of ``stream_names`` to ``out`` until duration, max frames or stop."""
    if len(stream_names) > settings.producer_streams_per_connection:
        raise ValueError("the recorder uses one connection: at most 1024 streams")
    url = stream_urls(settings.binance_ws_url, stream_names, len(stream_names) or 1, time_unit)[0]
    stop = stop or asyncio.Event()
    deadline = time.monotonic() + duration_s if duration_s else None
    limiter = ConnectLimiter(
        settings.producer_max_connect_attempts, settings.producer_connect_window_s
    )
    rng = random.Random()  # noqa: S311 - jitter
    written = 0
    failures = 0
    handle: IO[bytes] = gzip.open(out, "ab") if out.suffix == ".gz" else out.open("ab")  # type: ignore[assignment]
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if max_frames is not None and written >= max_frames:
                break
            await asyncio.sleep(
                backoff_delay(
                    failures, settings.producer_backoff_base_s, settings.producer_backoff_cap_s, rng
                )
            )
            await limiter.acquire()
            try:
                ws = await connect(url, max_size=16 * 1024 * 1024, ping_interval=None)
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as err:
                log.warning("connect to %s failed: %s", url, err)
                failures += 1
                continue
            failures = 0
            log.info("recording %s", url)
            try:
                while not stop.is_set():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    try:
                        frame = await asyncio.wait_for(
                            ws.recv(decode=False), timeout=remaining or 1.0
                        )
                    except TimeoutError:
                        continue
                    if not _is_market_frame(frame):
                        log.info("not recorded (control message): %.200r", frame)
                        continue
                    handle.write(frame + b"\n")
                    written += 1
                    if max_frames is not None and written >= max_frames:
                        break
            except ConnectionClosed as err:
                log.info("connection closed: %s", err)
                if (
                    err.rcvd is not None
                    and err.rcvd.code == 1000
                    and err.rcvd.reason == "end of recording"
                ):
                    break
                failures += 1
            finally:
                await ws.close()
    finally:
        handle.close()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(
        prog="python -m producer_app.recorder", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="recording to write (.jsonl or .jsonl.gz)"
    )
    parser.add_argument("--symbols", default=",".join(settings.binance_symbols))
    parser.add_argument(
        "--streams",
        default=",".join(settings.binance_streams),
        help="stream types to record, e.g. trade,miniTicker (any Binance stream type)",
    )
    parser.add_argument("--duration", type=float, help="seconds to record (default: until Ctrl-C)")
    parser.add_argument("--max-frames", type=int)
    parser.add_argument(
        "--time-unit", choices=["MILLISECOND", "MICROSECOND"], default="MILLISECOND"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=settings.producer_log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    symbols = [s.strip().lower() for s in args.symbols.split(",") if s.strip()]
    kinds = [k.strip() for k in args.streams.split(",") if k.strip()]
    names = [f"{symbol}@{kind}" for symbol in symbols for kind in kinds]

    async def _main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await record(
            settings, args.out, names, args.duration, args.max_frames, args.time_unit, stop
        )

    written = asyncio.run(_main())
    print(f"frames written: {written} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
