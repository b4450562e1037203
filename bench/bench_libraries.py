"""Library choices measured side by side: WebSocket clients and PostgreSQL write paths.

Not a test: prints its figures and the machine. Run (PostgreSQL of `make services` must be up):

    .venv/bin/python bench/bench_libraries.py [--runs 3] [--rows 500000]

1. WebSocket receive on loopback. Data comes from the project's replay server
   (producer_app.replay_server, a fresh subprocess per run, --speed max --exit-at-end)
   replaying recordings/btcusdt-trade-2020-01-01.jsonl.gz (194,010 frames) on
   /stream?streams=btcusdt@trade; it goes nowhere: the client only counts frames until the
   server closes with 1000 "end of recording". Clients: `websockets` asyncio
   (recv(decode=False), what producer_app uses) and `websocket-client`
   (create_connection + recv(), the library on the user's card). Figures: frames/s (wall,
   connect to close) and CPU µs/frame of this process (time.process_time), median of runs.
2. PostgreSQL writes. 500,000 rows shaped like staging.raw_prices' key and money columns
   (symbol text, sequence_id bigint, event_time timestamptz, price numeric, quantity numeric),
   built from the same recording's prices and quantities as exact Decimals, go into a fresh
   table in a scratch database created and dropped here (admin conninfo: POSTGRES_ADMIN_DSN,
   else the stack's unix socket .local/run/postgres as user postgres, like tests/conftest.py).
   Variants: psycopg 3 binary COPY (write_row + set_types, what consumer_app uses), psycopg 3
   text COPY, psycopg2 execute_values (page_size 10,000), psycopg2 copy_expert from a CSV
   buffer (building the buffer is timed). Each load is one transaction, timed to commit, then
   checked: row count and exact sums of price and quantity equal Python's Decimal sums.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import io
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import psycopg2
import psycopg2.extras
import websocket
from psycopg import sql
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine  # noqa: E402
from bench.replay import start_replay_server  # noqa: E402

RECORDING = ROOT / "recordings" / "btcusdt-trade-2020-01-01.jsonl.gz"
STREAM_PATH = "/stream?streams=btcusdt@trade"
TABLE = "bench_raw_prices"
COLUMNS = ("symbol", "sequence_id", "event_time", "price", "quantity")
Row = tuple[str, int, datetime, Decimal, Decimal]


class BenchError(RuntimeError):
    """A variant did not deliver what it must (frame count, row count, exact sums)."""


# ----------------------------------------------------------------------------- WebSocket


def receive_websockets(url: str) -> int:
    async def run() -> int:
        frames = 0
        async with connect(url, max_size=2**20, compression=None) as ws:
            try:
                while True:
                    await ws.recv(decode=False)
                    frames += 1
            except ConnectionClosedOK:
                pass  # 1000 "end of recording"
        return frames

    return asyncio.run(run())


def receive_websocket_client(url: str) -> int:
    ws = websocket.create_connection(url)
    frames = 0
    try:
        while True:
            # recv() answers pings itself and returns "" for the close frame (no recorded
            # frame is empty), so "" marks the end of the recording.
            if not ws.recv():
                break
            frames += 1
    finally:
        ws.close()
    return frames


def bench_ws(
    name: str, receive: Callable[[str], int], recording: Path, runs: int
) -> dict[str, Any]:
    fps: list[float] = []
    cpu_us: list[float] = []
    counts: list[int] = []
    for _ in range(runs):
        server, port = start_replay_server(recording)
        url = f"ws://127.0.0.1:{port}{STREAM_PATH}"
        try:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            frames = receive(url)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        finally:
            server.wait(60)
        counts.append(frames)
        fps.append(frames / wall)
        cpu_us.append(cpu / frames * 1e6)
    return {
        "variant": name,
        "count": counts,
        "rate": statistics.median(fps),
        "rates": fps,
        "cpu_us": statistics.median(cpu_us),
    }


# ----------------------------------------------------------------------------- PostgreSQL


def admin_dsn() -> str:
    dsn = os.environ.get("POSTGRES_ADMIN_DSN", "")
    if dsn:
        return dsn
    return psycopg.conninfo.make_conninfo(
        host=str(ROOT / ".local" / "run" / "postgres"),
        port=os.environ.get("POSTGRES_PORT", "5432"),
        dbname="postgres",
        user="postgres",
    )


def build_rows(recording: Path, count: int) -> list[Row]:
    """`count` rows cycling the recording's trades: real prices/quantities, unique ids and times."""
    trades: list[tuple[str, str]] = []
    with gzip.open(recording, "rb") as handle:
        for line in handle:
            data = orjson.loads(line)["data"]
            trades.append((data["p"], data["q"]))
    start = datetime(2020, 1, 1, tzinfo=UTC)
    rows: list[Row] = []
    for i in range(count):
        price, qty = trades[i % len(trades)]
        rows.append(
            (
                "BTCUSDT",
                200_000_000 + i,
                start + timedelta(microseconds=i * 1777),
                Decimal(price),
                Decimal(qty),
            )
        )
    return rows


CREATE_SQL = (
    "create table bench_raw_prices (symbol text not null, sequence_id bigint not null, "
    "event_time timestamptz not null, price numeric not null, quantity numeric not null, "
    "primary key (symbol, sequence_id))"
)
DROP_SQL = "drop table if exists bench_raw_prices"
CHECK_SQL = "select count(*), sum(price), sum(quantity) from bench_raw_prices"


