"""Producer reliability drills (issue 12): each failure a live feed meets, on real services.

Every drill runs the replay server and the long-running producer (`python -m producer_app`)
as processes, today's consumer (`python -m consumer_app`) on the same topics, the real Kafka,
Redis and PostgreSQL; it injects one failure and ends with the recording's 10,000 TRXUSDT
trades in `staging.raw_prices` exactly once (count and checksum against the recording, read
here with the csv module), with no manual step. Timings and results: docs/reliability.md,
"Producer".
"""

from __future__ import annotations

import gzip
import json
import signal
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from drill import (
    AppProcess,
    assert_landed_once,
    combined_recording,
    free_port,
    frozen,
    metric,
    own_kafka_pid,
    producer_env,
    raw_count,
    replay_server,
    trades_of,
    wait_until,
)
from test_consumer_pipeline import ConsumerRun, Trade, consumer_env, load_recording
from test_producer_faults import read_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "trxusdt-trade-2025-03-04.jsonl.gz"


@pytest.fixture(scope="module")
def payloads() -> list[dict[str, Any]]:
    with gzip.open(FIXTURE, "rt") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture
def recording(payloads: list[dict[str, Any]], tmp_path: Path) -> Path:
    return combined_recording(payloads, tmp_path / "trx.jsonl")


@pytest.fixture(scope="module")
def trades() -> list[Trade]:
    return load_recording()


@pytest.fixture
def topics(make_topic: Callable[..., str]) -> dict[str, str]:
    return {p: make_topic(6 if p == "prices" else 1) for p in ("prices", "dlq", "gaps", "resume")}


@pytest.fixture
def consumer(
    pg_dsn: str,
    redis_url: str,
    redis_prefix: str,
    kafka_bootstrap: str,
    spark_jars: str,
    topics: dict[str, str],
    tmp_path: Path,
) -> Iterator[ConsumerRun]:
    """Today's consumer on the drill's prices and gaps topics (not started yet)."""
    env = consumer_env(
        dsn=pg_dsn,
        redis_url=redis_url,
        prefix=redis_prefix,
        bootstrap=kafka_bootstrap,
        topic=topics["prices"],
        jars=spark_jars,
        checkpoint=tmp_path / "checkpoint",
        max_offsets=5_000,
    )
    env["KAFKA_TOPIC_GAPS"] = topics["gaps"]
    run = ConsumerRun(env, tmp_path / "consumer.log")
    yield run
    run.stop()


@pytest.fixture
def processes() -> Iterator[list[AppProcess]]:
    started: list[AppProcess] = []
    yield started
    for process in reversed(started):
        process.kill()


def _gaps(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(value) for _, value in read_topic(bootstrap, topic)]


def _finish(consumer: ConsumerRun) -> None:
    """Stop the running consumer, then drain what is left with availableNow (its checkpoint)."""
    consumer.stop()
    consumer.run_to_end()


