"""What each Spark 4 trigger design costs in latency, the engine alone (issue 11, live goal).

Not a test: a prototype measurement outside consumer_app; it prints figures and the machine.
    .venv/bin/python bench/bench_triggers.py [--rate 1000] [--seconds 60]

One Kafka topic (6 partitions, keyed by 12 symbols like ours) gets --rate events/s of our
contract's JSON; each trigger design runs in its own Spark process (local[*], or local[8] for
real-time mode, which needs a task slot per Kafka partition) from the latest offsets, and
measures for every record the delay from its Kafka timestamp (set by the producer) to the
moment the sink holds it, after a warm-up:
  processingTime 0   foreachBatch, the batch's rows collected to the driver (today's shape)
  processingTime 1s  the same on a fixed interval
  realTime           Spark 4.1+'s real-time mode: Kafka source, from_json projection, a Python
                     ForeachWriter receiving record by record on the executors (the only
                     sinks it allows are foreach and memory; no Window, no shuffle)
availableNow is not a live design (it drains what is there and stops), so it is not run here;
bench/bench_backlog.py uses it for the backlogs. No PostgreSQL write is included: these
figures are each design's floor, to which a write path adds its COPY and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_consumer import consumer_env, delete_topic, event, make_topic  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from consumer_app.config import ConsumerSettings  # noqa: E402

DESIGNS = {
    "processingTime 0": {"processingTime": "0 seconds"},
    "processingTime 1s": {"processingTime": "1 second"},
    "realTime": {"realTime": "30 seconds"},
}
STARTUP_GRACE_S = 40


class _LatencyWriter:
    """ForeachWriter for real-time mode: one latency per record, appended to a per-task file."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def open(self, partition_id: int, epoch_id: int) -> bool:
        self.path = Path(self.out_dir) / f"p{partition_id}-e{epoch_id}-{os.getpid()}.txt"
        self.handle = self.path.open("a")
        return True

    def process(self, row: Any) -> None:
        delay_ms = time.time() * 1000 - row.timestamp.timestamp() * 1000
        self.handle.write(f"{row.timestamp.timestamp():.3f} {delay_ms:.1f}\n")
        self.handle.flush()

    def close(self, error: BaseException | None) -> None:
        self.handle.close()


def trigger_job(design: str, out_dir: str) -> None:
    """Child process: one trigger design on the topic, latencies into out_dir."""
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql import functions as F  # noqa: N812

    from consumer_app.schema import EVENT_SCHEMA

    settings = ConsumerSettings()
    os.environ["PYSPARK_PYTHON"] = sys.executable
    master = "local[8]" if design == "realTime" else settings.spark_master
    spark = (
        SparkSession.builder.master(master)
        .appName("bench_triggers")
        .config("spark.jars", settings.spark_jars)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    events = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", settings.kafka_topic_prices)
        .option("startingOffsets", "latest")
        .option("kafka.fetch.max.wait.ms", "50")
        .load()
        .select(
            "timestamp",
            F.from_json(F.col("value").cast("string"), EVENT_SCHEMA).alias("e"),
        )
        .select("timestamp", "e.symbol", "e.price")
    )
    writer = events.writeStream.option(
        "checkpointLocation", str(Path(out_dir) / "checkpoint")
    ).trigger(**DESIGNS[design])
    if design == "realTime":
        query = writer.outputMode("update").foreach(_LatencyWriter(out_dir)).start()
    else:

        def each_batch(batch: DataFrame, batch_id: int) -> None:
            stamps = batch.select("timestamp").toArrow().column(0).to_pylist()
            now_ms = time.time() * 1000
            with (Path(out_dir) / f"batch-{batch_id}.txt").open("w") as handle:
                for stamp in stamps:
                    at = stamp.timestamp()
                    handle.write(f"{at:.3f} {now_ms - at * 1000:.1f}\n")

        query = writer.foreachBatch(each_batch).start()
    print("TRIGGER started", flush=True)
    query.awaitTermination()


def run_design(
    settings: ConsumerSettings, topic: str, design: str, rate: int, seconds: int, warmup: int
) -> dict[str, Any]:
    from confluent_kafka import Producer

    out_dir = Path(tempfile.mkdtemp(prefix="bench_triggers_"))
    env = consumer_env(settings, "dbname=unused", topic, out_dir / "unused")
    log = out_dir / "job.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - this script, fixed arguments
            [sys.executable, str(Path(__file__)), "--job", design, str(out_dir)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            while "TRIGGER started" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{design}: the job did not start; see {log}")
                time.sleep(0.5)
            time.sleep(STARTUP_GRACE_S)  # first (empty) batches, tasks scheduled
            producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
            start = time.monotonic()
            measured_from = time.time() + warmup
            sent = 0
            while time.monotonic() - start < warmup + seconds:
                target = int((time.monotonic() - start) * rate)
                while sent < target:
                    producer.produce(
                        topic, key=f"SYM{sent % 12:02d}USDT".encode(), value=event(sent)
                    )
                    sent += 1
                producer.poll(0)
                time.sleep(0.001)
            producer.flush(30)
            time.sleep(10)  # the last records reach the sink
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    delays = []
    for path in out_dir.glob("*.txt"):
        for line in path.read_text().splitlines():
            at, delay = line.split()
            if float(at) >= measured_from:
                delays.append(float(delay))
    if not delays:
        raise SystemExit(f"{design}: no record reached the sink; see {log}")
    delays.sort()
    return {
        "sent": sent,
        "measured": len(delays),
        "p50_ms": statistics.median(delays),
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))],
        "log": str(log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--designs", default=",".join(DESIGNS))
    args = parser.parse_args()
    settings = ConsumerSettings()
    print(f"machine: {describe_machine()}", flush=True)
    results: dict[str, Any] = {}
    for design in args.designs.split(","):
        topic = make_topic(settings, f"bench.triggers.{uuid.uuid4().hex[:8]}")
        try:
            results[design] = r = run_design(
                settings, topic, design, args.rate, args.seconds, args.warmup
            )
        finally:
            delete_topic(settings, topic)
        print(
            f"{design:18}: {r['measured']:,} of {r['sent']:,} records measured, Kafka timestamp "
            f"-> sink p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms",
            flush=True,
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--job":
        trigger_job(sys.argv[2], sys.argv[3])
    else:
        main()
