"""Starts the project's replay server (producer_app.replay_server) for a benchmark run."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ReplayServerError(RuntimeError):
    """The replay server did not come up."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_replay_server(recording: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A fresh replay server at --speed max that exits at the end of the recording.

    Returns (process, port) once it listens (its first stdout line says so).
    """
    port = free_port()
    server = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [
            sys.executable,
            "-m",
            "producer_app.replay_server",
            "--recording",
            str(recording),
            "--speed",
            "max",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--exit-at-end",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert server.stdout is not None  # noqa: S101 - Popen(stdout=PIPE) always sets it
    line = server.stdout.readline()
    if not line.startswith(b"replay server on"):
        server.kill()
        server.wait(10)
        raise ReplayServerError(f"replay server did not start: {line!r}")
    return server, port