def test_broker_frozen_longer_than_the_delivery_timeout(
    kafka_bootstrap: str,
    topics: dict[str, str],
    consumer: ConsumerRun,
    processes: list[AppProcess],
    pg_dsn: str,
    trades: list[Trade],
    recording: Path,
    tmp_path: Path,
) -> None:
    """Item 1: SIGSTOP the broker for 25 s with a 10 s delivery timeout, mid-replay."""
    broker = own_kafka_pid(kafka_bootstrap)
    replay_port, metrics_port = free_port(), free_port()
    server = replay_server(recording, replay_port, tmp_path / "replay.log", "100")
    processes.append(server)
    env = producer_env(
        kafka_bootstrap,
        topics,
        replay_port,
        metrics_port,
        BINANCE_SYMBOLS="TRXUSDT",
        PRODUCER_DELIVERY_TIMEOUT_S="10",
    )
    producer = AppProcess(["-m", "producer_app"], env, tmp_path / "producer.log").start()
    processes.append(producer)
    consumer.start()
    frames = "producer_frames_received_total"
    wait_until(lambda: metric(metrics_port, frames) >= 1500, 90, "1500 frames", producer)
    started = time.monotonic()
    with frozen(broker) as freeze:
        # Long enough for queued trades to pass the 10 s delivery timeout, short enough for
        # the consumer's own Kafka timeouts (~60 s; riding those out is the consumer's part).
        while time.monotonic() - started < 25:
            assert producer.running, producer.tail()
            time.sleep(0.5)
        frozen_s = freeze.thaw()
    print(f"broker frozen {frozen_s:.1f} s")
    # The replay (10,000 trades at 100x, ~29 s) ends; everything must end acknowledged.
    acked = "producer_events_produced_total"
    reached = wait_until(
        lambda: metric(metrics_port, acked) >= len(trades),
        150,
        "every trade acknowledged",
        producer,
        fail=False,
    )
    failures = sum(
        metric(metrics_port, "producer_delivery_failures_total", f'topic="{t}"')
        for t in topics.values()
    )
    print(f"acked {metric(metrics_port, acked):.0f}, delivery failures {failures:.0f}")
    assert failures > 0, "the freeze did not outlast the delivery timeout: the drill proved nothing"
    code = producer.terminate()
    _finish(consumer)
    count, digest = assert_landed_once(pg_dsn, trades)
    print(f"raw_prices: {count} rows, checksum {digest}")
    assert reached and code == 0, producer.tail()
    gaps = _gaps(kafka_bootstrap, topics["gaps"])
    assert any("delivery" in g["reason"] for g in gaps), gaps
    with psycopg.connect(pg_dsn) as conn:
        unfilled = conn.execute("select count(*) from analytics.unfilled_gaps").fetchone()
    assert unfilled == (0,)


def _producer(env: dict[str, str], tmp_path: Path, name: str = "producer") -> AppProcess:
    return AppProcess(["-m", "producer_app"], env, tmp_path / f"{name}.log").start()


def _wait_rows(dsn: str, count: int, timeout_s: float, *watched: AppProcess) -> None:
    wait_until(lambda: raw_count(dsn) >= count, timeout_s, f"{count} rows", *watched, fail=False)


def _trade_ids_in(bootstrap: str, topic: str) -> set[int]:
    return {int(json.loads(value)["sequence_id"]) for _, value in read_topic(bootstrap, topic)}


def _wait_produced(
    bootstrap: str, topic: str, ids: set[int], timeout_s: float, *watched: AppProcess
) -> None:
    """Until every trade id is in the prices topic (then one consumer run drains it: a Spark
    start saved where the drill is about the producer, not about a consumer running along)."""
    wait_until(
        lambda: ids <= _trade_ids_in(bootstrap, topic),
        timeout_s,
        f"{len(ids)} trades in {topic}",
        *watched,
    )


def test_failed_rest_fill_stays_unfilled_and_is_retried(
    kafka_bootstrap: str,
    topics: dict[str, str],
    consumer: ConsumerRun,
    processes: list[AppProcess],
    pg_dsn: str,
    trades: list[Trade],
    recording: Path,
    tmp_path: Path,
) -> None:
    """Item 2: the first 8 REST calls fail (503) while two gaps of TRXUSDT wait for a fill."""
    replay_port, metrics_port = free_port(), free_port()
    # 200 trades happen while the client is away, 100 more are never sent on the WebSocket.
    faults = ["--drop-after", "3000", "--drop-skip", "200", "--skip-frames", "6000:6100"]
    server = replay_server(
        recording, replay_port, tmp_path / "replay.log", "200", *faults, "--rest-fail-first", "8"
    )
    processes.append(server)
    env = producer_env(
        kafka_bootstrap,
        topics,
        replay_port,
        metrics_port,
        BINANCE_SYMBOLS="TRXUSDT",
        PRODUCER_GAP_RETRY_BASE_S="1",
    )
    producer = _producer(env, tmp_path)
    processes.append(producer)
    _wait_produced(kafka_bootstrap, topics["prices"], {t.trade_id for t in trades}, 240, producer)
    failures = metric(metrics_port, "producer_gap_fill_failures_total", 'symbol="TRXUSDT"')
    print(f"REST fill failures: {failures:.0f}")
    assert producer.terminate() == 0, producer.tail()
    consumer.run_to_end()
    count, digest = assert_landed_once(pg_dsn, trades)
    print(f"raw_prices: {count} rows, checksum {digest}")
    reports = _gaps(kafka_bootstrap, topics["gaps"])
    print([(g["first_missing_id"], g["status"], g["filled_count"]) for g in reports])
    assert failures >= 1
    assert not any(g["status"] == "filled" and "REST failed" in g["reason"] for g in reports)
    assert any(g["status"] == "unfilled" and "REST failed" in g["reason"] for g in reports)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "select first_missing_id, filled_count, unfilled_count, status"
            " from staging.feed_gaps order by first_missing_id"
        ).fetchall()
        unfilled = conn.execute("select count(*) from analytics.unfilled_gaps").fetchone()
    ids = [t.trade_id for t in trades]
    assert rows == [(ids[3000], 200, 0, "filled"), (ids[6000], 100, 0, "filled")]
    assert unfilled == (0,)


