"""The users' deployment, end to end on a real Docker engine: docker-compose.yaml + the demo.

What runs: `scripts/docker-engine.sh start` (the user's engine, or dockerd under .local/docker),
`docker/standins/build.sh` (the official images, or same-tag stand-ins where no registry
answers), `docker compose build`, then docker-compose.yaml + docker-compose.demo.yaml as a
project of its own (its own name, volumes, network, and free host ports), with every secret
holding quotes, a backslash, a space and `@:/%#`. The replay server plays the bundled
2020-01-01 BTCUSDT recording faster than the demo's speed 60, so the drills land mid-stream.

What it proves, in order:
1. every health check passes and the consumer is a Spark application of the compose master
   whose executor runs on the compose worker;
2. `docker compose kill -s KILL consumer` and `docker compose restart kafka` mid-stream, each
   followed by compose bringing the service back, still end with every trade of the recording
   exactly once in staging.raw_prices (count and checksum computed here from the recording);
3. Prometheus scrapes the producer, the consumer and both exporters, which log in as the
   read-only analyst and with the Redis password; the dashboard reads the warehouse (as the
   analyst) and Prometheus;
4. the DAG's run for 2020-01-01, triggered through Airflow's REST API with the admin login
   (the demo has no schedule), waits for the day, summarises it and reconciles it with the
   replay server's klines: Binance's own candle, `reconciled` (read back as the analyst), and
   the exporter reports the reconciled candle to Prometheus;
5. `docker compose down -v` leaves no container, network or volume behind.

Each phase's time goes to .local/logs/compose-e2e-timings.txt (`.ci/run` prints it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.fernet import Fernet

pytestmark = pytest.mark.compose

ROOT = Path(__file__).resolve().parents[2]
RECORDING = ROOT / "recordings" / "btcusdt-trade-2020-01-01.jsonl.gz"
TIMINGS = ROOT / ".local" / "logs" / "compose-e2e-timings.txt"
COMPOSE_FILES = ("-f", "docker-compose.yaml", "-f", "docker-compose.demo.yaml")
ONE_SHOTS = {"db-migrate", "kafka-init", "airflow-init"}
#: The host ports the stack publishes (each gets a free one here).
PUBLISHED_PORTS = (
    "POSTGRES_PORT", "REDIS_PORT", "KAFKA_PORT", "AIRFLOW_PORT", "PRODUCER_METRICS_PORT",
    "CONSUMER_METRICS_PORT", "SPARK_MASTER_UI_PORT", "DASHBOARD_PORT", "PROMETHEUS_PORT",
)  # fmt: skip
# 86,400 s of trading in about 5 minutes: slower would not fit CI, faster would end the
# stream before the drills.
REPLAY_SPEED = "300"
# Binance's official 1d kline of BTCUSDT on 2020-01-01 (tests/fixtures/README.md).
BINANCE_CANDLE = (
    Decimal("7195.24"), Decimal("7255.00"), Decimal("7175.15"), Decimal("7200.85"),
    Decimal("16792.388165"), 194_010,
)  # fmt: skip
# Generous: the machines are shared and slow (a whole Airflow CLI can take minutes).
UP_TIMEOUT_S = 900
LAND_TIMEOUT_S = 1200
DAG_TIMEOUT_S = 900
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ----------------------------------------------------------------------------- expectations
@dataclass(frozen=True)
class Recording:
    """What the recording holds, read here with gzip + json + Decimal (not the apps' code)."""

    trades: int
    checksum: str


def trade_line(trade_id: int, price: Decimal, qty: Decimal, at: datetime, maker: bool) -> str:
    return f"{trade_id}|{price.normalize()}|{qty.normalize()}|{at.isoformat()}|{maker}"


def read_recording() -> Recording:
    lines = []
    with gzip.open(RECORDING, "rt", encoding="utf-8") as frames:
        for frame in frames:
            data = json.loads(frame)["data"]
            trade_time = EPOCH + timedelta(milliseconds=int(data["T"]))
            lines.append(
                (
                    int(data["t"]),
                    trade_line(
                        int(data["t"]),
                        Decimal(data["p"]),
                        Decimal(data["q"]),
                        trade_time,
                        data["m"],
                    ),
                )
            )
    lines.sort()
    digest = hashlib.sha256("\n".join(line for _, line in lines).encode()).hexdigest()
    return Recording(trades=len(lines), checksum=digest)


# ----------------------------------------------------------------------------- the stack
def tricky_secret(label: str) -> str:
    """A password every path must carry intact: quotes, a backslash, a space and @:/%#."""
    return f"{label}-{secrets.token_hex(6)} q'\"\\ @:/%#"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Timings:
    phases: list[tuple[str, float]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def record(self, phase: str, t0: float) -> None:
        self.phases.append((phase, time.monotonic() - t0))
        TIMINGS.parent.mkdir(parents=True, exist_ok=True)
        TIMINGS.write_text(
            "".join(f"{name:<58} {took:7.1f}s\n" for name, took in self.phases)
            + f"{'compose test total':<58} {time.monotonic() - self.started:7.1f}s\n"
        )


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    settings: dict[str, str]
    timings: Timings

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our compose command, fixed arguments
            [*self.compose, *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def must(self, *args: str, timeout: float = 600) -> str:
        result = self.run(*args, timeout=timeout)
        if result.returncode != 0:
            pytest.fail(
                f"docker compose {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{self.diagnosis()}",
                pytrace=False,
            )
        return result.stdout

    def docker(self, *args: str) -> str:
        result = subprocess.run(  # noqa: S603 - fixed arguments
            ["docker", *args],  # noqa: S607 - the docker CLI on PATH, as the engine script uses it
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,  # noqa: S607
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def services(self) -> dict[str, dict[str, Any]]:
        out = self.run("ps", "-a", "--format", "json").stdout.strip()
        # One object a line (Compose >= 2.21), or one array (older 2.x).
        rows = json.loads(out) if out.startswith("[") else [json.loads(x) for x in out.splitlines()]
        return {row["Service"]: row for row in rows}

    def diagnosis(self) -> str:
        """State of every service and the last log lines of those not healthy or done."""
        lines = []
        for name, row in sorted(self.services().items()):
            lines.append(
                f"{name}: {row.get('State')} {row.get('Health') or ''} {row.get('Status')}"
            )
            if not (row.get("Health") == "healthy" or row.get("State") == "exited"):
                lines.append(self.run("logs", "--no-color", "--tail", "25", name).stdout)
        return "\n".join(lines)

    def owner_dsn(self) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.settings["POSTGRES_PORT"], dbname="crypto",
            user="pipeline", password=self.settings["POSTGRES_PASSWORD"], connect_timeout=10,
        )  # fmt: skip

    def rows(self) -> int:
        try:
            with psycopg.connect(self.owner_dsn()) as conn:
                row = conn.execute("select count(*) from staging.raw_prices").fetchone()
        except psycopg.OperationalError:
            return -1  # PostgreSQL restarting: not a count
        return int(row[0]) if row else 0

    def produced(self) -> int:
        """Events the producer has had acknowledged (its Prometheus counter)."""
        url = f"http://127.0.0.1:{self.settings['PRODUCER_METRICS_PORT']}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
                text = response.read().decode()
        except OSError:
            return -1
        for line in text.splitlines():
            if line.startswith("producer_events_produced_total"):
                return int(float(line.split()[-1]))
        return 0


def wait_for(what: str, condition: Callable[[], bool], timeout: float, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s\n{stack.diagnosis()}", pytrace=False)
        time.sleep(2)


def engine_script(verb: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own script
        [str(ROOT / "scripts" / "docker-engine.sh"), verb],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def engine_env() -> Iterator[dict[str, str]]:
    """DOCKER_HOST and DOCKER_COMPOSE of an engine; one started here is stopped afterwards."""
    already_running = engine_script("status").returncode == 0
    started = engine_script("start", timeout=1800)
    if started.returncode != 0:
        last = (started.stderr.strip().splitlines() or ["(no output)"])[-1]
        pytest.fail(f"no Docker engine for the compose test: {last}", pytrace=False)
    exported = engine_script("env")
    assert exported.returncode == 0, exported.stderr
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    for line in exported.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    try:
        yield env
    finally:
        if not already_running:
            engine_script("stop", timeout=120)


@pytest.fixture(scope="module")
def stack(engine_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    timings = Timings()
    ports = free_ports(len(PUBLISHED_PORTS))
    settings = {
        **dict(zip(PUBLISHED_PORTS, (str(port) for port in ports), strict=True)),
        "POSTGRES_PASSWORD": tricky_secret("owner"),
        "PIPELINE_WRITER_PASSWORD": tricky_secret("writer"),
        "PIPELINE_DAG_PASSWORD": tricky_secret("dag"),
        "PIPELINE_ANALYST_PASSWORD": tricky_secret("analyst"),
        "AIRFLOW_DB_PASSWORD": tricky_secret("airflow"),
        "REDIS_PASSWORD": tricky_secret("redis"),
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": tricky_secret("admin"),
        "AIRFLOW_JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
        "DEMO_SPEED": REPLAY_SPEED,
    }
    # Settings reach compose through the environment (taken literally); the empty env file
    # keeps the developer's .env out of the test.
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("# the compose test passes its settings in the environment\n")
    project = f"crypto-pipeline-e2e-{os.getpid()}"
    compose = [*shlex.split(engine_env["DOCKER_COMPOSE"]), "-p", project,
               "--env-file", str(env_file), *COMPOSE_FILES]  # fmt: skip
    env = {**engine_env, **settings}
    stack = Stack(compose=compose, env=env, settings=settings, timings=timings)

    t0 = time.monotonic()
    images = subprocess.run(  # noqa: S603 - our own script
        [str(ROOT / "docker" / "standins" / "build.sh")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert images.returncode == 0, images.stderr[-4000:]
    timings.record("images (official, or same-tag stand-ins)", t0)
    t0 = time.monotonic()
    stack.must("build", timeout=3600)
    timings.record("docker compose build", t0)
    try:
        yield stack
    finally:
        stack.run("down", "-v", "--remove-orphans", timeout=600)


# ----------------------------------------------------------------------------- the test
# Images, builds and a whole stack on a shared 2-core machine: far beyond the suite's 900 s.
@pytest.mark.timeout(3600)
def test_the_demo_stack_end_to_end_on_a_docker_engine(stack: Stack) -> None:
    recording = read_recording()
    assert recording.trades == BINANCE_CANDLE[5]
    up_healthy(stack)
    consumer_runs_on_the_spark_cluster(stack)
    prometheus_and_the_dashboard_see_the_pipeline(stack)
    every_trade_lands_once_through_a_consumer_kill_and_a_kafka_restart(stack, recording)
    the_dag_gives_binances_candle_reconciled(stack)
    down_v_leaves_nothing(stack)


def up_healthy(stack: Stack) -> None:
    # The producer starts last: the replay server paces the recording from its first
    # subscriber on, so the drills below find the stream in its middle.
    t0 = time.monotonic()
    stack.must("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), "--scale", "producer=0",
               timeout=UP_TIMEOUT_S + 120)  # fmt: skip
    stack.must("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), "producer",
               timeout=UP_TIMEOUT_S + 120)  # fmt: skip
    stack.timings.record("up --wait: every health check passed", t0)
    services = stack.services()
    expected = set(stack.must("config", "--services").split())
    assert set(services) == expected, f"services without a container: {expected - set(services)}"
    for name, row in services.items():
        if name in ONE_SHOTS:
            assert (row["State"], row["ExitCode"]) == ("exited", 0), f"{name}: {row['Status']}"
        else:
            assert (row["State"], row["Health"]) == ("running", "healthy"), (
                f"{name}: {row['Status']}"
            )


def consumer_runs_on_the_spark_cluster(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.settings['SPARK_MASTER_UI_PORT']}/json/"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        master = json.load(response)
    apps = [app for app in master["activeapps"] if app["name"] == "consumer_app"]
    assert len(apps) == 1, f"the master runs no consumer_app: {master['activeapps']}"
    worker = json.loads(stack.must(
        "exec", "-T", "spark-worker", "python", "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8081/json/').read().decode())",
    ))  # fmt: skip
    executors = [e for e in worker["executors"] if e["appid"] == apps[0]["id"]]
    assert executors, f"no executor of {apps[0]['id']} on spark-worker: {worker['executors']}"


def every_trade_lands_once_through_a_consumer_kill_and_a_kafka_restart(
    stack: Stack, recording: Recording
) -> None:
    total = recording.trades
    t0 = time.monotonic()
    wait_for("a sixth of the trades in PostgreSQL", lambda: stack.rows() >= total // 6,
             LAND_TIMEOUT_S, stack)  # fmt: skip
    at_kill = (stack.rows(), stack.produced())
    stack.must("kill", "-s", "KILL", "consumer")
    assert stack.services()["consumer"]["State"] == "exited", "SIGKILL did not stop the consumer"
    stack.must("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), "consumer",
               timeout=UP_TIMEOUT_S + 120)  # fmt: skip
    stack.timings.record("consumer: kill -s KILL, then up --wait", t0)

    t0 = time.monotonic()
    # On the producer's count: it must still be producing when the broker goes away.
    wait_for("half of the trades produced", lambda: stack.produced() >= total // 2,
             LAND_TIMEOUT_S, stack)  # fmt: skip
    at_restart = (stack.rows(), stack.produced())
    stack.must("restart", "kafka", timeout=300)
    wait_for("kafka healthy again", lambda: stack.services()["kafka"].get("Health") == "healthy",
             UP_TIMEOUT_S, stack)  # fmt: skip
    stack.timings.record("kafka: restart, then healthy", t0)
    # Mid-stream: the producer was still producing and the consumer still behind each time.
    for drill, (rows, produced) in (("kill", at_kill), ("restart", at_restart)):
        assert 0 < rows < total and 0 < produced < total, (drill, rows, produced)

    t0 = time.monotonic()
    wait_for(f"all {total} trades in PostgreSQL", lambda: stack.rows() >= total,
             LAND_TIMEOUT_S, stack)  # fmt: skip
    stack.timings.record("the rest of the recording lands", t0)
    with psycopg.connect(stack.owner_dsn()) as conn:
        counts = conn.execute(
            "select count(*), count(distinct (symbol, stream, sequence_id)) from staging.raw_prices"
        ).fetchone()
        landed = conn.execute(
            "select sequence_id, price, quantity, event_time, is_buyer_maker "
            "from staging.raw_prices where symbol = 'BTCUSDT' and stream = 'trade' "
            "order by sequence_id"
        ).fetchall()
    assert counts == (total, total), f"rows, distinct trades: {counts} (expected {total} each)"
    digest = hashlib.sha256(
        "\n".join(trade_line(t, p, q, at.astimezone(UTC), m) for t, p, q, at, m in landed).encode()
    ).hexdigest()
    assert digest == recording.checksum, "the landed trades differ from the recording's"


class AirflowApi:
    """Airflow's REST API on the published port, logged in with the admin login."""

    def __init__(self, stack: Stack) -> None:
        self.base = f"http://127.0.0.1:{stack.settings['AIRFLOW_PORT']}"
        login = {
            "username": stack.settings["AIRFLOW_ADMIN_USER"],
            "password": stack.settings["AIRFLOW_ADMIN_PASSWORD"],
        }
        self.token = str(self.call("POST", "/auth/token", login, auth=False)["access_token"])

    def call(self, method: str, path: str, body: object = None, auth: bool = True) -> Any:
        request = urllib.request.Request(  # noqa: S310 - loopback
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {self.token}"} if auth else {}),
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            return json.load(response)


def prometheus(stack: Stack, path: str, **params: str) -> Any:
    """The `data` of a Prometheus HTTP API answer, on the published port."""
    url = f"http://127.0.0.1:{stack.settings['PROMETHEUS_PORT']}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return json.load(response)["data"]


def prometheus_value(stack: Stack, expr: str) -> float | None:
    result = prometheus(stack, "/api/v1/query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


def prometheus_and_the_dashboard_see_the_pipeline(stack: Stack) -> None:
    t0 = time.monotonic()
    targets: dict[str, str] = {}

    def every_job_up() -> bool:
        nonlocal targets
        active = prometheus(stack, "/api/v1/targets", state="active")["activeTargets"]
        targets = {target["labels"]["job"]: target["health"] for target in active}
        return targets == dict.fromkeys(("producer", "consumer", "postgres", "redis"), "up")

    wait_for("Prometheus scraping every job", every_job_up, 300, stack)
    # The exporters answer even when they cannot log in: their own up-gauges say whether the
    # analyst's password (quotes, backslash, `:`) and the Redis password got through.
    wait_for(
        "pg_up and redis_up 1 (the exporters logged in)",
        lambda: (prometheus_value(stack, "pg_up"), prometheus_value(stack, "redis_up")) == (1, 1),
        300,
        stack,
    )
    stack.timings.record("Prometheus: every target up, the exporters logged in", t0)


def the_dashboard_reads(stack: Stack) -> dict[str, Any]:
    """The warehouse and Prometheus as the dashboard's own code reads them, in its container."""
    script = """
import json
from dashboard import health, warehouse
from dashboard.config import get_settings
settings = get_settings()
with warehouse.connect(settings) as conn:
    row = conn.execute(
        "select current_user as login, reconciliation_status, trade_count"
        " from analytics.daily_candles where symbol = 'BTCUSDT' and event_date = '2020-01-01'"
    ).fetchone()
    prices = warehouse.latest_prices(conn)
figures = health.read_health(settings.prometheus_url).figures
print(json.dumps({**row, "prices": len(prices), "producer_up": figures["producer_up"],
                  "consumer_up": figures["consumer_up"]}))
"""
    out = stack.must("exec", "-T", "dashboard", "python", "-c", script)
    return dict(json.loads(out.strip().splitlines()[-1]))


def the_dag_gives_binances_candle_reconciled(stack: Stack) -> None:
    t0 = time.monotonic()
    api = AirflowApi(stack)
    dag = "/api/v2/dags/get_daily_summary"

    def unpaused() -> bool:
        try:
            return api.call("PATCH", dag, {"is_paused": False})["is_paused"] is False
        except urllib.error.HTTPError as err:
            if err.code == 404:  # not parsed yet
                return False
            raise

    wait_for("the DAG get_daily_summary loaded and unpaused", unpaused, DAG_TIMEOUT_S, stack)
    # The demo has no schedule: the run dated 2020-01-01 summarises the UTC day 2020-01-01
    # (the DAG's one rule), triggered as `make compose-demo` triggers it.
    run_id = "compose-e2e__2020-01-01"
    api.call("POST", f"{dag}/dagRuns", {
        "dag_run_id": run_id, "logical_date": "2020-01-01T00:00:00Z",
        "data_interval_start": "2020-01-01T00:00:00Z",
        "data_interval_end": "2020-01-02T00:00:00Z",
    })  # fmt: skip
    state = ""

    def finished() -> bool:
        nonlocal state
        state = api.call("GET", f"{dag}/dagRuns/{run_id}")["state"]
        failing = [
            task
            for task in api.call("GET", f"{dag}/dagRuns/{run_id}/taskInstances")["task_instances"]
            if task["state"] in ("failed", "up_for_retry", "upstream_failed")
        ]
        if failing:  # fail now, with the task's own words, not after its retries
            task = failing[0]
            log = api.call(
                "GET",
                f"{dag}/dagRuns/{run_id}/taskInstances/{task['task_id']}"
                f"/logs/{max(task['try_number'], 1)}?full_content=true",
            )
            errors = [json.dumps(line) for line in log.get("content", []) if "error" in str(line)]
            pytest.fail(
                f"DAG run {run_id}: task {task['task_id']} {task['state']}:\n"
                + "\n".join(errors[-5:]),
                pytrace=False,
            )
        return state == "success"

    wait_for(f"the DAG run {run_id}", finished, DAG_TIMEOUT_S, stack)
    stack.timings.record("DAG run of 2020-01-01 (triggered through the REST API)", t0)
    analyst = psycopg.conninfo.make_conninfo(
        host="127.0.0.1", port=stack.settings["POSTGRES_PORT"], dbname="crypto",
        user="pipeline_analyst", password=stack.settings["PIPELINE_ANALYST_PASSWORD"],
    )  # fmt: skip
    with psycopg.connect(analyst) as conn:
        row = conn.execute(
            "select open, high, low, close, volume, trade_count, reconciliation_status, "
            "exchange_open, exchange_high, exchange_low, exchange_close, exchange_volume, "
            "exchange_trade_count "
            "from analytics.daily_candles where event_date = '2020-01-01' and symbol = 'BTCUSDT'"
        ).fetchone()
    assert row is not None, "no daily candle of BTCUSDT for 2020-01-01"
    ours, status, exchange = row[:6], row[6], row[7:]
    assert ours == BINANCE_CANDLE, ours
    # Checked against the replay server's klines (the exchange of the demo), which agree.
    assert (status, exchange) == ("reconciled", BINANCE_CANDLE), (status, exchange)

    t0 = time.monotonic()
    reconciled = 'pipeline_daily_candles{symbol="BTCUSDT", reconciliation_status="reconciled"}'
    wait_for(
        "the exporter reporting the reconciled candle to Prometheus",
        lambda: prometheus_value(stack, reconciled) == 1,
        300,
        stack,
    )
    seen = the_dashboard_reads(stack)
    assert seen == {
        "login": "pipeline_analyst", "reconciliation_status": "reconciled",
        "trade_count": BINANCE_CANDLE[5], "prices": 1, "producer_up": 1, "consumer_up": 1,
    }, seen  # fmt: skip
    stack.timings.record("the exporter and the dashboard see the reconciled candle", t0)


def down_v_leaves_nothing(stack: Stack) -> None:
    project = stack.compose[stack.compose.index("-p") + 1]
    label = f"label=com.docker.compose.project={project}"
    containers = stack.docker("ps", "-a", "-q", "--filter", label).split()
    # Every volume a container of the project mounts, the anonymous ones of images included.
    mounted = {
        mount["Name"]
        for info in json.loads(stack.docker("inspect", *containers))
        for mount in info["Mounts"]
        if mount["Type"] == "volume"
    }
    t0 = time.monotonic()
    stack.must("down", "-v", timeout=600)
    stack.timings.record("down -v", t0)
    assert stack.docker("ps", "-a", "-q", "--filter", label).split() == []
    assert stack.docker("network", "ls", "-q", "--filter", label).split() == []
    assert stack.docker("volume", "ls", "-q", "--filter", label).split() == []
    left = set(stack.docker("volume", "ls", "-q").split()) & mounted
    assert not left, f"volumes left behind: {sorted(left)}"
