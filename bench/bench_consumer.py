"""Benchmark of the consumer (issue 4): the COPY limit and this consumer, on a 5 M backlog and live.

Not a test: run it once, it prints figures and the machine.
    .venv/bin/python bench/bench_consumer.py [--events 5000000] [--live-seconds 60]

Everything runs co-located against the local stack (`make services`): Kafka, Redis,
PostgreSQL. Each scenario gets a fresh database (created through the superuser
connection, like tests/conftest.py) and a fresh checkpoint.
  (a) limit     plain Python psycopg binary COPY of the same rows into staging.raw_prices
  (b) consumer  `python -m consumer_app` draining a topic of N trade events (availableNow):
                sustained events/s between the first and the last commit; then a live
                run at --live-rate events/s for event-to-commit latency p50/p99
The original project's design, reproduced faithfully (its own schema, producer and job), is
measured side by side with this consumer by bench/bench_backlog.py (issue 11).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine  # noqa: E402
from consumer_app.config import ConsumerSettings  # noqa: E402
from consumer_app.schema import RAW_PRICES_COLUMNS, RAW_PRICES_PG_TYPES  # noqa: E402

WARMUP_S = 30
SYMBOLS = [f"SYM{i:02d}USDT" for i in range(12)]
BASE_US = 1_741_046_401_271_497
PRICES = [
    line.split(",")[7]
    for line in (ROOT / "tests/fixtures/trxusdt-trade-2025-03-04.csv").read_text().splitlines()[1:]
]


def event(i: int, received_at_us: int | None = None) -> bytes:
    symbol = SYMBOLS[i % len(SYMBOLS)]
    time_us = BASE_US + i * 7  # ~140k events per simulated second, all on 2025-03-04
    return orjson.dumps(
        {
            "symbol": symbol,
            "stream": "trade",
            "event_time_us": time_us + 300,
            "trade_time_us": time_us,
            "sequence_id": i,
            "price": PRICES[i % len(PRICES)],
            "quantity": "12.5",
            "is_buyer_maker": bool(i & 1),
            "received_at_us": received_at_us if received_at_us is not None else time_us + 900,
            "source": "ws",
        }
    )


# ----------------------------------------------------------------------------- services
def admin_dsn(settings: ConsumerSettings) -> str:
    dsn = os.environ.get("POSTGRES_ADMIN_DSN", "")
    if dsn:
        return dsn
    return psycopg.conninfo.make_conninfo(
        host=str(ROOT / ".local/run/postgres"),
        port=settings.postgres_port,
        dbname="postgres",
        user="postgres",
    )


def fresh_database(
    settings: ConsumerSettings, name: str, days: tuple[str, str] = ("2025-03-04", "2025-03-05")
) -> str:
    """A new database `name` with init.sql applied and day partitions for `days` (first, last)."""
    admin = admin_dsn(settings)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )
        conn.execute(
            sql.SQL("create database {} owner {}").format(
                sql.Identifier(name), sql.Identifier(settings.postgres_user)
            )
        )
    with psycopg.connect(
        psycopg.conninfo.make_conninfo(admin, dbname=name), autocommit=True
    ) as conn:
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(settings.postgres_user)))
        conn.execute((ROOT / "init.sql").read_text())
        conn.execute("call staging.create_raw_prices_partitions(%s, %s)", days)
    return name


def drop_database(settings: ConsumerSettings, name: str) -> None:
    with psycopg.connect(admin_dsn(settings), autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


def db_dsn(settings: ConsumerSettings, name: str) -> str:
    return psycopg.conninfo.make_conninfo(settings.postgres_conninfo, dbname=name)


def make_topic(settings: ConsumerSettings, name: str) -> str:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(name, 6, 1)])[name].result(30)
    return name


def delete_topic(settings: ConsumerSettings, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for future in admin.delete_topics([name]).values():
        future.result(30)


def fill_topic(settings: ConsumerSettings, topic: str, count: int) -> float:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    started = time.monotonic()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, key=SYMBOLS[i % len(SYMBOLS)].encode(), value=event(i))
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    return count / (time.monotonic() - started)


# ----------------------------------------------------------------------------- (a) the limit
def copy_limit(dsn: str, count: int) -> float:
    """Binary COPY of the same rows (same columns and types as the consumer writes)."""
    utc = dt.UTC
    epoch = dt.datetime(1970, 1, 1, tzinfo=utc)
    prices = [Decimal(p) for p in PRICES]
    rows = []
    previous: dict[str, Decimal] = {}
    for i in range(count):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        time_us = BASE_US + i * 7
        price = prices[i % len(prices)]
        prev = previous.get(symbol)
        change = None if prev is None else price - prev
        pct = (
            None
            if prev is None or change is None
            else (change * 100 / prev).quantize(Decimal("1e-8"))
        )
        previous[symbol] = price
        at = epoch + dt.timedelta(microseconds=time_us)
        rows.append(
            (
                symbol,
                "trade",
                i,
                at,
                at,
                price,
                Decimal("12.5"),
                bool(i & 1),
                prev,
                change,
                pct,
                at,
                "ws",
            )
        )
    return count / copy_rows(dsn, rows)


def copy_rows(dsn: str, rows: list[tuple[Any, ...]]) -> float:
    """Binary COPY of `rows` (RAW_PRICES_COLUMNS order) in one transaction; seconds taken."""
    with psycopg.connect(dsn) as conn:
        started = time.monotonic()
        with conn.cursor().copy(
            sql.SQL("copy staging.raw_prices ({}) from stdin (format binary)").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in RAW_PRICES_COLUMNS)
            )
        ) as copy:
            copy.set_types(list(RAW_PRICES_PG_TYPES))
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return time.monotonic() - started


# ----------------------------------------------------------------------------- (b) this consumer
def consumer_env(
    settings: ConsumerSettings, dsn: str, topic: str, checkpoint: Path, **extra: str
) -> dict[str, str]:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    env = dict(os.environ) | {
        "POSTGRES_HOST": settings.postgres_host,
        "POSTGRES_PORT": str(settings.postgres_port),
        "POSTGRES_DB": str(params["dbname"]),
        "POSTGRES_USER": settings.postgres_user,
        "POSTGRES_PASSWORD": settings.postgres_password.get_secret_value(),
        "KAFKA_TOPIC_PRICES": topic,
        "KAFKA_TOPIC_GAPS": topic + ".nogaps",
        "SPARK_CHECKPOINT_DIR": str(checkpoint),
        "CONSUMER_METRICS_PORT": "0",
        "CONSUMER_REDIS_PREFIX": f"bench:{uuid.uuid4().hex[:8]}:last_price",
        "SPARK_MASTER": "local[*]",
        "SPARK_JARS": settings.spark_jars
        or ",".join(sorted(str(p) for p in (ROOT / ".local/jars/spark").glob("*.jar"))),
    }
    return env | extra


def run_consumer_backlog(
    settings: ConsumerSettings, dsn: str, topic: str, workdir: Path, write_mode: str
) -> dict[str, Any]:
    checkpoint = workdir / f"ckpt-{write_mode}"
    env = consumer_env(
        settings,
        dsn,
        topic,
        checkpoint,
        SPARK_TRIGGER_INTERVAL="availableNow",
        CONSUMER_WRITE_MODE=write_mode,
    )
    log = workdir / f"consumer-{write_mode}.log"
    started = time.monotonic()
    with log.open("wb") as out:
        code = subprocess.call(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "consumer_app"],
            cwd=ROOT,
            env=env,  # noqa: S603
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wall = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"consumer failed ({code}); see {log}")
    with psycopg.connect(dsn) as conn:
        batches = conn.execute(
            "select batch_id, row_count, committed_at"
            " from staging.consumer_batches order by batch_id"
        ).fetchall()
        rows = conn.execute("select count(*) from staging.raw_prices").fetchone()[0]  # type: ignore[index]
    durations = [
        float(line.split(" in ")[1].split("s")[0])
        for line in log.read_text().splitlines()
        if "consumer_app.job: batch " in line and " in " in line
    ]
    first, last = batches[0], batches[-1]
    span = (last[2] - first[2]).total_seconds()
    sustained = (rows - first[1]) / span if span > 0 else float("nan")
    return {
        "rows": rows,
        "batches": len(batches),
        "wall_s": wall,
        "sustained_eps": sustained,
        "batch_s_median": sorted(durations)[len(durations) // 2] if durations else None,
        "log": str(log),
    }


def run_consumer_live(
    settings: ConsumerSettings,
    dsn: str,
    workdir: Path,
    rate: int,
    seconds: int,
    module: list[str],
    name: str,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Produce at `rate` events/s with received_at = now while the job runs; latency from the DB."""
    topic = make_topic(settings, f"bench.live.{name}.{uuid.uuid4().hex[:6]}")
    checkpoint = workdir / f"ckpt-live-{name}"
    env = consumer_env(settings, dsn, topic, checkpoint, **(extra_env or {}))
    log = workdir / f"live-{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, *module],
            cwd=ROOT,
            env=env,  # noqa: S603
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(45)  # JVM + first (empty) batches
            producer = Producer(
                {"bootstrap.servers": settings.kafka_bootstrap_servers, "linger.ms": 0}
            )
            start = time.monotonic()
            # the first WARMUP_S of traffic warms the JIT and is left out of the latency
            measured_from_us = time.time_ns() // 1000 + WARMUP_S * 1_000_000
            sent = 0
            while time.monotonic() - start < seconds + WARMUP_S:
                target = int((time.monotonic() - start) * rate)
                while sent < target:
                    now_us = time.time_ns() // 1000
                    producer.produce(
                        topic,
                        key=SYMBOLS[sent % len(SYMBOLS)].encode(),
                        value=event(10_000_000 + sent, received_at_us=now_us),
                    )
                    sent += 1
                producer.poll(0)
                time.sleep(0.001)
            producer.flush(30)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with psycopg.connect(dsn) as conn:
                    done = conn.execute("select count(*) from staging.raw_prices").fetchone()[0]  # type: ignore[index]
                if done >= sent:
                    break
                time.sleep(1)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    status_file = checkpoint / "status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    delete_topic(settings, topic)
    p50, p99 = latency_from_db(dsn, measured_from_us)
    return {
        "sent": sent,
        "rows": done,
        "p50_s": p50,
        "p99_s": p99,
        **batch_breakdown(dsn, measured_from_us),
        "status_p50_s_all_rows": status.get("latency_p50_s"),
        "status_p99_s_all_rows": status.get("latency_p99_s"),
        "log": str(log),
    }


