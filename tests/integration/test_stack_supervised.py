"""The local stack as an operator runs it: self-healing, least-privileged, loopback only.

One scratch copy of the stack (its own .local/, free ports, and passwords full of quotes,
backslashes, spaces and ``@:/%#`` in its .env) runs ``scripts/stack.sh demo`` on the TRXUSDT
recording (10,000 real trades) at a speed that keeps the feed flowing for about a minute. On
it, with the data flowing:

* the drill: ``kill -9`` of the producer, the consumer, the replay server and the Airflow
  scheduler; each must come back by itself (supervisord), ``make status`` must show the
  restart, and ``staging.raw_prices`` must end with the recording's trades exactly once
  (every row compared with the recording parsed here, independently of the apps);
* every socket the stack's processes listen on is bound to a loopback address;
* every process logs in to PostgreSQL with its own role (pg_stat_activity) and Redis refuses
  clients without the password;
* the Airflow DAG's run of the recording's day, triggered by ``stack.sh demo`` and run by the
  stack's scheduler through its connection ``pipeline_postgres`` as ``pipeline_dag``, ends
  green with the recording's candle;
* a new deployment with the production schedule (``0 0 * * *``, no start date, catch-up off)
  queues no runs for past days: the scheduler's run list and next run, read through Airflow's
  REST API; the demo's triggered run of the recording's day ends green; a backfill of
  2020-01-01 created through ``POST /api/v2/backfills`` and run by the real scheduler ends
  with Binance's official 1d kline of BTCUSDT (from ``/work/shared/data/binance``'s 1m klines).

Budget: one stack start (~1-2 min on a quiet machine) shared by the tests of this module.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECORDING = "recordings/trxusdt-trade-2025-03-04.jsonl.gz"
# 48 minutes of trading at 30x: the feed runs ~96 s (it starts last, once everything else
# runs), long enough to kill everything mid-stream.
SPEED = "30"
START_TIMEOUT_S = 600
LAND_TIMEOUT_S = 420.0
BACK_TIMEOUT_S = 240.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAG_TIMEOUT_S = 600.0
#: Binance's official 1m klines of BTCUSDT for 2020-01-01 (see that folder's README).
BINANCE_1M = Path("/work/shared/data/binance/BTCUSDT-1m-2020-01-01.zip")

#: What a user may put in a password: quotes, backslashes, spaces, @ : / % # (no $: compose
#: would interpolate it). Each secret gets its own, so a mix-up of roles shows as a refusal.
ODD = "q'u\"o\\te s p@c:e/%4#x"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dotenv_quote(value: str) -> str:
    """A double-quoted .env value: backslash and double quote escaped (compose, python-dotenv)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Trade:
    trade_id: int
    price: Decimal
    quantity: Decimal
    trade_time: datetime


def recording_trades() -> list[Trade]:
    """The recording's trades, parsed here (µs timestamps: the recording asked for them)."""
    trades = []
    with gzip.open(ROOT / RECORDING, "rt", encoding="utf-8") as frames:
        for line in frames:
            data = json.loads(line)["data"]
            trades.append(
                Trade(
                    int(data["t"]),
                    Decimal(data["p"]),
                    Decimal(data["q"]),
                    EPOCH + timedelta(microseconds=int(data["T"])),
                )
            )
    return trades