def test_out_of_range_times_are_dead_lettered(
    kafka_bootstrap: str,
    topics: dict[str, str],
    consumer: ConsumerRun,
    processes: list[AppProcess],
    pg_dsn: str,
    redis_url: str,
    trades: list[Trade],
    payloads: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    """Item 5 (producer half): a trade two days ahead and one in year 5107 end in the DLQ."""
    last = payloads[-1]
    ahead_us = time.time_ns() // 1000 + 2 * 86_400_000_000
    far_us = 99_000_000_000_000_000  # µs by magnitude: year 5107
    bad = [
        last | {"t": last["t"] + 1, "E": ahead_us, "T": ahead_us},
        last | {"t": last["t"] + 2, "E": far_us, "T": far_us},
    ]
    recording = combined_recording([*payloads, *bad], tmp_path / "trx-bad-times.jsonl")
    replay_port, metrics_port = free_port(), free_port()
    processes.append(replay_server(recording, replay_port, tmp_path / "replay.log", "max"))
    env = producer_env(
        kafka_bootstrap, topics, replay_port, metrics_port, BINANCE_SYMBOLS="TRXUSDT"
    )
    producer = _producer(env, tmp_path)
    processes.append(producer)
    _wait_produced(kafka_bootstrap, topics["prices"], {t.trade_id for t in trades}, 240, producer)
    wait_until(lambda: len(read_topic(kafka_bootstrap, topics["dlq"])) >= 2, 30, "2 dead letters")
    assert producer.terminate() == 0, producer.tail()
    consumer.run_to_end()
    count, digest = assert_landed_once(pg_dsn, trades)
    print(f"raw_prices: {count} rows, checksum {digest}")
    dead = [json.loads(v) for _, v in read_topic(kafka_bootstrap, topics["dlq"])]
    assert [d["reason"].split(":")[0] for d in dead] == ["time_out_of_range"] * 2, dead
    assert [json.loads(d["raw"])["data"]["t"] for d in dead] == [b["t"] for b in bad]
    with psycopg.connect(pg_dsn) as conn:
        years = [
            int(name[len("raw_prices_p") :][:4])
            for (name,) in conn.execute(
                "select c.relname from pg_inherits as i join pg_class as c on c.oid = i.inhrelid"
                " where i.inhparent = 'staging.raw_prices'::regclass"
            )
        ]
    assert max(years) < 2100, sorted(years)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        last_price = client.hget(consumer.env["CONSUMER_REDIS_PREFIX"], "TRXUSDT|trade")
    finally:
        client.close()
    newest = max(trades, key=lambda t: (t.trade_time_us, t.trade_id))
    assert last_price is not None and Decimal(str(last_price).split("|")[0]) == Decimal(
        newest.price
    )


def test_quiet_symbol_keeps_its_resume_point_beside_a_busy_one(
    kafka_bootstrap: str,
    topics: dict[str, str],
    make_topic: Callable[..., str],
    consumer: ConsumerRun,
    processes: list[AppProcess],
    pg_dsn: str,
    payloads: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    """Item 7: busy TRXUSDT and rare BTCUSDT share one partition; the producer is down while
    trades of both happen; after the restart both are filled from REST."""
    with gzip.open(ROOT / "recordings" / "btcusdt-trade-2020-01-01.jsonl.gz", "rt") as handle:
        rare = [json.loads(next(handle))["data"] for _ in range(30)]
    mixed: list[dict[str, Any]] = []
    # 10 rare trades before the stop (none in the last 5,000 messages of the partition: the
    # old tail read missed them), 9 while the producer is down, 11 after.
    slots = {*range(0, 500, 50), *range(6100, 7000, 100), *range(8000, 9100, 100)}
    for index, payload in enumerate(payloads):
        if index in slots:
            mixed.append(rare[len([m for m in mixed if m["s"] == "BTCUSDT"])])
        mixed.append(payload)
    stop_at = mixed.index(payloads[6000])  # the producer is down from here ...
    back_at = mixed.index(payloads[7000])  # ... to here
    one_partition = dict(topics, prices=make_topic(1))
    consumer.env["KAFKA_TOPIC_PRICES"] = one_partition["prices"]
    metrics_port = free_port()
    acked = "producer_events_produced_total"
    # Run 1 ends at stop_at. Run 2: the feed went on meanwhile, its live feed starts at
    # back_at and the trades before it are in the past (the replay server's REST serves them).
    runs = [(mixed[:stop_at], ()), (mixed, ("--skip-frames", f"0:{back_at}"))]
    for run, (frames, faults) in enumerate(runs, start=1):
        if run == 2:  # stop run 1's producer, then its server
            assert processes[-1].terminate() == 0, processes[-1].tail()
            processes[-2].terminate()
        replay_port = free_port()
        recording = combined_recording(frames, tmp_path / f"run-{run}.jsonl")
        server = replay_server(
            recording, replay_port, tmp_path / f"replay-{run}.log", "max", *faults
        )
        processes.append(server)
        env = producer_env(
            kafka_bootstrap,
            one_partition,
            replay_port,
            metrics_port,
            BINANCE_SYMBOLS="TRXUSDT,BTCUSDT",
        )
        producer = _producer(env, tmp_path, f"producer-{run}")
        processes.append(producer)
        if run == 1:
            wait_until(lambda: metric(metrics_port, acked) >= stop_at, 120, "run 1 acked", producer)
            time.sleep(2 * 1.0)  # two resume-point intervals (PRODUCER_RESUME_INTERVAL_S)
    expected = trades_of(mixed)
    _wait_produced(
        kafka_bootstrap, one_partition["prices"], {t.trade_id for t in expected}, 240, producer
    )
    assert producer.terminate() == 0, producer.tail()
    consumer.run_to_end()
    count, digest = assert_landed_once(pg_dsn, expected)
    print(f"raw_prices: {count} rows ({len(rare)} rare), checksum {digest}")


def test_two_feeds_on_one_stack(
    kafka_bootstrap: str,
    topics: dict[str, str],
    consumer: ConsumerRun,
    processes: list[AppProcess],
    pg_dsn: str,
    payloads: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    """Item 3: a replay of BTCUSDT in 2020 (ids ~1..3000), then a feed of BTCUSDT with live
    ids (~4.6 billion: the TRXUSDT trades relabelled), each a producer run of its own; then
    the live feed again after a jump of ~3.4 billion ids (a gap no REST fill can cover)."""
    with gzip.open(ROOT / "recordings" / "btcusdt-trade-2020-01-01.jsonl.gz", "rt") as handle:
        demo = [json.loads(next(handle))["data"] for _ in range(3000)]
    offset = 4_600_000_000 - payloads[0]["t"]
    live = [p | {"s": "BTCUSDT", "t": p["t"] + offset} for p in payloads]
    # The same live feed later (an hour on), its ids 8 billion on: 3.4 billion trades it
    # never saw, more than an integer holds and far more than PRODUCER_GAP_MAX_TRADES.
    hour_us = 3_600_000_000
    jump = 8_000_000_000 - live[0]["t"]
    later = [
        p | {"t": p["t"] + jump, "T": p["T"] + hour_us, "E": p["E"] + hour_us} for p in live[:500]
    ]
    runs = [(demo, "demo"), (live, "live"), (later, "later")]
    expected = 0
    consumer.start()
    live_feed = ""
    for payload_list, name in runs:
        replay_port, metrics_port = free_port(), free_port()
        recording = combined_recording(payload_list, tmp_path / f"{name}.jsonl")
        server = replay_server(recording, replay_port, tmp_path / f"replay-{name}.log", "max")
        processes.append(server)
        env = producer_env(
            kafka_bootstrap, topics, replay_port, metrics_port, BINANCE_SYMBOLS="BTCUSDT"
        )
        del env["PRODUCER_FEED_ID"]  # each feed's identity from its URL, as on the stack
        if name == "live":
            live_feed = f"ws://127.0.0.1:{replay_port}"  # as derived from BINANCE_WS_URL
        elif name == "later":
            env["PRODUCER_FEED_ID"] = live_feed  # the live feed, reached at another port
        producer = _producer(env, tmp_path, f"producer-{name}")
        processes.append(producer)
        expected += len(payload_list)
        _wait_rows(pg_dsn, expected, 240, producer, server)
        time.sleep(2.0)  # a gap fill or report of the switch would come within this
        assert producer.terminate() == 0, producer.tail()
        server.terminate()
        if name == "live":  # no resume across feeds: not a single gap
            assert _gaps(kafka_bootstrap, topics["gaps"]) == []
    assert consumer.process is not None and consumer.process.poll() is None, consumer.tail()
    _finish(consumer)  # a restart of the consumer, with the huge gap in its topic
    count, digest = assert_landed_once(pg_dsn, trades_of(demo + live + later))
    print(f"raw_prices: {count} rows, checksum {digest}")
    first_missing, last_missing = live[-1]["t"] + 1, later[0]["t"] - 1
    with psycopg.connect(pg_dsn) as conn:
        gaps = conn.execute(
            "select first_missing_id, last_missing_id, filled_count, unfilled_count, status"
            " from staging.feed_gaps"
        ).fetchall()
        shown = conn.execute("select unfilled_count from analytics.unfilled_gaps").fetchall()
    print(f"feed_gaps: {gaps}")
    size = last_missing - first_missing + 1
    assert gaps == [(first_missing, last_missing, 0, size, "unfilled")]
    assert shown == [(size,)] and size > 2**31


def test_fatal_kafka_error_ends_the_producer_and_its_restart_fills_the_downtime(
    kafka_bootstrap: str,
    topics: dict[str, str],
    consumer: ConsumerRun,
    processes: list[AppProcess],
    pg_dsn: str,
    trades: list[Trade],
    recording: Path,
    tmp_path: Path,
) -> None:
    """Item 6: librdkafka's fatal error mid-replay (tests/integration/fatal_producer.py): the
    producer exits 3 naming the error; started again (what supervisord does), it resumes."""
    replay_port = free_port()
    processes.append(replay_server(recording, replay_port, tmp_path / "replay.log", "100"))
    knobs = {"BINANCE_SYMBOLS": "TRXUSDT"}
    first_metrics, second_metrics = free_port(), free_port()
    env = producer_env(kafka_bootstrap, topics, replay_port, first_metrics, **knobs)
    first = AppProcess(
        [str(Path(__file__).with_name("fatal_producer.py"))], env, tmp_path / "producer-1.log"
    ).start()
    processes.append(first)
    frames = "producer_frames_received_total"
    wait_until(lambda: metric(first_metrics, frames) >= 2000, 90, "2000 frames", first)
    assert first.process is not None
    injected_at = time.monotonic()
    first.process.send_signal(signal.SIGUSR1)
    ended = wait_until(lambda: not first.running, 60, "exit after the fatal error", fail=False)
    print(f"fatal error: producer ended {ended} after {time.monotonic() - injected_at:.1f} s")
    code = first.terminate()
    log = first.log_path.read_text(errors="replace")
    print(f"exit code {code}; log: {log.count('reconnect')} lines about reconnects")
    assert ended and code == 3, first.tail()
    assert "fatal Kafka producer error" in log and "OUT_OF_ORDER_SEQUENCE_NUMBER" in log, log
    # The supervisor starts it again: it resumes from its last acknowledged trade.
    env = producer_env(kafka_bootstrap, topics, replay_port, second_metrics, **knobs)
    second = _producer(env, tmp_path, "producer-2")
    processes.append(second)
    _wait_produced(kafka_bootstrap, topics["prices"], {t.trade_id for t in trades}, 180, second)
    assert second.terminate() == 0, second.tail()
    consumer.run_to_end()
    count, digest = assert_landed_once(pg_dsn, trades)
    print(f"raw_prices: {count} rows, checksum {digest}")
    reports = _gaps(kafka_bootstrap, topics["gaps"])
    print([(g["first_missing_id"], g["filled_count"], g["status"], g["reason"]) for g in reports])
    assert all(g["status"] == "filled" for g in reports), reports