def live_scenario(
    settings: ConsumerSettings, workdir: Path, rate: int, seconds: int, database: str
) -> dict[str, Any]:
    """`python -m consumer_app` live at `rate` events/s into a fresh database `database`."""
    db = fresh_database(settings, database)
    try:
        return run_consumer_live(
            settings,
            db_dsn(settings, db),
            workdir,
            rate,
            seconds,
            ["-m", "consumer_app"],
            "consumer",
        )
    finally:
        drop_database(settings, db)


def describe_live(live: dict[str, Any], rate: int) -> str:
    """One line: rows, event-to-commit p50/p99 and the per-batch medians of a live run."""
    return (
        f"live at {rate}/s: {live['rows']}/{live['sent']} rows, event-to-commit "
        f"p50 {live['p50_s']} s, p99 {live['p99_s']} s; per batch (medians): "
        f"{live['batch_rows_median']} rows, cycle {live['cycle_ms_median']} ms, "
        f"newest event -> transaction {live['fixed_ms_median']} ms"
    )


def latency_from_db(dsn: str, measured_from_us: int) -> tuple[float, float]:
    """p50/p99 of ingested_at - received_at over rows received after the warm-up.

    ingested_at is now() of the batch's transaction, i.e. its start: it misses the
    COPY + COMMIT time (tens of ms at 1,000 events/s) for both designs alike.
    """
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select percentile_cont(array[0.5, 0.99]) within group"
            " (order by extract(epoch from ingested_at - received_at)) from staging.raw_prices"
            " where received_at >= to_timestamp(%s / 1e6)",
            (measured_from_us,),
        ).fetchone()
    if row is None:
        raise SystemExit("no latency rows")
    return float(row[0][0]), float(row[0][1])