@dataclass
class Scratch:
    """A scratch copy of the stack: its root, settings and a way to run its verbs."""

    root: Path
    env: dict[str, str]
    settings: dict[str, str]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own script
            [str(self.root / "scripts" / "stack.sh"), *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def status(self) -> str:
        result = subprocess.run(  # noqa: S603 - our own Makefile
            ["make", "-s", "-C", str(self.root), "status"],  # noqa: S607 - make from PATH
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return result.stdout + result.stderr

    def dsn(self, user: str, password: str, dbname: str | None = None) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1",
            port=self.settings["POSTGRES_PORT"],
            dbname=dbname or self.settings["POSTGRES_DB"],
            user=user,
            password=password,
            connect_timeout="5",
        )

    def owner_dsn(self) -> str:
        return self.dsn(self.settings["POSTGRES_USER"], self.settings["POSTGRES_PASSWORD"])

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.root / ".local" / "logs" / f"{name}.log"
        if not path.exists():
            return f"({path} does not exist)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _copy_stack(target: Path) -> None:
    """What `make demo` needs, copied; the venv and the Maven jars linked (read only)."""
    for folder in (
        "scripts",
        "producer_app",
        "consumer_app",
        "airflow",
        "dashboard",
        "prometheus",
        "requirements",
    ):
        shutil.copytree(
            ROOT / folder, target / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("init.sql", "pom.xml", ".env.example", "Makefile"):
        shutil.copy2(ROOT / name, target / name)
    (target / "recordings").mkdir()
    shutil.copy2(ROOT / RECORDING, target / RECORDING)
    (target / ".venv").symlink_to(ROOT / ".venv")
    (target / ".local").mkdir()
    (target / ".local" / "jars").symlink_to(ROOT / ".local" / "jars")


def _clean_environment() -> dict[str, str]:
    """The caller's environment without any setting of the stack (the scratch .env decides)."""
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, re.MULTILINE))
    prefixes = ("POSTGRES_", "REDIS_", "KAFKA_", "AIRFLOW", "PIPELINE_", "SPARK_", "CONSUMER_")
    return {
        k: v
        for k, v in os.environ.items()
        if k not in documented and not k.startswith(prefixes) and k != "PYSPARK_PYTHON"
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    root = tmp_path_factory.mktemp("stack") / f"scratch-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    _copy_stack(root)
    secrets = {
        name: f"{ODD}-{i}"
        for i, name in enumerate(
            (
                "POSTGRES_PASSWORD",
                "PIPELINE_WRITER_PASSWORD",
                "PIPELINE_DAG_PASSWORD",
                "PIPELINE_ANALYST_PASSWORD",
                "AIRFLOW_DB_PASSWORD",
                "REDIS_PASSWORD",
                "AIRFLOW_ADMIN_PASSWORD",
            )
        )
    }
    ports = {
        "POSTGRES_PORT": _free_port(),
        "REDIS_PORT": _free_port(),
        "KAFKA_PORT": _free_port(),
        "KAFKA_CONTROLLER_PORT": _free_port(),
        "PRODUCER_METRICS_PORT": _free_port(),
        "CONSUMER_METRICS_PORT": _free_port(),
        "AIRFLOW_PORT": _free_port(),
        "REPLAY_PORT": _free_port(),
        "DASHBOARD_PORT": _free_port(),
        "PROMETHEUS_PORT": _free_port(),
        "POSTGRES_EXPORTER_PORT": _free_port(),
        "REDIS_EXPORTER_PORT": _free_port(),
    }
    settings = {name: str(port) for name, port in ports.items()} | secrets
    settings |= {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['KAFKA_PORT']}",
        "PROMETHEUS_URL": f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}",
        "POSTGRES_USER": "pipeline",
        "POSTGRES_DB": "crypto",
        "DEMO_RECORDING": RECORDING,
        "DEMO_SYMBOLS": "TRXUSDT",
        "DEMO_SPEED": SPEED,
        "STACK_COUNT_DELAY": "0",
        "KAFKA_HEAP_OPTS": "-Xms256m -Xmx512m",
        "CONSUMER_DRIVER_MEMORY": "1g",
        # a new deployment on the production schedule (make demo's default is none)
        "DAILY_SUMMARY_SCHEDULE": "0 0 * * *",
    }
    (root / ".env").write_text(
        "# scratch stack of tests/integration/test_stack_supervised.py\n"
        + "".join(f"{key}={_dotenv_quote(value)}\n" for key, value in settings.items())
    )
    scratch = Scratch(root, _clean_environment(), settings)
    started = time.monotonic()
    try:  # a start that times out leaves supervisord running: clean up in every case
        result = scratch.run("demo", timeout=START_TIMEOUT_S)
        print(f"scratch stack demo: exit {result.returncode} in {time.monotonic() - started:.0f}s")
        assert result.returncode == 0, (
            f"stack.sh demo failed:\n{result.stderr[-4000:]}\n"
            f"consumer log:\n{scratch.log_tail('consumer')}"
        )
        yield scratch
    finally:
        down = scratch.run("clean", timeout=300)
        print(f"scratch stack clean: exit {down.returncode}\n{down.stderr[-2000:]}")


