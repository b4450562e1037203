"""A Spark standalone cluster for the tests: one master and one worker from the pyspark install.

Where it comes from: `spark-class org.apache.spark.deploy.master.Master` and
`...deploy.worker.Worker` of the venv's pyspark (SPARK_HOME = the pyspark package directory),
as docker-compose.yaml runs them from the consumer image. Where it goes: a consumer started
with `cluster.driver_env()` (SPARK_MASTER=spark://127.0.0.1:PORT plus the driver's loopback
settings) runs its executors on the worker instead of `local[*]`.

Everything binds to 127.0.0.1 on ports the OS hands out; logs, the worker's work directory and
Spark's scratch space live in one temporary directory, removed at the end. The cluster is
session-scoped: the JVMs start once (a few seconds on a quiet machine) and every test that asks
for `spark_cluster` shares them. `kill_worker()` kills the worker's process group with SIGKILL
(the worker, its executor JVM and their Python workers), as a crashed machine would;
`start_worker()` starts a new one, which registers under a new port and gets the application's
executor back.

What the driver needs (see driver_env): SPARK_LOCAL_IP=127.0.0.1 so it binds and advertises
loopback (the executors connect back to it); the Kafka connector jars in spark.jars (the driver's
file server hands them to every executor, no --packages and no network); the venv's Python for
the executors' Python workers. The worker offers 2 cores and 2 GiB: on the 2-core machines the
executor takes both cores and Spark's default 1 GiB.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 180.0  # generous: JVM start-up on a loaded shared machine
WORKER_CORES = 2
WORKER_MEMORY = "2g"


def spark_home() -> Path:
    """The pyspark package directory: it holds bin/spark-class and the jars."""
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    if not (home / "bin" / "spark-class").is_file():
        pytest.fail(f"{home} has no bin/spark-class: reinstall the venv with `make install`")
    return home


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


@dataclass
class SparkCluster:
    """A running master and (usually) one worker; see the module docstring."""

    base: Path
    master_port: int = field(default_factory=free_port)
    master_ui_port: int = field(default_factory=free_port)
    master: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    workers_started: int = 0
    started_in_s: float = 0.0

    @property
    def master_url(self) -> str:
        return f"spark://{LOOPBACK}:{self.master_port}"

    @property
    def log_dir(self) -> Path:
        return self.base / "logs"

    def _daemon_env(self) -> dict[str, str]:
        conf_dir = self.base / "conf"  # empty: no spark-defaults.conf from anywhere else
        conf_dir.mkdir(exist_ok=True)
        return {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))} | {
            "SPARK_HOME": str(spark_home()),
            "SPARK_CONF_DIR": str(conf_dir),
            "SPARK_LOCAL_IP": LOOPBACK,
            "SPARK_LOCAL_DIRS": str(self.base / "local"),
            "SPARK_WORKER_DIR": str(self.base / "work"),
            # Executors run this interpreter for Python workers, with the repository importable
            # (executor-side code of consumer_app needs it; compose has PYTHONPATH=/app).
            "PYSPARK_PYTHON": sys.executable,
            "PYTHONPATH": str(ROOT),
            # No REST submission server (it would take the fixed port 6066), and a port that is
            # taken fails the start instead of silently moving to the next one.
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false -Dspark.port.maxRetries=0",
            # Daemons do little work: C1 only and the serial GC start faster on 2 cores.
            "SPARK_DAEMON_JAVA_OPTS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        }

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        try:
            return subprocess.Popen(  # noqa: S603 - pyspark's own launcher, fixed arguments
                [str(spark_home() / "bin" / "spark-class"), *args],
                cwd=self.base,
                env=self._daemon_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group: kill_worker takes the executors too
            )
        finally:
            log.close()

    # -------------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        """The master's JSON status (workers, applications), as its web UI serves it."""
        url = f"http://{LOOPBACK}:{self.master_ui_port}/json/"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http
            return dict(json.load(response))

    def alive_workers(self) -> int:
        try:
            return int(self.state().get("aliveworkers", 0))
        except (OSError, urllib.error.URLError, ValueError):
            return 0

    def executors_of_running_apps(self) -> int:
        """Cores the master has granted to running applications (0 = no executor)."""
        try:
            return sum(int(a.get("cores", 0)) for a in self.state().get("activeapps", []))
        except (OSError, urllib.error.URLError, ValueError):
            return 0

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.is_file():
            return f"({path} missing)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait(self, what: str, condition: Any, process: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            proc = self.master if process == "master" else self.worker
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"Spark {process} exited ({proc.returncode}) before {what}; "
                    f"log:\n{self.tail(process)}"
                )
            time.sleep(0.2)
        raise RuntimeError(
            f"Spark {process}: {what} not within {timeout}s; log:\n{self.tail(process)}"
        )

    # -------------------------------------------------------------------- lifecycle
    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        started = time.monotonic()
        self.master = self._spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            LOOPBACK,
            "--port",
            str(self.master_port),
            "--webui-port",
            str(self.master_ui_port),
        )
        # The worker is launched as soon as the master's RPC port listens: its own JVM start
        # overlaps the master's last steps, and its first registration attempt finds a
        # master (a refused attempt is retried only 5-15 s later).
        self._wait("RPC port listening", lambda: _listening(self.master_port), "master", timeout)
        self.start_worker(timeout=timeout)
        self.started_in_s = time.monotonic() - started

    def start_worker(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start a worker (port chosen by the OS) and wait until the master counts it alive."""
        before = self.alive_workers()
        self.workers_started += 1
        self.worker = self._spawn(
            f"worker-{self.workers_started}",
            "org.apache.spark.deploy.worker.Worker",
            "--host",
            LOOPBACK,
            "--port",
            "0",
            "--webui-port",
            str(free_port()),
            "--cores",
            str(WORKER_CORES),
            "--memory",
            WORKER_MEMORY,
            "--work-dir",
            str(self.base / "work"),
            self.master_url,
        )
        self._wait(
            "worker registered with the master",
            lambda: self.alive_workers() > before,
            "worker",
            timeout,
        )

    def kill_worker(self, timeout: float = 60.0) -> None:
        """SIGKILL the worker, its executor and Python workers; wait until the master sees it."""
        if self.worker is None:
            return
        try:
            os.killpg(self.worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.worker.wait(30)
        self.worker = None
        # the master drops a worker whose connection closed; spark.worker.timeout (60 s) backs it
        deadline = time.monotonic() + timeout
        while self.alive_workers() > 0 and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in (self.worker, self.master):
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            except ProcessLookupError:
                pass
        self.worker = self.master = None

    def driver_env(self) -> dict[str, str]:
        """Environment for a driver (python -m consumer_app) that runs on this cluster."""
        return {
            "SPARK_MASTER": self.master_url,
            # The driver binds and advertises loopback: executors connect back to 127.0.0.1.
            "SPARK_LOCAL_IP": LOOPBACK,
            "PYSPARK_PYTHON": sys.executable,
        }


@pytest.fixture(scope="session")
def spark_cluster() -> Iterator[SparkCluster]:
    """A Spark standalone master + worker on loopback for the whole test session."""
    if shutil.which("java") is None:
        pytest.fail("java is missing: `make install` installs OpenJDK 17", pytrace=False)
    # not under pytest's tmp dir: short paths, and kept out of test-specific cleanup
    cluster = SparkCluster(Path(tempfile.mkdtemp(prefix="spark_cluster_")))
    try:
        cluster.start()
    except RuntimeError as err:
        cluster.stop()
        pytest.fail(f"the Spark standalone cluster did not start: {err}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)
