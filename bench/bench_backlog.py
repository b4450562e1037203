"""Issue-11 benchmark: drain one backlog with every design, side by side, in one run.

Not a test: run it on a quiet machine, it prints figures and the machine.
    .venv/bin/python bench/bench_backlog.py [--events 822521] [--live-seconds 60]
    .venv/bin/python bench/bench_backlog.py --events 30000 --memory-batches 5000,20000 \
        --live-seconds 10          # a quick end-to-end check of the script itself

Everything is co-located on the local stack (`make services`): Kafka, Redis, PostgreSQL; Spark
runs `local[*]` in each job's own process. The backlogs (bench/backlog.py): 822,521 trades over
two UTC days at real volume, one symbol (BTCUSDT) or three, in each design's wire format and
partitioning (ours keyed by symbol, the original unkeyed), each in a fresh 6-partition topic.
Every consumer gets a fresh database and checkpoint. Lines printed:
  (a) ceiling   Spark's Kafka source into format("noop") (availableNow, no batch limit), on
                each topic: what the engine alone costs; `parse` adds from_json of our schema
  (b) copy      one Python process, psycopg binary COPY of the backlog's rows (previous price
                computed in Python) into our staging.raw_prices
  (c) ours      `python -m consumer_app` (availableNow, its default 200,000 offsets per batch)
                on the single- and the three-symbol backlog; the first batch against the others
  (d) original  bench/original_design.py (the original project reproduced faithfully) on the
                same trades in its own format, schema and database
  (e) executor  the executor-side write path (issue 11): its slot, filled by the redesign
  memory        peak RSS of the driver (Python) and its JVM while ours drains batches of
                --memory-batches events
  live          ours at --live-rate events/s: event-to-commit p50/p99 (bench_consumer.py's)
For each drain: from process start to the last row committed (wall), the part after the
streaming query started (processing), and events/s over wall.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import backlog, original_design  # noqa: E402
from bench.bench_consumer import (  # noqa: E402
    admin_dsn,
    consumer_env,
    copy_rows,
    db_dsn,
    delete_topic,
    describe_live,
    drop_database,
    fresh_database,
    live_scenario,
    make_topic,
)
from bench.machine import describe_machine  # noqa: E402
from consumer_app.config import ConsumerSettings  # noqa: E402

BACKLOG_DAYS = ("2020-01-01", "2020-01-02")
DRAIN_TIMEOUT_S = 1800
UTC = dt.UTC


# ----------------------------------------------------------------------------- process memory
@dataclass
class MemorySampler:
    """Samples the RSS of a process (the Python driver) and of its descendants (the JVM)."""

    pid: int
    interval_s: float = 0.2
    peak_python_mb: float = 0.0
    peak_jvm_mb: float = 0.0
    peak_total_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @staticmethod
    def _rss_mb(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _descendants(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
        found, todo = [], list(children.get(self.pid, []))
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            python = self._rss_mb(self.pid)
            jvm = sum(self._rss_mb(p) for p in self._descendants())
            self.peak_python_mb = max(self.peak_python_mb, python)
            self.peak_jvm_mb = max(self.peak_jvm_mb, jvm)
            self.peak_total_mb = max(self.peak_total_mb, python + jvm)
            self._stop.wait(self.interval_s)

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return {
            "peak_python_mb": round(self.peak_python_mb),
            "peak_jvm_mb": round(self.peak_jvm_mb),
            "peak_total_mb": round(self.peak_total_mb),
        }


# ----------------------------------------------------------------------------- (a) the ceiling
def noop_job(mode: str, max_offsets: int) -> None:
    """Child process: Kafka source (+ from_json in `parse` mode) into the noop sink."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F  # noqa: N812

    from consumer_app.schema import EVENT_SCHEMA

    settings = ConsumerSettings()
    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (
        SparkSession.builder.master(settings.spark_master)
        .appName("bench_noop")
        .config("spark.jars", settings.spark_jars)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", settings.consumer_driver_memory)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", settings.kafka_topic_prices)
        .option("startingOffsets", "earliest")
    )
    if max_offsets:
        reader = reader.option("maxOffsetsPerTrigger", max_offsets)
    frame = reader.load()
    if mode == "parse":
        frame = frame.select(
            F.from_json(F.col("value").cast("string"), EVENT_SCHEMA).alias("e")
        ).select("e.*")
    ready = time.time()
    query = (
        frame.writeStream.format("noop")
        .option("checkpointLocation", settings.spark_checkpoint_dir)
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    done = time.time()
    batches = [
        {"rows": p["numInputRows"], "ms": p["durationMs"].get("triggerExecution")}
        for p in query.recentProgress
        if p["numInputRows"]
    ]
    print("NOOP " + json.dumps({"ready": ready, "done": done, "batches": batches}), flush=True)


def run_noop(
    settings: ConsumerSettings,
    topic: str,
    workdir: Path,
    mode: str,
    max_offsets: int = 0,
) -> dict[str, Any]:
    """The ceiling child process on `topic`; its own checkpoint (named after topic and mode)."""
    name = f"noop-{mode}-{topic}-{max_offsets}"
    env = consumer_env(settings, "dbname=unused", topic, workdir / f"ckpt-{name}")
    log = workdir / f"{name}.log"
    started = time.time()
    with log.open("wb") as out:
        code = subprocess.call(  # noqa: S603 - this script, fixed arguments
            [sys.executable, str(Path(__file__)), "--noop-job", mode, str(max_offsets)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=DRAIN_TIMEOUT_S,
        )
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("NOOP ")]
    if code != 0 or not lines:
        raise SystemExit(f"noop job failed ({code}); see {log}")
    out_ = json.loads(lines[-1][5:])
    rows = sum(b["rows"] for b in out_["batches"])
    return {
        "rows": rows,
        "wall_s": out_["done"] - started,
        "processing_s": out_["done"] - out_["ready"],
        "eps_wall": rows / (out_["done"] - started),
        "batches_ms": [b["ms"] for b in out_["batches"]],
        "log": str(log),
    }


# ----------------------------------------------------------------------------- (b) COPY limit
def backlog_rows(trades: Iterable[backlog.BacklogTrade]) -> list[tuple[Any, ...]]:
    """Our table's rows for the backlog, previous prices computed in plain Python."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    previous: dict[str, Decimal] = {}
    rows = []
    for t in sorted(trades, key=lambda t: (t.symbol, t.trade_time_ms, t.trade_id)):
        price = Decimal(t.price)
        prev = previous.get(t.symbol)
        change = None if prev is None else price - prev
        pct = (
            None
            if prev is None or change is None
            else (change * 100 / prev).quantize(Decimal("1e-8"))
        )
        previous[t.symbol] = price
        at = epoch + dt.timedelta(milliseconds=t.trade_time_ms)
        event_at = epoch + dt.timedelta(milliseconds=t.event_time_ms)
        rows.append(
            (t.symbol, "trade", t.trade_id, at, event_at, price, Decimal(t.quantity),
             t.is_buyer_maker, prev, change, pct, event_at, "ws")
        )  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- (c) ours
_BATCH_LINE = re.compile(
    r"batch (\d+): (\d+) rows \w+ in ([\d.]+)s \(ledger\+state ([\d.]+)s, spark ([\d.]+)s, "
    r"postgres ([\d.]+)s"
)
# logging's asctime; searched, not matched: Spark's console progress bar (no newline) can
# precede a log line in the same output file
_LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO ")


def _log_time(line: str) -> float | None:
    match = _LOG_TIME.search(line)
    if not match:
        return None
    return dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # noqa: DTZ007 - logging's asctime is local time


def run_ours(
    settings: ConsumerSettings,
    topic: str,
    workdir: Path,
    name: str,
    max_offsets: int | None = None,
) -> dict[str, Any]:
    """`python -m consumer_app` draining `topic` (availableNow) into a fresh database."""
    db = fresh_database(settings, f"bench_backlog_{name}", BACKLOG_DAYS)
    dsn = db_dsn(settings, db)
    extra = {"SPARK_TRIGGER_INTERVAL": "availableNow"}
    if max_offsets:
        extra["SPARK_MAX_OFFSETS_PER_TRIGGER"] = str(max_offsets)
    env = consumer_env(settings, dsn, topic, workdir / f"ckpt-{name}", **extra)
    log = workdir / f"{name}.log"
    started = time.time()
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "consumer_app"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        memory = MemorySampler(proc.pid).start()
        code = proc.wait(DRAIN_TIMEOUT_S)
        peaks = memory.stop()
    if code != 0:
        raise SystemExit(f"consumer failed ({code}); see {log}")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select count(*) from staging.raw_prices").fetchone()[0]  # type: ignore[index]
        last_commit = conn.execute(
            "select extract(epoch from max(committed_at)) from staging.consumer_batches"
        ).fetchone()[0]  # type: ignore[index]
    drop_database(settings, db)
    text = log.read_text(errors="replace").splitlines()
    query_started = next((_log_time(ln) for ln in text if "consumer started: query" in ln), None)
    batches = [
        {
            "id": int(m.group(1)),
            "rows": int(m.group(2)),
            "s": float(m.group(3)),
            "ledger_state_s": float(m.group(4)),
            "spark_s": float(m.group(5)),
            "postgres_s": float(m.group(6)),
        }
        for m in (_BATCH_LINE.search(ln) for ln in text)
        if m
    ]
    progress = [ln.split("durations ms ", 1)[1] for ln in text if "progress of batch 0:" in ln]
    last = float(last_commit)
    result: dict[str, Any] = {
        "rows": rows,
        "batches": len(batches),
        "wall_s": last - started,
        "startup_s": (query_started - started) if query_started else None,
        "processing_s": (last - query_started) if query_started else None,
        "eps_wall": rows / (last - started),
        "first_batch": batches[0] if batches else None,
        "first_batch_progress_ms": progress[0] if progress else None,
        "log": str(log),
        **peaks,
    }
    full = [b for b in batches[1:] if batches and b["rows"] == batches[0]["rows"]]
    if batches and full:
        typical = statistics.median(b["s"] for b in full)
        result["other_batches_median_s"] = typical
        result["first_batch_extra_s"] = batches[0]["s"] - typical
        result["other_batches_median_spark_s"] = statistics.median(b["spark_s"] for b in full)
    return result


# ----------------------------------------------------------------------------- (d) original
def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the job's process group (Python + JVM), SIGKILL it after 60 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    except ProcessLookupError:
        pass  # already gone


def run_original(
    settings: ConsumerSettings, topic: str, workdir: Path, name: str, expected_rows: int
) -> dict[str, Any]:
    """bench/original_design.py until its batches have written `expected_rows` rows."""
    db = f"bench_backlog_{name}"
    with psycopg.connect(admin_dsn(settings), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(db)))
        conn.execute(
            sql.SQL("create database {} owner {}").format(
                sql.Identifier(db), sql.Identifier(settings.postgres_user)
            )
        )
    dsn = db_dsn(settings, db)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(original_design.ORIGINAL_SCHEMA)
    env = consumer_env(settings, dsn, topic, workdir / f"ckpt-{name}") | {
        "ORIGINAL_TOPIC": topic,
        "ORIGINAL_JDBC_URL": (
            f"jdbc:postgresql://{settings.postgres_host}:{settings.postgres_port}/{db}"
        ),
        "ORIGINAL_REDIS_PREFIX": f"bench:{uuid.uuid4().hex[:8]}:original:",
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "REDIS_HOST": settings.redis_host,
        "REDIS_PORT": str(settings.redis_port),
    }
    redis_password = getattr(settings, "redis_password", None)  # once Redis requires one
    if redis_password is not None:
        env["REDIS_PASSWORD"] = redis_password.get_secret_value()
    log = workdir / f"{name}.log"
    started = time.time()
    written = 0
    ready = last_written = None
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own script, fixed arguments
            [sys.executable, str(ROOT / "bench" / "original_design.py")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        memory = MemorySampler(proc.pid).start()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        try:
            while written < expected_rows and time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SystemExit(f"original design exited ({proc.returncode}); see {log}")
                time.sleep(0.5)
                written = 0
                for line in log.read_text(errors="replace").splitlines():
                    parts = line.split()
                    if line.startswith("ORIGINAL session ready"):
                        ready = float(parts[3])
                    elif line.startswith("ORIGINAL batch") and int(parts[4]):
                        written += int(parts[4])
                        last_written = float(parts[8])
        finally:
            peaks = memory.stop()
            _stop_group(proc)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select count(*) from staging.raw_prices").fetchone()[0]  # type: ignore[index]
    drop_database(settings, db)
    if last_written is None or written < expected_rows:
        raise SystemExit(f"original design wrote {written}/{expected_rows} rows; see {log}")
    batch_lines = [ln for ln in log.read_text().splitlines() if ln.startswith("ORIGINAL batch")]
    return {
        "rows": rows,
        "wall_s": last_written - started,
        "startup_s": (ready - started) if ready else None,
        "processing_s": (last_written - ready) if ready else None,
        "eps_wall": rows / (last_written - started),
        "batches_with_rows": sum(1 for ln in batch_lines if int(ln.split()[4])),
        "log": str(log),
        **peaks,
    }


# ----------------------------------------------------------------------------- (e) the slot
def run_executor_path(*_: Any) -> dict[str, Any] | None:
    """The executor-side write path of issue 11: not built yet, so nothing runs here.

    The redesign fills this in: the same drain as run_ours with the executor path switched on,
    on the single- and the three-symbol topic.
    """
    return None


# ----------------------------------------------------------------------------- main
def _fmt(result: dict[str, Any]) -> str:
    parts = [f"{result['rows']:,} rows", f"wall {result['wall_s']:.1f} s"]
    if result.get("processing_s") is not None:
        parts.append(f"processing {result['processing_s']:.1f} s")
    parts.append(f"{result['eps_wall']:,.0f} events/s")
    if "peak_total_mb" in result:
        parts.append(
            f"peak RSS python {result['peak_python_mb']} MB + jvm {result['peak_jvm_mb']} MB"
        )
    return ", ".join(parts)


def first_batch_line(result: dict[str, Any]) -> str:
    """The first batch against the median of the other full batches, and Spark's own split."""
    first = result["first_batch"]
    return (
        f"first batch {first['s']:.2f} s (spark {first['spark_s']:.2f}, postgres "
        f"{first['postgres_s']:.2f}, ledger+state {first['ledger_state_s']:.2f}) vs median of "
        f"the others {result['other_batches_median_s']:.2f} s (spark "
        f"{result['other_batches_median_spark_s']:.2f}): extra "
        f"{result['first_batch_extra_s']:.2f} s; Spark's durations of batch 0 (ms) "
        f"{result['first_batch_progress_ms']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=backlog.DEFAULT_EVENTS)
    parser.add_argument("--memory-batches", default="50000,500000")
    parser.add_argument("--live-rate", type=int, default=1000)
    parser.add_argument("--live-seconds", type=int, default=60)
    parser.add_argument(
        "--skip", default="", help="comma list of: ceiling,copy,ours,original,memory,live,three"
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    settings = ConsumerSettings()
    workdir = Path(tempfile.mkdtemp(prefix="bench_backlog_"))
    results: dict[str, Any] = {
        "machine": describe_machine(),
        "events": args.events,
        "date": dt.datetime.now(UTC).isoformat(),
    }
    print(f"machine: {results['machine']}\nworkdir: {workdir}", flush=True)

    one = list(backlog.backlog_trades(args.events, backlog.SYMBOLS_ONE))
    three = (
        [] if "three" in skip else list(backlog.backlog_trades(args.events, backlog.SYMBOLS_THREE))
    )
    topics: dict[str, str] = {}
    tag = uuid.uuid4().hex[:6]
    try:
        for name, trades, produce in (
            ("ours_one", one, backlog.produce_ours),
            ("ours_three", three, backlog.produce_ours),
            ("original_one", one, backlog.produce_original),
            ("original_three", three, backlog.produce_original),
        ):
            if not trades:
                continue
            topics[name] = make_topic(settings, f"bench.backlog.{name}.{tag}")
            rate = produce(settings.kafka_bootstrap_servers, topics[name], trades)
            print(f"topic {topics[name]}: {len(trades):,} events at {rate:,.0f}/s", flush=True)

        if "ceiling" not in skip:
            for topic_name in ("ours_one", "original_one"):
                for mode in ("noop", "parse"):
                    r = run_noop(settings, topics[topic_name], workdir, mode)
                    results[f"ceiling_{mode}_{topic_name}"] = r
                    print(f"(a) ceiling {mode:5} {topic_name:14}: {_fmt(r)}", flush=True)
            r = run_noop(settings, topics["ours_one"], workdir, "parse", 200_000)
            results["ceiling_parse_ours_one_200k"] = r
            print(
                f"(a) engine's own batches of 200k (parse, ours_one): ms {r['batches_ms']}",
                flush=True,
            )
        if "copy" not in skip:
            db = fresh_database(settings, "bench_backlog_copy", BACKLOG_DAYS)
            rows = backlog_rows(one)
            elapsed = copy_rows(db_dsn(settings, db), rows)
            drop_database(settings, db)
            results["copy_eps"] = len(rows) / elapsed
            print(
                f"(b) COPY limit: {len(rows):,} rows in {elapsed:.1f} s = "
                f"{results['copy_eps']:,.0f} rows/s",
                flush=True,
            )
        if "ours" not in skip:
            for topic_name in ("ours_one", "ours_three"):
                if topic_name not in topics:
                    continue
                r = run_ours(settings, topics[topic_name], workdir, topic_name)
                results[f"ours_{topic_name}"] = r
                print(f"(c) ours {topic_name:10}: {_fmt(r)}; {r['batches']} batches", flush=True)
                if r.get("first_batch_extra_s") is not None:
                    print(f"    {first_batch_line(r)}", flush=True)
        if "original" not in skip:
            for topic_name, trades in (("original_one", one), ("original_three", three)):
                if topic_name not in topics:
                    continue
                r = run_original(settings, topics[topic_name], workdir, topic_name, len(trades))
                results[f"original_{topic_name}"] = r
                print(
                    f"(d) original {topic_name:14}: {_fmt(r)}; "
                    f"{r['batches_with_rows']} batches with rows",
                    flush=True,
                )
        executor = run_executor_path(settings, topics, workdir)
        print(
            "(e) executor path: "
            + ("not built yet (issue 11)" if executor is None else _fmt(executor)),
            flush=True,
        )
        if "memory" not in skip:
            for size in (int(s) for s in args.memory_batches.split(",") if s):
                r = run_ours(settings, topics["ours_one"], workdir, f"memory_{size}", size)
                results[f"memory_{size}"] = r
                print(
                    f"memory, batches of {size:,}: peak RSS python {r['peak_python_mb']} MB, "
                    f"jvm {r['peak_jvm_mb']} MB, together {r['peak_total_mb']} MB "
                    f"({r['batches']} batches)",
                    flush=True,
                )
                if r.get("first_batch_extra_s") is not None:
                    print(f"    {first_batch_line(r)}", flush=True)
        if "live" not in skip:
            results["live"] = live_scenario(
                settings, workdir, args.live_rate, args.live_seconds, "bench_backlog_live"
            )
            print(f"ours {describe_live(results['live'], args.live_rate)}", flush=True)
    finally:
        for topic in topics.values():
            delete_topic(settings, topic)
    print_summary(results)
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {workdir / 'results.json'}")


def print_summary(results: dict[str, Any]) -> None:
    """Ratios of the same run: ours and the original against each other and the ceiling."""
    print(f"summary on {results['machine']}")
    ceiling = results.get("ceiling_noop_ours_one", {}).get("wall_s")
    for symbols in ("one", "three"):
        ours = results.get(f"ours_ours_{symbols}", {}).get("wall_s")
        original = results.get(f"original_original_{symbols}", {}).get("wall_s")
        if ours and original:
            print(f"  {symbols} symbol(s): original wall / ours wall = {original / ours:.2f}")
        ours_p = results.get(f"ours_ours_{symbols}", {}).get("processing_s")
        original_p = results.get(f"original_original_{symbols}", {}).get("processing_s")
        if ours_p and original_p:
            print(f"  {symbols} symbol(s): original processing / ours = {original_p / ours_p:.2f}")
        if ours and ceiling:
            print(f"  {symbols} symbol(s): ceiling wall / ours wall = {ceiling / ours:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--noop-job":
        noop_job(sys.argv[2], int(sys.argv[3]))
    else:
        main()