def load_psycopg_copy(dsn: str, rows: Sequence[Row], binary: bool) -> None:
    fmt = "binary" if binary else "text"
    statement = sql.SQL("copy {} ({}) from stdin (format {})").format(
        sql.Identifier(TABLE), sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), sql.SQL(fmt)
    )
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
        if binary:
            copy.set_types(["text", "int8", "timestamptz", "numeric", "numeric"])
        write_row = copy.write_row
        for row in rows:
            write_row(row)
    # leaving the connection block commits


def load_psycopg2_execute_values(dsn: str, rows: Sequence[Row]) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:  # `with conn` commits
            psycopg2.extras.execute_values(
                cur,
                "insert into bench_raw_prices (symbol, sequence_id, event_time, price, quantity) "
                "values %s",
                rows,
                page_size=10_000,
            )
    finally:
        conn.close()


def load_psycopg2_copy_csv(dsn: str, rows: Sequence[Row]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    # str(Decimal) is exact; isoformat keeps the +00:00 offset.
    writer.writerows((s, i, t.isoformat(), str(p), str(q)) for s, i, t, p, q in rows)
    buffer.seek(0)
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.copy_expert(
                "copy bench_raw_prices (symbol, sequence_id, event_time, price, quantity) "
                "from stdin (format csv)",
                buffer,
            )
    finally:
        conn.close()


def bench_pg(
    name: str,
    load: Callable[[str, Sequence[Row]], None],
    dsn: str,
    rows: Sequence[Row],
    runs: int,
) -> dict[str, Any]:
    expected = (len(rows), sum(r[3] for r in rows), sum(r[4] for r in rows))
    rates: list[float] = []
    counts: list[int] = []
    for _ in range(runs):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(DROP_SQL)
            conn.execute(CREATE_SQL)
            conn.execute("checkpoint")  # each run starts with no dirty pages of the last one
        wall0 = time.perf_counter()
        load(dsn, rows)
        wall = time.perf_counter() - wall0
        with psycopg.connect(dsn, autocommit=True) as conn:
            got = conn.execute(CHECK_SQL).fetchone()
        if got is None or tuple(got) != expected:
            raise BenchError(f"{name}: stored {got}, expected {expected}")
        counts.append(int(got[0]))
        rates.append(len(rows) / wall)
    return {
        "variant": name,
        "count": counts,
        "rate": statistics.median(rates),
        "rates": rates,
        "cpu_us": None,
    }


# ----------------------------------------------------------------------------- main


def print_table(title: str, unit: str, results: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    cpu_title = " CPU µs/frame of the client (median) |" if unit == "frames/s" else ""
    print(f"| variant | count | {unit} (median) | runs |{cpu_title}")
    print("|---|---:|---:|---|" + ("---:|" if cpu_title else ""))
    for r in results:
        runs = ", ".join(f"{x:,.0f}" for x in r["rates"])
        cpu = f" {r['cpu_us']:.1f} |" if cpu_title else ""
        print(f"| {r['variant']} | {r['count'][0]:,} | {r['rate']:,.0f} | {runs} |{cpu}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recording", type=Path, default=RECORDING)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--skip-ws", action="store_true")
    parser.add_argument("--skip-pg", action="store_true")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")

    if not args.skip_ws:
        ws_results = [
            bench_ws(
                "websockets (asyncio, recv(decode=False))",
                receive_websockets,
                args.recording,
                args.runs,
            ),
            bench_ws(
                "websocket-client (create_connection, recv())",
                receive_websocket_client,
                args.recording,
                args.runs,
            ),
        ]
        counts = {c for r in ws_results for c in r["count"]}
        if len(counts) != 1:
            raise BenchError(f"clients received different frame counts: {counts}")
        print_table("WebSocket receive, loopback replay server --speed max", "frames/s", ws_results)

    if not args.skip_pg:
        rows = build_rows(args.recording, args.rows)
        admin = admin_dsn()
        scratch = f"bench_libraries_{os.getpid()}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(scratch)))
        try:
            dsn = psycopg.conninfo.make_conninfo(admin, dbname=scratch)
            pg_results = [
                bench_pg(
                    "psycopg 3 binary COPY (write_row, set_types)",
                    lambda d, r: load_psycopg_copy(d, r, binary=True),
                    dsn,
                    rows,
                    args.runs,
                ),
                bench_pg(
                    "psycopg 3 text COPY (write_row)",
                    lambda d, r: load_psycopg_copy(d, r, binary=False),
                    dsn,
                    rows,
                    args.runs,
                ),
                bench_pg(
                    "psycopg2 execute_values (page_size 10,000)",
                    load_psycopg2_execute_values,
                    dsn,
                    rows,
                    args.runs,
                ),
                bench_pg(
                    "psycopg2 copy_expert (CSV buffer)",
                    load_psycopg2_copy_csv,
                    dsn,
                    rows,
                    args.runs,
                ),
            ]
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(
                        sql.Identifier(scratch)
                    )
                )
        print_table(
            f"PostgreSQL write, {args.rows:,} rows, one transaction each", "rows/s", pg_results
        )
    print(f"\nmachine: {describe_machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
