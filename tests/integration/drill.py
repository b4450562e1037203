"""Helpers for the producer's reliability drills (tests/integration/test_producer_reliability.py).

A drill runs the real processes the stack runs: the replay server
(`python -m producer_app.replay_server`), the long-running producer (`python -m producer_app`)
and today's consumer (`python -m consumer_app`, through ``test_consumer_pipeline.ConsumerRun``),
against the real Kafka, Redis and PostgreSQL of `make services`, injects one failure, and
ends by comparing `staging.raw_prices` with the recording. The expectation is computed from
the recording in plain Python (``test_consumer_pipeline.expected_rows``), never by producer
code. Only the trade itself is compared (symbol, stream, id, time, price, quantity, side): a
trade filled from REST has no exchange event time and another receive time by contract, and
it reaches the consumer after later trades, so its price-change columns follow arrival order
(the consumer's rule, docs/consumer.md), not the recording's order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_consumer_pipeline import Trade, expected_rows  # same directory (prepend import mode)

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / ".local"

# staging.raw_prices columns independent of the path a trade took (WS or REST).
LANDED_QUERY = """
select symbol, stream, sequence_id, event_time, price, quantity, is_buyer_maker
from staging.raw_prices order by symbol, stream, event_time, sequence_id
"""
_EXPECTED_COLUMNS = (0, 1, 2, 3, 5, 6, 7)


def combined_recording(payloads: list[dict[str, Any]], path: Path) -> Path:
    """Write trade payloads as the replay server's recording format (combined-stream lines)."""
    path.write_text(
        "".join(
            json.dumps({"stream": f"{p['s'].lower()}@trade", "data": p}, separators=(",", ":"))
            + "\n"
            for p in payloads
        )
    )
    return path


def trades_of(payloads: list[dict[str, Any]]) -> list[Trade]:
    """The recording's trades as the consumer tests' ``Trade`` (times in µs, by magnitude)."""

    def us(value: int) -> int:
        return value if value >= 10**14 else value * 1000

    return [
        Trade(
            symbol=p["s"],
            trade_id=p["t"],
            event_time_us=us(p["E"]),
            trade_time_us=us(p["T"]),
            price=p["p"],
            quantity=p["q"],
            is_buyer_maker=p["m"],
            received_at_us=0,  # not compared: the producer stamps its own receive time
        )
        for p in payloads
    ]


