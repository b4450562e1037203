"""Real Prometheus and dashboard processes for the dashboard's tests, on free loopback ports.

Prometheus is Debian's binary with the repository's alert rules and a scrape config written
for the test; the dashboard is ``python -m dashboard`` with the test's settings in its
environment. Both run from the repository root, are waited for with generous deadlines (the
machine is shared), and are stopped by their own pids.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - a loopback test URL
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} in {START_TIMEOUT_S:.0f} s: {log.read_text()}")


#: One trade: symbol, trade id, trade time, exchange event time, price, quantity, buyer maker
Trade = tuple[str, int, datetime, datetime, Decimal, Decimal, bool]


def copy_trades(conn: psycopg.Connection, trades: Iterable[Trade]) -> None:
    """COPY trades into staging.raw_prices with each one's previous price and change (per
    symbol, in the order given), as the consumer writes them; partitions must exist."""
    previous: dict[str, Decimal] = {}
    with (
        conn.cursor() as cur,
        cur.copy(
            "copy staging.raw_prices (symbol, stream, sequence_id, event_time, "
            "exchange_event_time, price, quantity, is_buyer_maker, previous_price, "
            "price_change, received_at, source) from stdin"
        ) as copy,
    ):
        for symbol, trade_id, trade_time, event_time, price, quantity, maker in trades:
            before = previous.get(symbol)
            change = None if before is None else price - before
            copy.write_row(
                (symbol, "trade", trade_id, trade_time, event_time, price, quantity, maker,
                 before, change, event_time, "ws")
            )  # fmt: skip
            previous[symbol] = price


@contextmanager
def _serve(
    what: str, argv: list[str], log: Path, url: str, ready_path: str, **popen: object
) -> Iterator[str]:
    """Run argv (output to log) until the with-block ends, once url + ready_path answers."""
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - fixed argv: Debian's binaries or our module
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            **popen,  # type: ignore[call-overload]
        )
    try:
        wait_http(url + ready_path, process, log, what)
        yield url
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@contextmanager
def prometheus(workdir: Path, targets: Mapping[str, list[str]]) -> Iterator[str]:
    """A Prometheus evaluating prometheus/alerts.yml every second; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is missing: install Debian's prometheus with `make install`")
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "prometheus" / "alerts.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
            for job, addresses in targets.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with _serve(
        "Prometheus", argv, workdir / "prometheus.log", f"http://127.0.0.1:{port}", "/-/ready"
    ) as url:
        yield url


@contextmanager
def dashboard(workdir: Path, settings: Mapping[str, str]) -> Iterator[str]:
    """``python -m dashboard`` with these settings (and nothing from .env); yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(workdir),
        "DASHBOARD_PORT": str(port),
        "DASHBOARD_HOST": "127.0.0.1",
        **settings,
    }
    with _serve(
        "the dashboard",
        [sys.executable, "-m", "dashboard"],
        workdir / "dashboard.log",
        f"http://127.0.0.1:{port}",
        "/_stcore/health",
        cwd=workdir,  # no .env there: the settings are exactly the ones given
        env={**env, "PYTHONPATH": str(ROOT)},
    ) as url:
        yield url
