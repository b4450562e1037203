"""Producer throughput: frames/s parsed and produced into the local Kafka broker, side by side.

Not a test: prints its figures and the machine. Run (needs `make services`):

    .venv/bin/python bench/bench_producer.py [--frames 194010] [--recording FILE]

Frames come from a recording (default recordings/btcusdt-trade-2020-01-01.jsonl.gz, the
demo day: 194,010 real-shaped BTCUSDT trade frames); each variant produces them into its own
fresh topic on KAFKA_BOOTSTRAP_SERVERS and is timed until the broker acknowledged every
message (flush), so the figure is frames in -> acks out:

1. producer_app    - Producer.handle_frame: parse + validate + dedup + serialize + keyed
                     produce (idempotent, acks=all, compression), delivery callback, poll.
                     Once per compression codec (none, lz4, zstd), with bytes sent.
2. bare loop       - json.loads + produce(value=frame, key=symbol) + poll every 1000.
3. original design - json.loads, print each message, produce with no key, never poll (as
                     the design this project replaces did); printed to /dev/null, which
                     flatters it (a terminal is slower).
4. end to end      - the replay server in a separate process at --speed max and producer_app
                     reading its WebSocket: what one producer process sustains on a socket.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import resource
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine  # noqa: E402
from bench.replay import start_replay_server  # noqa: E402
from producer_app.app import Producer as PipelineProducer  # noqa: E402
from producer_app.config import ProducerSettings, load_settings  # noqa: E402
from producer_app.metrics import ProducerMetrics  # noqa: E402
from producer_app.sink import KafkaSink  # noqa: E402


def load_frames(path: Path, limit: int) -> list[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        frames = [line.rstrip(b"\n") for line in handle]
    return frames[:limit]


def new_topic(admin: AdminClient, partitions: int = 6) -> str:
    name = f"bench.producer.{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(30)
    return name


def delete_topics(admin: AdminClient, names: list[str]) -> None:
    for future in admin.delete_topics(names).values():
        try:
            future.result(30)
        except KafkaException:
            pass


class Timer:
    def __enter__(self) -> Timer:
        self.wall = time.perf_counter()
        self.thread = time.thread_time()
        self.cpu = resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.thread_s = time.thread_time() - self.thread
        end = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_s = (end.ru_utime - self.cpu.ru_utime) + (end.ru_stime - self.cpu.ru_stime)


def bench_pipeline(settings: ProducerSettings, frames: list[bytes], codec: str) -> dict[str, Any]:
    run_settings = settings.model_copy(update={"producer_compression": codec})
    stats: dict[str, Any] = {}

    def on_stats(raw: str) -> None:
        stats.update(json.loads(raw))

    metrics = ProducerMetrics()
    sink = KafkaSink(run_settings, metrics, {"statistics.interval.ms": 200, "stats_cb": on_stats})
    producer = PipelineProducer(run_settings, metrics=metrics, sink=sink)
    handle = producer.handle_frame
    with Timer() as loop_timer:
        for frame in frames:
            handle(frame)
    with Timer() as flush_timer:
        remaining = sink.flush(120)
        sink.poll(0.5)  # one more stats callback after the last delivery
    wall = loop_timer.wall + flush_timer.wall
    return {
        "variant": f"producer_app ({codec})",
        "frames": len(frames),
        "acked": sink.events_acked,
        "failed": sink.failed + remaining,
        "loop_fps": len(frames) / loop_timer.wall,
        "fps": len(frames) / wall,
        "cpu_us_per_frame": (loop_timer.cpu_s + flush_timer.cpu_s) / len(frames) * 1e6,
        "thread_us_per_frame": (loop_timer.thread_s + flush_timer.thread_s) / len(frames) * 1e6,
        "tx_bytes": stats.get("tx_bytes"),
    }


def _symbol_of(message: dict[str, Any]) -> str:
    return str(message["data"]["s"])


def bench_bare(bootstrap: str, topic: str, frames: list[bytes]) -> dict[str, Any]:
    acked = failed = 0

    def on_delivery(err: object, _msg: object) -> None:
        nonlocal acked, failed
        if err is None:
            acked += 1
        else:
            failed += 1

    producer = Producer({"bootstrap.servers": bootstrap, "on_delivery": on_delivery})
    with Timer() as timer:
        for index, frame in enumerate(frames):
            message = json.loads(frame)
            producer.produce(topic, frame, _symbol_of(message))
            if index % 1000 == 0:
                producer.poll(0)
        remaining = producer.flush(120)
    return {
        "variant": "bare json.loads + produce",
        "frames": len(frames),
        "acked": acked,
        "failed": failed + remaining,
        "loop_fps": None,
        "fps": len(frames) / timer.wall,
        "cpu_us_per_frame": timer.cpu_s / len(frames) * 1e6,
        "thread_us_per_frame": timer.thread_s / len(frames) * 1e6,
        "tx_bytes": None,
    }


def bench_original(bootstrap: str, topic: str, frames: list[bytes]) -> dict[str, Any]:
    """json.loads, print, produce without key, no poll: stops at the first BufferError."""
    producer = Producer({"bootstrap.servers": bootstrap})
    sent = 0
    error = ""
    with open(os.devnull, "w") as console, Timer() as timer:
        for frame in frames:
            message = json.loads(frame)
            print(message, file=console)
            try:
                producer.produce(topic, json.dumps(message).encode())
            except BufferError as err:  # the local queue is full: nobody serves delivery reports
                error = f"BufferError after {sent} messages: {err}"
                break
            sent += 1
        remaining = producer.flush(120)
    return {
        "variant": "original design (print, no key, no poll)",
        "frames": sent,
        "acked": sent - remaining,
        "failed": remaining,
        "loop_fps": None,
        "fps": sent / timer.wall,
        "cpu_us_per_frame": timer.cpu_s / max(sent, 1) * 1e6,
        "thread_us_per_frame": timer.thread_s / max(sent, 1) * 1e6,
        "tx_bytes": None,
        "note": error,
    }


def bench_end_to_end(settings: ProducerSettings, recording: Path) -> dict[str, Any]:
    """Replay server in its own process; this process runs producer_app on the socket."""
    server, port = start_replay_server(recording)
    try:
        run_settings = settings.model_copy(
            update={
                "binance_ws_url": f"ws://127.0.0.1:{port}",
                "binance_rest_url": f"http://127.0.0.1:{port}",
                "binance_symbols": ("BTCUSDT",),
                "binance_streams": ("trade",),
                "producer_stop_at_end_of_recording": True,
                "producer_time_unit": "MILLISECOND",
            }
        )
        producer = PipelineProducer(run_settings)
        with Timer() as timer:
            summary = asyncio.run(producer.run())
    finally:
        server.wait(30)
    return {
        "variant": "end to end: replay server process -> WebSocket -> producer_app",
        "frames": summary.frames_received,
        "acked": summary.events_acked,
        "failed": summary.delivery_failures + summary.undelivered_at_exit,
        "loop_fps": None,
        "fps": summary.frames_received / timer.wall,
        "cpu_us_per_frame": timer.cpu_s / max(summary.frames_received, 1) * 1e6,
        "thread_us_per_frame": timer.thread_s / max(summary.frames_received, 1) * 1e6,
        "tx_bytes": None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--recording", type=Path, default=ROOT / "recordings" / "btcusdt-trade-2020-01-01.jsonl.gz"
    )
    parser.add_argument("--frames", type=int, default=194_010)
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()

    # the recordings are history: no bound on how far behind now their times are
    base = load_settings(
        producer_metrics_port=0, producer_create_topics=False, producer_max_event_behind_s=0
    )
    admin = AdminClient({"bootstrap.servers": base.kafka_bootstrap_servers})
    try:
        admin.list_topics(timeout=10)
    except KafkaException as err:
        print(f"Kafka not reachable at {base.kafka_bootstrap_servers}: {err}; run `make services`")
        return 2
    frames = load_frames(args.recording, args.frames)
    print(f"machine: {describe_machine()}")
    print(f"frames:  {len(frames)} from {args.recording}; broker {base.kafka_bootstrap_servers}")
    created: list[str] = []
    results = []
    try:
        runs: list[Callable[[], dict[str, Any]]] = []
        for codec in ("lz4", "zstd", "none"):

            def run_codec(codec: str = codec) -> dict[str, Any]:
                topics = [new_topic(admin), new_topic(admin, 1), new_topic(admin, 1)]
                created.extend(topics)
                settings = base.model_copy(
                    update={
                        "kafka_topic_prices": topics[0],
                        "kafka_topic_dlq": topics[1],
                        "kafka_topic_gaps": topics[2],
                    }
                )
                return bench_pipeline(settings, frames, codec)

            runs.append(run_codec)

        def run_bare() -> dict[str, Any]:
            topic = new_topic(admin)
            created.append(topic)
            return bench_bare(base.kafka_bootstrap_servers, topic, frames)

        def run_original() -> dict[str, Any]:
            topic = new_topic(admin)
            created.append(topic)
            return bench_original(base.kafka_bootstrap_servers, topic, frames)

        runs += [run_bare, run_original]
        if not args.skip_end_to_end:

            def run_e2e() -> dict[str, Any]:
                topics = [new_topic(admin), new_topic(admin, 1), new_topic(admin, 1)]
                created.extend(topics)
                settings = base.model_copy(
                    update={
                        "kafka_topic_prices": topics[0],
                        "kafka_topic_dlq": topics[1],
                        "kafka_topic_gaps": topics[2],
                    }
                )
                return bench_end_to_end(settings, args.recording)

            runs.append(run_e2e)
        # Warm-up (not reported): first-topic metadata, caches, allocator.
        warm = [new_topic(admin), new_topic(admin, 1), new_topic(admin, 1)]
        created.extend(warm)
        bench_pipeline(
            base.model_copy(
                update={
                    "kafka_topic_prices": warm[0],
                    "kafka_topic_dlq": warm[1],
                    "kafka_topic_gaps": warm[2],
                }
            ),
            frames[:20_000],
            "none",
        )
        for run in runs:
            result = run()
            results.append(result)
            tx = f"{result['tx_bytes'] / 2**20:.1f} MiB" if result["tx_bytes"] else "-"
            thread_us = result["thread_us_per_frame"]
            print(
                f"{result['variant']:<64} wall {result['fps']:>9,.0f} frames/s | "
                f"main thread {thread_us:5.2f} µs/frame = {1e6 / thread_us:>9,.0f} frames/s "
                f"per core | process CPU {result['cpu_us_per_frame']:5.2f} µs/frame | "
                f"acked {result['acked']}/{result['frames']} failed {result['failed']} | "
                f"sent {tx} {result.get('note', '')}",
                flush=True,
            )
    finally:
        delete_topics(admin, created)
    print(orjson.dumps(results).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