def raw_count(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute("select count(*) from staging.raw_prices").fetchone()
    except psycopg.OperationalError:
        return -1
    return int(row[0]) if row else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _text(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # 0.2312 and 0.231200000000000000 alike
    return str(value)


def checksum(rows: list[tuple[Any, ...]]) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    for row in rows:
        digest.update(("|".join(_text(v) for v in row) + "\n").encode())
    return digest.hexdigest()


def assert_landed_once(dsn: str, trades: list[Trade]) -> tuple[int, str]:
    """raw_prices holds exactly the recording's trades (count and checksum); returns both."""
    with psycopg.connect(dsn) as conn:
        got = [tuple(r) for r in conn.execute(LANDED_QUERY)]
    want = [tuple(row[i] for i in _EXPECTED_COLUMNS) for row in expected_rows(trades)]
    got_ids = [r[2] for r in got]
    want_ids = {r[2] for r in want}
    doubled = len(got_ids) - len(set(got_ids))
    missing = sorted(want_ids - set(got_ids))
    extra = sorted(set(got_ids) - want_ids)
    assert not doubled, f"{doubled} trades stored twice"
    assert not missing, f"{len(missing)} of {len(want)} trades missing, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} trades not in the recording, e.g. {extra[:5]}"
    mismatches = [(g, w) for g, w in zip(got, want, strict=True) if g != w]
    assert not mismatches, f"{len(mismatches)} rows differ, first: {mismatches[0]}"
    assert checksum(got) == checksum(want)
    return len(got), checksum(got)


def metric(port: int, name: str, labels: str = "") -> float:
    """One sample of the producer's /metrics (0 when absent or not reachable)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:  # noqa: S310
            for line in response.read().decode().splitlines():
                if line.startswith(wanted + " "):
                    return float(line.split()[1])
    except OSError:
        return 0.0
    return 0.0


@dataclass
class AppProcess:
    """A project app as a subprocess in its own session, logging to a file."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> AppProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own modules, fixed arguments
            [sys.executable, *self.argv],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def terminate(self, timeout_s: float = 60) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        return self.process.returncode

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


def replay_server(
    recording: Path, port: int, log_path: Path, speed: str = "100", *extra: str
) -> AppProcess:
    """`python -m producer_app.replay_server` on ``port``; returns once it listens."""
    server = AppProcess(
        [
            "-m",
            "producer_app.replay_server",
            "--recording",
            str(recording),
            "--speed",
            speed,
            "--port",
            str(port),
            *extra,
        ],
        dict(os.environ),
        log_path,
    ).start()
    wait_until(lambda: "replay server on" in server.tail(), 30, "replay server start", server)
    return server


def producer_env(
    bootstrap: str, topics: dict[str, str], replay_port: int, metrics_port: int, **knobs: str
) -> dict[str, str]:
    """The environment of a long-running producer reading the replay server on replay_port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRODUCER_", "BINANCE_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        KAFKA_TOPIC_PRICES=topics["prices"],
        KAFKA_TOPIC_DLQ=topics["dlq"],
        KAFKA_TOPIC_GAPS=topics["gaps"],
        KAFKA_TOPIC_RESUME=topics["resume"],
        PRODUCER_FEED_ID="drill-replay",
        PRODUCER_MAX_EVENT_BEHIND_S="0",  # the recording is history
        BINANCE_WS_URL=f"ws://127.0.0.1:{replay_port}",
        BINANCE_REST_URL=f"http://127.0.0.1:{replay_port}",
        BINANCE_STREAMS="trade",
        PRODUCER_METRICS_PORT=str(metrics_port),
        PRODUCER_CREATE_TOPICS="false",
        PRODUCER_GAP_GRACE_S="0.5",
        PRODUCER_BACKOFF_BASE_S="0.2",
        PRODUCER_BACKOFF_CAP_S="2",
        PRODUCER_LINGER_MS="5",
    )
    env.update(knobs)
    return env


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    *watched: AppProcess,
    fail: bool = True,
) -> bool:
    """Poll ``condition`` until true; fail (or return False) after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if fail and any(p.process is not None and not p.running for p in watched):
            break
        time.sleep(0.2)
    if fail:
        logs = "\n".join(f"--- {p.log_path.name}\n{p.tail()}" for p in watched)
        pytest.fail(f"{what}: not reached in {timeout_s:.0f} s (or a process ended)\n{logs}")
    return False


def own_kafka_pid(bootstrap: str) -> int:
    """The pid of the broker `make services` started in THIS worktree, listening on bootstrap.

    Freezing a broker is only safe for our own: the process listening on the bootstrap port
    must be a child of this worktree's supervisord (.local/run/supervisord.pid) running
    ``kafka.Kafka`` from this worktree (its working directory).
    """
    port = bootstrap.rsplit(":", 1)[1]
    listeners = subprocess.run(  # noqa: S603
        ["/usr/bin/ss", "-Hltnp", f"sport = :{port}"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = re.search(r"pid=(\d+),", listeners)
    if found is None:
        pytest.fail(f"no process listens on Kafka's port {port}: start it with `make services`")
    pid = int(found.group(1))
    proc = Path("/proc") / str(pid)
    supervisor = LOCAL / "run" / "supervisord.pid"
    parent = re.search(r"^PPid:\s+(\d+)", (proc / "status").read_text(), re.MULTILINE)
    ours = (
        supervisor.is_file()
        and parent is not None
        and parent.group(1) == supervisor.read_text().split()[0]
        and b"kafka.Kafka" in (proc / "cmdline").read_bytes()
        and (proc / "cwd").resolve() == ROOT
    )
    if not ours:
        pytest.fail(
            f"Kafka on port {port} (pid {pid}) is not this worktree's broker: not ours to freeze"
        )
    return pid


@dataclass
class Freeze:
    """SIGSTOP a process now; SIGCONT it on thaw() (or at exit of ``frozen``)."""

    pid: int
    started: float = field(default_factory=time.monotonic)
    thawed: bool = False

    def thaw(self) -> float:
        if not self.thawed:
            os.kill(self.pid, signal.SIGCONT)
            self.thawed = True
        return time.monotonic() - self.started


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[Freeze]:
    os.kill(pid, signal.SIGSTOP)
    freeze = Freeze(pid)
    try:
        yield freeze
    finally:
        freeze.thaw()