# ----------------------------------------------------------------------------- processes
def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


MATCHERS: dict[str, Callable[[list[str]], bool]] = {
    "producer": lambda argv: argv[1:3] == ["-m", "producer_app"],
    "consumer": lambda argv: argv[1:3] == ["-m", "consumer_app"],
    "replay-server": lambda argv: argv[1:3] == ["-m", "producer_app.replay_server"],
    "airflow-scheduler": lambda argv: (
        len(argv) >= 3 and argv[1].endswith("/airflow") and argv[2] == "scheduler"
    ),
}


def find_process(root: Path, name: str) -> int | None:
    """The pid of the stack's process `name` (the topmost one: children share its cmdline)."""
    matches = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if MATCHERS[name](_cmdline(pid)) and _cwd(pid) == str(root):
            matches.add(pid)
    top = sorted(pid for pid in matches if _ppid(pid) not in matches)
    return top[0] if top else None


def _port_open(port: str) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", int(port))) == 0


def wait_until(what: str, condition: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:.0f}s", pytrace=False)


def row_count(stack: Scratch) -> int:
    with psycopg.connect(stack.owner_dsn()) as conn:
        row = conn.execute("select count(*) from staging.raw_prices").fetchone()
    return int(row[0]) if row else 0


# ----------------------------------------------------------------------------- the drill
def test_killed_processes_come_back_by_themselves_and_every_trade_lands_once(
    stack: Scratch,
) -> None:
    expected = recording_trades()
    try:
        wait_until("the first rows in staging.raw_prices", lambda: row_count(stack) > 0, 240)
    except pytest.fail.Exception:
        for name in ("consumer", "producer", "replay-server"):
            print(f"--- {name} log:\n{stack.log_tail(name)}")
        raise
    ports = {
        "producer": stack.settings["PRODUCER_METRICS_PORT"],
        "consumer": stack.settings["CONSUMER_METRICS_PORT"],
        "replay-server": stack.settings["REPLAY_PORT"],
    }
    for name in ("replay-server", "producer", "consumer", "airflow-scheduler"):
        pid = find_process(stack.root, name)
        assert pid is not None, f"{name} is not running in the scratch stack"
        rows_before = row_count(stack)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()

        def back(name: str = name, old: int = pid) -> bool:
            new = find_process(stack.root, name)
            return new is not None and new != old and (name not in ports or _port_open(ports[name]))

        try:
            took = wait_until(f"{name} (pid {pid}, kill -9) back by itself", back, BACK_TIMEOUT_S)
        except pytest.fail.Exception:
            print(stack.status())
            print(stack.log_tail(name))
            raise
        print(f"{name}: killed at {rows_before} rows, back in {took:.1f}s")
        assert time.monotonic() - killed_at < BACK_TIMEOUT_S

    def restarted_and_running(name: str) -> bool:
        line = next((ln for ln in stack.status().splitlines() if ln.split()[:1] == [name]), "")
        restarts = re.search(r"\brestarts (\d+)", line)
        return restarts is not None and int(restarts.group(1)) >= 1 and " RUNNING " in line

    for name in ("replay-server", "producer", "consumer", "airflow-scheduler"):
        try:
            wait_until(
                f"make status shows {name} RUNNING after a restart",
                functools.partial(restarted_and_running, name),
                BACK_TIMEOUT_S,
            )
        except pytest.fail.Exception:
            print(stack.status())
            raise

    wait_until(
        f"all {len(expected)} trades in staging.raw_prices",
        lambda: row_count(stack) >= len(expected),
        LAND_TIMEOUT_S,
    )
    time.sleep(5)  # a duplicate arriving late would show now
    with psycopg.connect(stack.owner_dsn()) as conn:
        rows = conn.execute(
            "select sequence_id, price, quantity, event_time from staging.raw_prices"
            " where symbol = 'TRXUSDT' and stream = 'trade' order by sequence_id"
        ).fetchall()
        total = conn.execute("select count(*) from staging.raw_prices").fetchone()
    assert total is not None and total[0] == len(expected), "rows outside the recording"
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (t.trade_id, t.price, t.quantity, t.trade_time) for t in expected
    ]


