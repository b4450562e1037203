"""`python -m producer_app` as a real process: SIGTERM/SIGINT flush everything received.

The replay server runs as its own process (`python -m producer_app.replay_server`) and the
producer as another, configured only through the environment, exactly as the stack runs
them. After a few thousand trades the producer gets a signal; it must exit 0 having
delivered every trade it accepted: the topic then holds a contiguous run of the
recording's trade ids from the first one, each once, with the recording's exact prices.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from drill import free_port, metric  # same directory (pytest prepend import mode)
from test_producer_faults import read_topic

from producer_app.events import PriceEvent

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "trxusdt-trade-2025-03-04.jsonl.gz"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_flushes_and_exits_cleanly(
    sig: signal.Signals, tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    with gzip.open(FIXTURE, "rt") as handle:
        payloads = [json.loads(line) for line in handle]
    recording = tmp_path / "trx.jsonl"
    recording.write_text(
        "".join(json.dumps({"stream": "trxusdt@trade", "data": p}) + "\n" for p in payloads)
    )
    replay_port, metrics_port = free_port(), free_port()
    topics = {p: make_topic(6 if p == "prices" else 1) for p in ("prices", "dlq", "gaps", "resume")}
    server = subprocess.Popen(  # noqa: S603 - our own module
        [
            sys.executable,
            "-m",
            "producer_app.replay_server",
            "--recording",
            str(recording),
            "--speed",
            "300",
            "--port",
            str(replay_port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KAFKA_TOPIC_PRICES=topics["prices"],
        KAFKA_TOPIC_DLQ=topics["dlq"],
        KAFKA_TOPIC_GAPS=topics["gaps"],
        KAFKA_TOPIC_RESUME=topics["resume"],
        PRODUCER_MAX_EVENT_BEHIND_S="0",
        BINANCE_WS_URL=f"ws://127.0.0.1:{replay_port}",
        BINANCE_REST_URL=f"http://127.0.0.1:{replay_port}",
        BINANCE_SYMBOLS="TRXUSDT",
        BINANCE_STREAMS="trade",
        PRODUCER_METRICS_PORT=str(metrics_port),
        PRODUCER_CREATE_TOPICS="false",
    )
    producer = None
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith(b"replay server on")
        producer = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "producer_app"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while metric(metrics_port, "producer_frames_received_total") < 2000:
            assert producer.poll() is None, producer.communicate(timeout=5)[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the producer received no frames in 60 s"
            time.sleep(0.2)
        producer.send_signal(sig)
        _, stderr = producer.communicate(timeout=60)
        assert producer.returncode == 0, stderr.decode()[-2000:]
        assert b"stopped: RunSummary(" in stderr
    finally:
        for process in (producer, server):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=10)

    events = [PriceEvent.from_json(v) for _, v in read_topic(kafka_bootstrap, topics["prices"])]
    ids = sorted(e.sequence_id for e in events)
    assert len(ids) >= 2000
    first = payloads[0]["t"]
    assert ids == list(range(first, first + len(ids)))  # contiguous from the start, no doubles
    by_id = {p["t"]: p for p in payloads}
    assert all(e.price == by_id[e.sequence_id]["p"] and e.source == "ws" for e in events)
