"""``python -m producer_app.replay --file FILE --speed S``: replay server + producer in one process.

What ``make replay`` runs. Data comes from a recording (recordings/README.md); it goes to
Kafka exactly as the live producer would send it. The replay server listens on a free
local port, the producer connects to it (WebSocket and REST) with the symbols and stream
types found in the recording (unless ``--symbols``/``--streams`` say otherwise), the
server closes every connection with 1000 "end of recording" after the last frame, the
producer fills any pending gap, flushes, and the command prints how many frames the server
sent and how many events the broker acknowledged. Exit status: 0 when every event was
acknowledged, 1 when a delivery failed, 2 when Kafka or the recording is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from producer_app.app import Producer, RunSummary
from producer_app.config import ProducerSettings, load_settings
from producer_app.replay_server import (
    FaultPlan,
    Recording,
    RecordingError,
    ReplayServer,
    ReplayStats,
    load_recording,
    parse_speed,
)
from producer_app.sink import SinkError

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    summary: RunSummary
    server: ReplayStats
    seconds: float


def replay_settings(
    base: ProducerSettings, server: ReplayServer, recording: Recording, **overrides: object
) -> ProducerSettings:
    """The producer's settings pointed at the replay server."""
    values = base.model_dump()
    values.update(
        binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url,
        binance_symbols=tuple(recording.symbols),
        binance_streams=tuple(
            kind for kind in recording.stream_kinds if kind in ("trade", "miniTicker")
        ),
        producer_stop_at_end_of_recording=True,
        # A replay publishes its recording again on purpose (the consumer's sink is idempotent).
        producer_resume_from_kafka=False,
        # A replay publishes history: its event times are years behind the receive time.
        producer_max_event_behind_s=0,
    )
    values.update(overrides)
    return ProducerSettings(**values)


async def run_replay(
    recording: Recording,
    base_settings: ProducerSettings,
    speed: float | None = None,
    faults: FaultPlan | None = None,
    ping_interval_s: float = 20.0,
    stop: asyncio.Event | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ReplayResult:
    """Serve ``recording`` and run a producer against it until the recording is exhausted."""
    server = ReplayServer(recording, speed=speed, faults=faults, ping_interval_s=ping_interval_s)
    await server.start("127.0.0.1", 0)
    started = time.monotonic()
    try:
        settings = replay_settings(base_settings, server, recording, **(overrides or {}))
        producer = Producer(settings)
        server.min_subscribers = len(producer.groups)
        stopper = None
        if stop is not None:

            async def _forward_stop() -> None:
                await stop.wait()
                producer.request_stop()

            stopper = asyncio.create_task(_forward_stop())
        summary = await producer.run()
        if stopper is not None:
            stopper.cancel()
    finally:
        await server.stop()
    return ReplayResult(summary, server.stats, time.monotonic() - started)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m producer_app.replay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--file", required=True, help="recording (.jsonl or .jsonl.gz)")
    parser.add_argument(
        "--speed", type=parse_speed, default=None, help="speed factor or 'max' (default max)"
    )
    parser.add_argument(
        "--symbols", type=_csv, help="subscribe to these symbols (default: the recording's)"
    )
    parser.add_argument("--streams", type=_csv, help="trade,miniTicker (default: the recording's)")
    args = parser.parse_args(argv)

    base = load_settings()
    logging.basicConfig(
        level=base.producer_log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        recording = load_recording(args.file)
    except RecordingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    if args.symbols:
        overrides["binance_symbols"] = args.symbols
    if args.streams:
        overrides["binance_streams"] = args.streams

    async def _main() -> ReplayResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_replay(recording, base, speed=args.speed, stop=stop, overrides=overrides)

    try:
        result = asyncio.run(_main())
    except SinkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = result.summary
    print(f"recording:        {args.file} ({len(recording.lines)} frames)")
    print(f"frames sent:      {result.server.frames_sent}")
    print(f"frames received:  {summary.frames_received}")
    print(f"events acked:     {summary.events_acked} (topic {base.kafka_topic_prices})")
    print(f"duplicates:       {summary.duplicates_dropped}")
    print(f"dead letters:     {sum(summary.dead_letters.values())} {summary.dead_letters or ''}")
    print(
        f"gap trades:       {summary.gap_trades_filled} filled, "
        f"{summary.gap_trades_unfilled} unfilled"
    )
    print(
        f"delivery failed:  {summary.delivery_failures} "
        f"(+{summary.undelivered_at_exit} undelivered at exit)"
    )
    print(f"seconds:          {result.seconds:.2f}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