# ----------------------------------------------------------------------------- security
def _descendants(root_pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            children.setdefault(_ppid(int(entry.name)), []).append(int(entry.name))
    found, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def test_every_listening_socket_of_the_stack_is_on_loopback(stack: Scratch) -> None:
    supervisord = int((stack.root / ".local" / "run" / "supervisord.pid").read_text())
    ours = _descendants(supervisord)
    assert find_process(stack.root, "consumer") in ours
    listeners = subprocess.run(
        ["ss", "-Hlntup"],  # noqa: S607 - iproute2 from PATH
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    seen: list[tuple[str, int]] = []
    for line in listeners:
        fields = line.split()
        local = fields[4]
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in ours:
                seen.append((local, pid))
    assert len(seen) >= 8, f"too few listeners found for the stack: {seen}"
    outside = [
        (address, pid, _cmdline(pid)[:3])
        for address, pid in seen
        if not re.match(r"^(127\.0\.0\.1|\[::1\]|\[::ffff:127\.0\.0\.1\]):\d+$", address)
    ]
    assert not outside, f"listening beyond loopback: {outside}"


def test_each_process_logs_in_with_its_own_role_and_redis_wants_its_password(
    stack: Scratch,
) -> None:
    with psycopg.connect(stack.owner_dsn(), autocommit=True) as conn:
        sessions = conn.execute(
            "select usename, datname, application_name from pg_stat_activity"
            " where usename is not null and pid <> pg_backend_pid()"
        ).fetchall()
    consumer = {(u, d) for u, d, app in sessions if app == "consumer_app"}
    assert consumer == {("pipeline_writer", "crypto")}, sessions
    assert {u for u, d, _ in sessions if d == "airflow"} == {"airflow"}, sessions
    assert stack.settings["POSTGRES_USER"] not in {u for u, _, _ in sessions}, sessions

    port = int(stack.settings["REDIS_PORT"])
    anonymous = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=3)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    client = redis.Redis(host="127.0.0.1", port=port, password=stack.settings["REDIS_PASSWORD"])
    assert client.ping()
    client.close()

    for role, password, db in (
        ("pipeline_analyst", "PIPELINE_ANALYST_PASSWORD", "airflow"),
        ("airflow", "AIRFLOW_DB_PASSWORD", "crypto"),
    ):
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(stack.dsn(role, stack.settings[password], dbname=db)).close()


def test_the_dag_runs_as_pipeline_dag_and_computes_the_recordings_candle(stack: Scratch) -> None:
    """The run `make demo` triggers for the recording's day, executed by the stack's own
    scheduler: its tasks log in through the connection pipeline_postgres (JSON) as
    pipeline_dag, and the metadata as role airflow, both with passwords full of quotes,
    backslashes and %. The run dated D summarises the UTC day D (the DAG's one rule)."""
    expected = recording_trades()
    day = expected[0].trade_time.date()
    took = wait_for_run(AirflowRest(stack), "get_daily_summary", f"demo__{day}")
    print(f"demo__{day}: success after {took:.0f}s more")
    with psycopg.connect(stack.owner_dsn()) as conn:
        candle = conn.execute(
            "select open_price, high_price, low_price, close_price, volume, trade_count"
            " from analytics.daily_summary_dw where event_date = %s and symbol = 'TRXUSDT'",
            (day,),
        ).fetchone()
    ordered = sorted(expected, key=lambda t: (t.trade_time, t.trade_id))
    assert candle == (
        ordered[0].price,
        max(t.price for t in expected),
        min(t.price for t in expected),
        ordered[-1].price,
        sum(t.quantity for t in expected),
        len(expected),
    )


# ----------------------------------------------------------------------------- the scheduler
class AirflowRest:
    """The scratch stack's Airflow REST API (v2), with a JWT of the .env's admin login."""

    def __init__(self, stack: Scratch) -> None:
        self.base = f"http://127.0.0.1:{stack.settings['AIRFLOW_PORT']}"
        login = {
            "username": stack.settings.get("AIRFLOW_ADMIN_USER", "admin"),
            "password": stack.settings["AIRFLOW_ADMIN_PASSWORD"],
        }
        self.token = str(self.send("POST", "/auth/token", login, auth=False)["access_token"])

    def send(self, method: str, path: str, body: object = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(  # noqa: S310 - loopback, our own stack
            self.base + path,
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
            method=method,
        )
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - loopback
            return json.load(answer)

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.send("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"])

    def failed_tasks(self, dag_id: str, run_id: str) -> list[str]:
        """Each failed (or retrying) task of a run with the error lines of its log."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        found = []
        for ti in self.send("GET", f"{path}/taskInstances")["task_instances"]:
            if ti["state"] not in ("failed", "up_for_retry", "upstream_failed"):
                continue
            log = self.send(
                "GET",
                f"{path}/taskInstances/{ti['task_id']}/logs/{max(ti['try_number'], 1)}"
                "?full_content=true",
            )
            lines = [json.dumps(x) for x in log.get("content", []) if "error" in str(x).lower()]
            found.append(f"{ti['task_id']} {ti['state']}:\n" + "\n".join(lines[-5:]))
        return found


def binance_1d_candle() -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal, int]:
    """BTCUSDT's 2020-01-01 candle from Binance's official 1m klines, added up here:
    open, high, low, close, volume, trade count."""
    with zipfile.ZipFile(BINANCE_1M) as archive:
        (name,) = archive.namelist()
        rows = list(csv.reader(io.TextIOWrapper(archive.open(name), encoding="ascii")))
    rows.sort(key=lambda r: int(r[0]))
    assert len(rows) == 1440
    return (
        Decimal(rows[0][1]),
        max(Decimal(r[2]) for r in rows),
        min(Decimal(r[3]) for r in rows),
        Decimal(rows[-1][4]),
        sum((Decimal(r[5]) for r in rows), Decimal(0)),
        sum(int(r[8]) for r in rows),
    )


def wait_for_run(api: AirflowRest, dag_id: str, run_id: str) -> float:
    """Waits until the run succeeded; fails at once, with the task's own words, if a task fails."""

    def succeeded() -> bool:
        quoted = urllib.parse.quote(run_id, safe="")
        state = api.send("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")["state"]
        failing = api.failed_tasks(dag_id, run_id)
        if failing or state == "failed":
            pytest.fail(f"DAG run {run_id} {state}:\n" + "\n".join(failing), pytrace=False)
        return bool(state == "success")

    return wait_until(f"DAG run {run_id} of {dag_id} succeeded", succeeded, DAG_TIMEOUT_S)


def test_a_new_deployment_queues_no_past_runs_and_a_rest_backfill_gives_binances_candle(
    stack: Scratch,
) -> None:
    """Issue 13 item 4, with the real scheduler: no catch-up, the demo's run green, a backfill
    of a day long before the deployment through the REST API."""
    api = AirflowRest(stack)
    dag_id = "get_daily_summary"
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    # The scheduler has run all along (minutes by now, and through a kill -9 when the drill
    # ran first): still no scheduled run for a past day, and its next run is for today.
    health = api.send("GET", "/api/v2/monitor/health")
    assert health["scheduler"]["status"] == "healthy", health
    dag = api.send("GET", f"/api/v2/dags/{dag_id}")
    assert dag["is_paused"] is False and "0 0 * * *" in str(dag["timetable_summary"]), dag
    scheduled = [r["dag_run_id"] for r in api.runs(dag_id) if r["run_type"] == "scheduled"]
    assert scheduled == [], f"catch-up runs on a new deployment: {scheduled}"
    assert dag["next_dagrun_data_interval_start"] is not None, dag
    next_day = datetime.fromisoformat(dag["next_dagrun_data_interval_start"])
    assert next_day >= today, f"the scheduler's next run is for {next_day}, a past day"

    # The demo's own run of the recording's day (triggered by stack.sh demo) ends green.
    recording_day = recording_trades()[0].trade_time.date()
    wait_for_run(api, dag_id, f"demo__{recording_day}")
    failed = [r["dag_run_id"] for r in api.runs(dag_id) if r["state"] == "failed"]
    assert failed == [], f"failed runs: {failed}"

    # 2020-01-01 - years before this deployment - through POST /api/v2/backfills, run by the
    # scheduler. Its trades are loaded as the consumer would have written them.
    from test_airflow_dag_run import load_recording

    with psycopg.connect(stack.owner_dsn(), autocommit=True) as conn:
        assert load_recording(conn) == 194_010
    # A backfill's dates are the runs' start times (Airflow's rule for a trigger timetable):
    # the run starting 2020-01-02 00:00 is dated 2020-01-01 and summarises that day.
    backfill = api.send("POST", "/api/v2/backfills", {
        "dag_id": dag_id, "from_date": "2020-01-02T00:00:00Z", "to_date": "2020-01-02T00:00:00Z",
        "max_active_runs": 1, "reprocess_behavior": "none", "dag_run_conf": {},
    })  # fmt: skip
    print(f"backfill {backfill['id']}: {backfill['from_date']} .. {backfill['to_date']}")

    def backfill_run() -> dict[str, Any] | None:
        return next((r for r in api.runs(dag_id) if r["run_type"] == "backfill"), None)

    wait_until("the backfill's run created", lambda: backfill_run() is not None, 120)
    run = backfill_run()
    assert run is not None
    dated = [
        datetime.fromisoformat(run[key])
        for key in ("logical_date", "data_interval_start", "data_interval_end")
    ]
    day_start = datetime(2020, 1, 1, tzinfo=UTC)
    assert dated == [day_start, day_start, day_start + timedelta(days=1)], run
    took = wait_for_run(api, dag_id, run["dag_run_id"])
    print(f"backfill run {run['dag_run_id']}: success in {took:.0f}s")
    assert [r["dag_run_id"] for r in api.runs(dag_id) if r["run_type"] == "backfill"] == [
        run["dag_run_id"]
    ]
    with psycopg.connect(stack.owner_dsn()) as conn:
        candle = conn.execute(
            "select open, high, low, close, volume, trade_count, reconciliation_status "
            "from analytics.daily_candles where event_date = '2020-01-01' and symbol = 'BTCUSDT'"
        ).fetchone()
    assert candle is not None, "no daily candle of BTCUSDT for 2020-01-01 after the backfill"
    assert candle[:6] == binance_1d_candle()
    # the scratch stack's exchange replays TRXUSDT only: the candle cannot be verified there
    assert candle[6] == "unverified", candle
