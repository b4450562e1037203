"""scripts/stack.sh on this machine: idempotent `services`, one-line errors for bad prerequisites.

The failure cases run a copy of the script from a scratch directory (its own .local/), so they
never touch the shared services; the idempotence case talks to the running local stack.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def scratch_stack(tmp_path: Path) -> Path:
    """A copy of scripts/ in an empty directory: ROOT for the script is tmp_path."""
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    return tmp_path


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port some other program (this test) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _run(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    ports = {
        "POSTGRES_PORT": str(_free_port()),
        "REDIS_PORT": str(_free_port()),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_free_port()}",
        "KAFKA_CONTROLLER_PORT": str(_free_port()),
    }
    ours = ("POSTGRES_", "REDIS_", "KAFKA_")
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return subprocess.run(  # noqa: S603 - our own script
        [str(root / "scripts" / "stack.sh"), *args],
        env={**clean_env, **ports, "KAFKA_PORT": "", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("stack: ERROR")]


def test_a_taken_port_stops_with_one_line_naming_port_owner_and_setting(
    scratch_stack: Path, held_port: int
) -> None:
    result = _run(scratch_stack, "services", POSTGRES_PORT=str(held_port))
    assert result.returncode != 0
    errors = _error_lines(result)
    assert len(errors) == 1, result.stderr
    assert f"port {held_port} for PostgreSQL is taken" in errors[0]
    assert "POSTGRES_PORT" in errors[0]
    # Nothing was started: no data directory, no supervisor.
    assert not (scratch_stack / ".local" / "postgres").exists()
    assert not list((scratch_stack / ".local").glob("run/supervisor*"))


def test_not_enough_disk_stops_with_one_line_naming_the_fix(scratch_stack: Path) -> None:
    result = _run(scratch_stack, "services", STACK_MIN_FREE_MB=str(10**12))
    assert result.returncode != 0
    errors = _error_lines(result)
    assert len(errors) == 1, result.stderr
    assert "not enough disk" in errors[0] and "STACK_MIN_FREE_MB" in errors[0]


def test_an_unknown_verb_lists_the_verbs(scratch_stack: Path) -> None:
    result = _run(scratch_stack, "frobnicate")
    assert result.returncode != 0
    assert "unknown verb 'frobnicate'" in result.stderr and "services" in result.stderr


def _supervised_pids() -> dict[str, str]:
    """The pids supervisord reports for the services (scripts/stack_processes.py)."""
    result = subprocess.run(  # noqa: S603 - our own helper
        [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "stack_processes.py"),
         "--socket", str(ROOT / ".local" / "run" / "supervisor.sock"),
         "pid", "postgres", "redis", "kafka"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    pids = dict(zip(("postgres", "redis", "kafka"), result.stdout.split(), strict=True))
    assert all(pid != "0" for pid in pids.values()), pids
    return pids


def test_services_twice_is_safe_and_keeps_the_running_servers(
    pg_admin_dsn: str, redis_url: str, kafka_bootstrap: str
) -> None:
    before = _supervised_pids()
    result = subprocess.run(  # noqa: S603 - our own script
        [str(ROOT / "scripts" / "stack.sh"), "services"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "PostgreSQL already running" in result.stderr
    assert "Redis already running" in result.stderr
    assert "Kafka already running" in result.stderr
    assert _supervised_pids() == before