def batch_breakdown(dsn: str, measured_from_us: int) -> dict[str, float | None]:
    """Where the live latency goes, per batch (rows of one batch share its `ingested_at`).

    cycle: from one batch's transaction to the next one's; fixed: from the newest event of
    a batch to its transaction. An event's latency is about fixed + its wait for the batch
    to start (half a cycle on average), so p50 ~ fixed + cycle / 2.
    """
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "with b as (select ingested_at, count(*) as n, max(received_at) as newest"
            "  from staging.raw_prices where received_at >= to_timestamp(%s / 1e6)"
            "  group by ingested_at)"
            " select percentile_cont(0.5) within group (order by n),"
            "  percentile_cont(0.5) within group (order by cycle_ms),"
            "  percentile_cont(0.5) within group (order by fixed_ms)"
            " from (select n,"
            "  extract(epoch from ingested_at - lag(ingested_at) over (order by ingested_at))"
            "   * 1000 as cycle_ms,"
            "  extract(epoch from ingested_at - newest) * 1000 as fixed_ms from b) as per_batch",
            (measured_from_us,),
        ).fetchone()
    if row is None:
        return {"batch_rows_median": None, "cycle_ms_median": None, "fixed_ms_median": None}
    rows, cycle, fixed = (None if v is None else round(float(v), 1) for v in row)
    return {"batch_rows_median": rows, "cycle_ms_median": cycle, "fixed_ms_median": fixed}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--live-rate", type=int, default=1000)
    parser.add_argument("--live-seconds", type=int, default=60)
    parser.add_argument("--skip", default="", help="comma list of: limit,consumer,merge,live")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    settings = ConsumerSettings()
    workdir = Path(tempfile.mkdtemp(prefix="bench_consumer_"))
    results: dict[str, Any] = {
        "machine": describe_machine(),
        "events": args.events,
        "date": dt.datetime.now(dt.UTC).isoformat(),
    }
    print(f"machine: {results['machine']}\nworkdir: {workdir}", flush=True)

    topic = make_topic(settings, f"bench.consumer.{uuid.uuid4().hex[:8]}")
    rate = fill_topic(settings, topic, args.events)
    print(f"topic {topic}: {args.events:,} events produced at {rate:,.0f}/s", flush=True)
    try:
        if "limit" not in skip:
            db = fresh_database(settings, "bench_consumer_limit")
            results["limit_eps"] = copy_limit(db_dsn(settings, db), args.events)
            drop_database(settings, db)
            print(f"(a) limit: plain binary COPY {results['limit_eps']:,.0f} rows/s", flush=True)
        if "consumer" not in skip:
            db = fresh_database(settings, "bench_consumer_fast")
            results["consumer"] = run_consumer_backlog(
                settings, db_dsn(settings, db), topic, workdir, "optimistic"
            )
            drop_database(settings, db)
            c = results["consumer"]
            print(
                f"(b) consumer: {c['rows']:,} rows in {c['batches']} batches, "
                f"sustained {c['sustained_eps']:,.0f} "
                f"events/s, median batch {c['batch_s_median']} s, wall {c['wall_s']:.0f} s",
                flush=True,
            )
        if "merge" not in skip:
            db = fresh_database(settings, "bench_consumer_merge")
            results["consumer_merge"] = run_consumer_backlog(
                settings, db_dsn(settings, db), topic, workdir, "merge"
            )
            drop_database(settings, db)
            m = results["consumer_merge"]
            print(
                "(b') consumer, always temp table + ON CONFLICT: "
                f"sustained {m['sustained_eps']:,.0f} events/s, "
                f"median batch {m['batch_s_median']} s",
                flush=True,
            )
        if "live" not in skip:
            results["live"] = live_scenario(
                settings, workdir, args.live_rate, args.live_seconds, "bench_consumer_live"
            )
            print(f"(b) consumer {describe_live(results['live'], args.live_rate)}", flush=True)
    finally:
        delete_topic(settings, topic)
    print_summary(results)
    print(json.dumps(results, indent=2, default=str))
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    shutil.rmtree(workdir / "ckpt-optimistic", ignore_errors=True)


def print_summary(results: dict[str, Any]) -> None:
    """The headline figures and their ratios."""
    limit = results.get("limit_eps")
    fast = results.get("consumer", {}).get("sustained_eps")
    merge = results.get("consumer_merge", {}).get("sustained_eps")
    print(f"summary on {results['machine']}")
    if limit and fast:
        print(f"  consumer / COPY limit       = {fast / limit:.2f}")
    if fast and merge:
        print(f"  merge mode / optimistic     = {merge / fast:.2f}")


if __name__ == "__main__":
    main()
