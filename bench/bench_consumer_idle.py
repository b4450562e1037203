"""What an idle consumer costs: CPU of its JVM and of the Kafka broker while no event arrives.

Not a test: run it once, it prints figures and the machine.
    .venv/bin/python bench/bench_consumer_idle.py [--seconds 30] [--settle 60] [--rounds 1]

Against the local stack (`make services`). For each scenario `python -m consumer_app` runs
on two empty topics (prices and gaps) of a fresh database; after --settle seconds (JVM
start, first empty batches) the CPU time of the consumer's process tree and of the broker
is read from /proc over --seconds. The broker alone (no consumer) is measured first.
  prices only         CONSUMER_SINK_GAPS=false, the prices query as fast as possible
  gaps at 0           both queries as fast as possible (CONSUMER_GAPS_TRIGGER_INTERVAL empty)
  gaps at 5 s         the defaults
  prices at 1 s       SPARK_TRIGGER_INTERVAL="1 second", gaps query off
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_consumer import (  # noqa: E402
    consumer_env,
    db_dsn,
    delete_topic,
    drop_database,
    fresh_database,
    make_topic,
)
from bench.machine import describe_machine  # noqa: E402
from consumer_app.config import ConsumerSettings  # noqa: E402

SCENARIOS: list[tuple[str, dict[str, str]]] = [
    ("prices only", {"CONSUMER_SINK_GAPS": "false"}),
    ("gaps at 0", {"CONSUMER_GAPS_TRIGGER_INTERVAL": ""}),
    ("gaps at 5 s (defaults)", {}),
    ("prices at 1 s", {"CONSUMER_SINK_GAPS": "false", "SPARK_TRIGGER_INTERVAL": "1 second"}),
]


def broker() -> int:
    pid_file = ROOT / ".local" / "run" / "kafka.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0
    if not pid or not Path(f"/proc/{pid}").exists():
        raise SystemExit(f"no Kafka broker ({pid_file}): start it with `make services`")
    return pid


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """pid and every process below it (the consumer's Python and its Spark JVM)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes (utime and stime, fields 14 and 15)."""
    ticks = 0
    for pid in pids:
        if (fields := _stat(pid)) is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(seconds: float, consumer: int | None, kafka: int) -> tuple[float, float]:
    """CPU seconds of (the consumer's process tree, the broker) over `seconds` of wall time."""
    tree = [] if consumer is None else descendants(consumer)
    before = cpu_seconds(tree), cpu_seconds([kafka])
    time.sleep(seconds)
    after = cpu_seconds(tree), cpu_seconds([kafka])
    return after[0] - before[0], after[1] - before[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--settle", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=1, help="run the scenarios this many times")
    args = parser.parse_args()
    settings = ConsumerSettings()
    kafka = broker()
    print(f"machine: {describe_machine()}", flush=True)
    _, alone = measure(args.seconds, None, kafka)
    print(f"broker alone: {alone:.2f} s CPU in {args.seconds:.0f} s", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_idle_"))
    for name, extra in SCENARIOS * args.rounds:
        topic = make_topic(settings, f"bench.idle.{uuid.uuid4().hex[:6]}")
        gaps = make_topic(settings, f"{topic}.gaps")
        db = fresh_database(settings, "bench_consumer_idle")
        env = (
            consumer_env(
                settings,
                db_dsn(settings, db),
                topic,
                workdir / f"ckpt-{len(name)}-{uuid.uuid4().hex[:4]}",
            )
            | {"KAFKA_TOPIC_GAPS": gaps}
            | extra
        )
        log = workdir / f"idle-{name.replace(' ', '_')}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
                [sys.executable, "-m", "consumer_app"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                time.sleep(args.settle)
                if proc.poll() is not None:
                    raise SystemExit(f"consumer exited ({proc.returncode}); see {log}")
                jvm_and_python, broker_cpu = measure(args.seconds, proc.pid, kafka)
            finally:
                proc.terminate()
                proc.wait(60)
        drop_database(settings, db)
        delete_topic(settings, gaps)
        delete_topic(settings, topic)
        print(
            f"{name:24s} consumer {jvm_and_python:6.2f} s CPU, broker {broker_cpu:6.2f} s CPU"
            f" in {args.seconds:.0f} s ({100 * jvm_and_python / args.seconds:.0f} % and"
            f" {100 * broker_cpu / args.seconds:.0f} % of a core)",
            flush=True,
        )


if __name__ == "__main__":
    main()
