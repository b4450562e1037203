"""Exactly-once writes of micro-batches into PostgreSQL.

Where the data comes from: the Arrow table job.py collects on the driver for one
micro-batch (columns: schema.RAW_PRICES_COLUMNS, then the helpers price_time_us,
received_at_us, is_key_last), and gap rows from the binance.gaps topic.
Where it goes: staging.raw_prices, staging.consumer_batches, staging.feed_gaps.

Exactly-once: one transaction per micro-batch inserts the ledger row
(query_id, batch_id) and COPYs the rows. A batch Spark re-executes after a crash finds
its ledger row and is skipped. If the checkpoint is lost, the same events come back
under a new query id: the first COPY then hits the unique key
(symbol, stream, event_time, sequence_id), the transaction rolls back to a savepoint
taken after the ledger insert, and the rows go through a temp table with
INSERT ... ON CONFLICT DO NOTHING. The direct COPY is the fast path (bench figures
in docs/benchmarks.md, consumer); the merge path costs more but only runs on replays.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal, TypeVar

import numpy as np
import psycopg
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
from psycopg import sql

from consumer_app.dead_letters import RejectedRecord, insert_rejected
from consumer_app.errors import ServiceUnavailableError, SinkError, TransientError
from consumer_app.retries import (
    Backoff,
    DatabaseAction,
    database_action,
    describe_database_error,
    is_missing_partition,
)
from consumer_app.schema import RAW_PRICES_COLUMNS

log = logging.getLogger(__name__)

US_PER_DAY = 86_400_000_000
WriteMode = Literal["optimistic", "merge"]
CopyFormat = Literal["text", "binary"]
# what a batch is COPYed from: a COPY text payload, or value lists for binary COPY
CopyData = memoryview | list[list[Any]]
_COPY_CHUNK = 1 << 20
T = TypeVar("T")
# Delays between retries of one action: 0.2 s doubling to 5 s, within CONSUMER_RETRY_SECONDS.
_RETRY_BACKOFF = Backoff(first=0.2, factor=2.0, cap=5.0)
# How often one batch recreates a vanished day partition before it gives up (a purge that
# keeps dropping the day faster than the consumer writes it).
_PARTITION_ATTEMPTS = 3

# Binary COPY types per column. timestamptz columns are sent with the *timestamp*
# binary dumper from naive UTC datetimes: both types are int64 µs since 2000-01-01 UTC
# on the wire, and naive datetimes come out of numpy ~50x faster than aware ones.
_COPY_TYPES: dict[str, str] = {
    "symbol": "text",
    "stream": "text",
    "sequence_id": "int8",
    "event_time": "timestamp",
    "exchange_event_time": "timestamp",
    "price": "numeric",
    "quantity": "numeric",
    "is_buyer_maker": "bool",
    "previous_price": "numeric",
    "price_change": "numeric",
    "price_change_pct": "numeric",
    "received_at": "timestamp",
    "source": "text",
}
_RAW_PRICES = sql.Identifier("staging", "raw_prices")
_TEMP_ROWS = sql.Identifier("consumer_batch_rows")
_COLUMN_LIST = sql.SQL(", ").join(sql.Identifier(c) for c in RAW_PRICES_COLUMNS)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What write_batch did: rows inserted, and whether the batch was already committed."""

    rows_inserted: int
    skipped: bool
    merged: bool
    # dead letters newly stored with the batch, by reason (empty when skipped)
    rejected: Counter[str] = field(default_factory=Counter)


def _decimal_or_none(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def decimal_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Arrow decimal128 -> its exact decimal text, trailing fraction zeros dropped.

    Arrow's own decimal -> string cast, then trimming: 0.2312, not 0.231200000000000000
    (same value, shorter NUMERIC, and the scale Binance's text had minus its padding).
    Arrow writes tiny values in exponent form ("1.50E-10"): trimming those would change
    the exponent's digits, so they stay as they are (Decimal and PostgreSQL read them exactly).
    """
    text = column.cast(pa.string())
    trimmed = pc.utf8_rtrim(pc.utf8_rtrim(text, characters="0"), characters=".")
    return pc.if_else(pc.match_substring(text, "E"), text, trimmed)


def decimals_from_arrow(column: pa.ChunkedArray) -> list[Decimal | None]:
    """Arrow decimal128 -> Decimal objects (exact, trimmed as decimal_text does)."""
    text = decimal_text(column)
    if column.null_count == 0:
        return list(map(Decimal, text.to_pylist()))
    return list(map(_decimal_or_none, text.to_pylist()))


def arrow_columns_to_python(table: pa.Table) -> list[list[Any]]:
    """Arrow columns -> Python value lists in COPY order, the fast way per type."""
    columns: list[list[Any]] = []
    for name in RAW_PRICES_COLUMNS:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            # timestamp columns are never null here (parse_events filters them)
            values = column.cast(pa.timestamp("us")).to_numpy().astype(object)
            columns.append(list(values))
        elif pa.types.is_decimal(column.type):
            columns.append(decimals_from_arrow(column))
        elif pa.types.is_integer(column.type) and column.null_count == 0:
            columns.append(column.to_numpy().tolist())
        else:
            columns.append(column.to_pylist())
    return columns


# COPY text format: backslash, tab, newline and carriage return inside a value are escaped;
# \N is NULL (https://www.postgresql.org/docs/15/sql-copy.html, "Text Format").
_TEXT_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))
_NEEDS_ESCAPE = r"[\\\t\n\r]"


def _text_field(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """One column as COPY text values (nulls stay null; the join writes them as \\N)."""
    if pa.types.is_decimal(column.type):
        return decimal_text(column)
    if pa.types.is_timestamp(column.type):
        # "2025-03-04 00:00:01.271497Z": PostgreSQL reads the Z as UTC whatever the session
        # TimeZone. Arrow stores UTC µs; printing them without a zone and adding the Z is
        # 13x faster than Arrow's zone-aware cast.
        naive = column.cast(pa.timestamp("us")).cast(pa.string())
        return pc.binary_join_element_wise(naive, pa.scalar("Z"), pa.scalar(""))
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        if pc.any(pc.match_substring_regex(column, _NEEDS_ESCAPE)).as_py():
            for raw, escaped in _TEXT_ESCAPES:
                column = pc.replace_substring(column, raw, escaped)
        return column
    return column.cast(pa.string())  # integers, booleans (true/false)


def copy_text_from_arrow(table: pa.Table) -> memoryview:
    """The RAW_PRICES_COLUMNS of `table` as one COPY ... (format text) payload.

    Built column-wise by Arrow's C++ kernels: no Python object per value (the binary
    COPY path with psycopg's write_row spends ~4 µs a row in Python; this ~0.5 µs).
    """
    if table.num_rows == 0:
        return memoryview(b"")
    text = pa.large_string()  # 64-bit offsets: no 2 GiB limit on a batch's payload
    fields = [_text_field(table.column(name)).cast(text) for name in RAW_PRICES_COLUMNS]
    lines = pc.binary_join_element_wise(
        *fields, pa.scalar("\t", text), null_handling="replace", null_replacement="\\N"
    )
    # a trailing empty field joined with a newline ends every line with "\n"
    ended = pc.binary_join_element_wise(
        lines, pa.scalar("", text), pa.scalar("\n", text)
    ).combine_chunks()
    offsets = np.frombuffer(ended.buffers()[1], dtype=np.int64)
    first, last = int(offsets[ended.offset]), int(offsets[ended.offset + len(ended)])
    return memoryview(ended.buffers()[2])[first:last]


def batch_days(price_time_us: np.ndarray) -> list[dt.date]:
    """Distinct UTC days of a batch's price times, ascending."""
    if price_time_us.size == 0:
        return []
    day_numbers = np.unique(np.floor_divide(price_time_us, US_PER_DAY))
    epoch = dt.date(1970, 1, 1)
    return [epoch + dt.timedelta(days=int(d)) for d in day_numbers]


def contiguous_ranges(days: Sequence[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """[d1, d2, d3, d7] -> [(d1, d3), (d7, d7)] for one CALL per run of days."""
    ranges: list[tuple[dt.date, dt.date]] = []
    for day in sorted(days):
        if ranges and ranges[-1][1] + dt.timedelta(days=1) == day:
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


class PostgresSink:
    """One connection, reused across batches; reconnects (and retries) when it drops."""

    def __init__(
        self,
        conninfo: str,
        *,
        retry_seconds: float = 60.0,
        write_mode: WriteMode = "optimistic",
        copy_format: CopyFormat = "text",
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._retry_seconds = retry_seconds
        self._on_retry = on_retry  # called with describe_database_error()'s label per retry
        self._write_mode: WriteMode = write_mode
        self._copy_format: CopyFormat = copy_format
        self._conn: psycopg.Connection[Any] | None = None
        self._known_days: set[dt.date] = set()
        self._temp_ready = False

    # connection -------------------------------------------------------------------
    def _target(self) -> str:
        params = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        host, port = params.get("host", "localhost"), params.get("port", 5432)
        return f"{host}:{port}/{params.get('dbname', '')}"

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self._conninfo, autocommit=False, connect_timeout=5)
            except psycopg.OperationalError as err:
                raise ServiceUnavailableError(
                    "PostgreSQL", self._target(), str(err).strip()
                ) from err
            self._temp_ready = False
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def run(self, what: str, action: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run a read-only or idempotent action on the connection, with reconnects."""
        return self._with_retry(what, action)

    def _with_retry(self, what: str, action: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `action` on a live connection; run it again after a transient failure.

        Retried (retries.database_action): a lost connection (reconnect), and on a working
        connection deadlocks, lock and statement timeouts, cancelled statements, serialization
        failures (roll back, wait, again). Every action is safe to repeat: each is one
        transaction, and the ledger row makes a repeated batch a no-op. Past
        CONSUMER_RETRY_SECONDS the failure goes up as a TransientError (the query is then
        restarted, job.py); anything else is raised at once.
        """
        deadline = time.monotonic() + self._retry_seconds
        attempt = 0
        while True:
            try:
                return action(self.connection())
            except (psycopg.Error, ServiceUnavailableError) as err:
                conn = self._conn
                broken = conn is None or conn.closed or conn.broken
                kind = (
                    DatabaseAction.RECONNECT
                    if isinstance(err, ServiceUnavailableError)
                    else database_action(err, connection_broken=broken)
                )
                if kind in (DatabaseAction.RAISE, DatabaseAction.RECREATE_PARTITIONS):
                    raise
                failure = err
            if kind is DatabaseAction.RECONNECT:
                self.close()
            else:
                self._rollback()
            label = describe_database_error(failure)
            if time.monotonic() >= deadline:
                if isinstance(failure, ServiceUnavailableError):
                    raise failure
                if kind is DatabaseAction.RECONNECT:
                    raise ServiceUnavailableError(
                        "PostgreSQL", self._target(), str(failure).strip()
                    ) from failure
                raise TransientError(
                    f"PostgreSQL {label} during {what} for {self._retry_seconds:.0f}s "
                    f"(CONSUMER_RETRY_SECONDS): {str(failure).strip()}"
                ) from failure
            delay = _RETRY_BACKOFF.delay(attempt)
            attempt += 1
            if self._on_retry is not None:
                self._on_retry(label)
            log.warning(
                "PostgreSQL %s during %s (%s); retrying in %.1fs",
                label,
                what,
                str(failure).strip(),
                delay,
            )
            time.sleep(delay)

    def _rollback(self) -> None:
        """Leave a failed transaction so the connection can run the action again."""
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.rollback()
            except psycopg.Error:
                self.close()

    # ledger -----------------------------------------------------------------------
    def ledger_position(self, query_id: str, batch_id: int) -> tuple[int | None, bool]:
        """(latest committed batch id of the query or None, whether batch_id is committed)."""

        def read(conn: psycopg.Connection[Any]) -> tuple[int | None, bool]:
            row = conn.execute(
                "select (select max(batch_id) from staging.consumer_batches where query_id = %s),"
                " exists (select 1 from staging.consumer_batches"
                "         where query_id = %s and batch_id = %s)",
                (query_id, query_id, batch_id),
            ).fetchone()
            conn.rollback()
            assert row is not None  # noqa: S101 - a scalar select always returns one row
            return row[0], bool(row[1])

        return self._with_retry("ledger read", read)

    # partitions -------------------------------------------------------------------
    def ensure_partitions(self, days: Iterable[dt.date]) -> None:
        """Create the day partitions a batch needs (once per day per process)."""
        missing = sorted(set(days) - self._known_days)
        if not missing:
            return

        def create(conn: psycopg.Connection[Any]) -> None:
            for first, last in contiguous_ranges(missing):
                conn.execute("call staging.create_raw_prices_partitions(%s, %s)", (first, last))
            conn.commit()

        self._with_retry("partition creation", create)
        self._known_days.update(missing)

    # batches ----------------------------------------------------------------------
    def write_batch(
        self,
        query_id: str,
        batch_id: int,
        table: pa.Table,
        rejected: Sequence[RejectedRecord] = (),
    ) -> WriteResult:
        """Commit one micro-batch exactly once (see module docstring), with its dead letters.

        `table` holds the rows to store, `rejected` the batch's records that cannot be stored;
        both commit in one transaction with the ledger row. A day partition that vanished
        under the batch (the DAG's purge during a replay of that day) is created again and
        the batch retried: the rows are data someone is replaying on purpose.
        """
        price_time_us = table.column("price_time_us").to_numpy()
        days = batch_days(price_time_us)
        data: CopyData = (
            copy_text_from_arrow(table)
            if self._copy_format == "text"
            else arrow_columns_to_python(table)
        )
        for attempt in range(1, _PARTITION_ATTEMPTS + 1):
            self.ensure_partitions(days)
            try:
                return self._with_retry(
                    f"batch {batch_id}",
                    lambda conn: self._write(
                        conn, query_id, batch_id, data, table.num_rows, rejected
                    ),
                )
            except psycopg.errors.CheckViolation as err:
                if not is_missing_partition(err) or attempt == _PARTITION_ATTEMPTS:
                    raise SinkError(f"batch {batch_id} breaks a table constraint: {err}") from err
                log.warning(
                    "batch %s: a day partition of staging.raw_prices is gone (%s; dropped by "
                    "the purge while the batch ran?): recreating it and retrying",
                    batch_id,
                    str(err).strip(),
                )
                self._known_days.difference_update(days)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _write(
        self,
        conn: psycopg.Connection[Any],
        query_id: str,
        batch_id: int,
        data: CopyData,
        row_count: int,
        rejected: Sequence[RejectedRecord],
    ) -> WriteResult:
        try:
            with conn.transaction():
                claimed = conn.execute(
                    "insert into staging.consumer_batches (query_id, batch_id, row_count)"
                    " values (%s, %s, %s) on conflict (query_id, batch_id) do nothing",
                    (query_id, batch_id, row_count),
                ).rowcount
                if claimed == 0:
                    log.info(
                        "batch %s of query %s is already committed: skipped", batch_id, query_id
                    )
                    return WriteResult(rows_inserted=0, skipped=True, merged=False)
                inserted, merged = self._store_rows(conn, query_id, batch_id, data, row_count)
                dead = insert_rejected(conn, list(rejected))
                return WriteResult(
                    rows_inserted=inserted, skipped=False, merged=merged, rejected=dead
                )
        except psycopg.errors.DataError as err:
            raise SinkError(f"batch {batch_id} holds a value PostgreSQL rejects: {err}") from err
        except psycopg.errors.IntegrityError as err:
            if is_missing_partition(err):
                raise  # write_batch recreates the partition
            raise SinkError(f"batch {batch_id} breaks a table constraint: {err}") from err

    def _store_rows(
        self,
        conn: psycopg.Connection[Any],
        query_id: str,
        batch_id: int,
        data: CopyData,
        row_count: int,
    ) -> tuple[int, bool]:
        """COPY the rows (merging after a key conflict); (rows inserted, whether merged)."""
        if self._write_mode == "optimistic":
            try:
                with conn.transaction():  # savepoint: a conflict undoes only the COPY
                    self._copy(conn, _RAW_PRICES, data)
                return row_count, False
            except psycopg.errors.UniqueViolation:
                log.warning(
                    "batch %s of query %s holds rows already stored (replay after a lost"
                    " checkpoint?): merging with ON CONFLICT DO NOTHING",
                    batch_id,
                    query_id,
                )
        return self._merge(conn, data), True

    def _copy(self, conn: psycopg.Connection[Any], target: sql.Identifier, data: CopyData) -> None:
        """COPY the batch into `target`: a text payload as it is, or value lists as binary."""
        if isinstance(data, memoryview):
            statement = sql.SQL("copy {} ({}) from stdin").format(target, _COLUMN_LIST)
            with conn.cursor().copy(statement) as copy:
                for start in range(0, len(data), _COPY_CHUNK):
                    copy.write(data[start : start + _COPY_CHUNK])
            return
        statement = sql.SQL("copy {} ({}) from stdin (format binary)").format(target, _COLUMN_LIST)
        with conn.cursor().copy(statement) as copy:
            copy.set_types([_COPY_TYPES[c] for c in RAW_PRICES_COLUMNS])
            write_row = copy.write_row
            for row in zip(*data, strict=True):
                write_row(row)

    def _merge(self, conn: psycopg.Connection[Any], data: CopyData) -> int:
        if not self._temp_ready:
            conn.execute(
                sql.SQL(
                    "create temp table if not exists {} (like {} including defaults)"
                    " on commit delete rows"
                ).format(_TEMP_ROWS, _RAW_PRICES)
            )
            self._temp_ready = True
        conn.execute(sql.SQL("truncate {}").format(_TEMP_ROWS))
        self._copy(conn, _TEMP_ROWS, data)
        return conn.execute(
            sql.SQL("insert into {} ({cols}) select {cols} from {} on conflict do nothing").format(
                _RAW_PRICES, _TEMP_ROWS, cols=_COLUMN_LIST
            )
        ).rowcount

    # gaps -------------------------------------------------------------------------
    def write_gaps(
        self,
        rows: Sequence[tuple[Any, ...]],
        origins: Sequence[RejectedRecord],
        rejected: Sequence[RejectedRecord],
    ) -> tuple[int, Counter[str]]:
        """Upsert gap rows (GAP_COLUMNS order) and store the dead letters, in one transaction.

        `origins[i]` is the Kafka record of `rows[i]`: when PostgreSQL refuses a row (a value
        out of a column's range), the rows go one by one and each refused one becomes a dead
        letter (`rejected_by_database`) instead of failing the batch forever. Idempotent.
        Returns (gap rows upserted, dead letters newly stored by reason).
        """
        if not rows and not rejected:
            return 0, Counter()

        def upsert(conn: psycopg.Connection[Any]) -> tuple[int, Counter[str]]:
            with conn.transaction():
                refused: list[RejectedRecord] = []
                try:
                    with conn.transaction(), conn.cursor() as cur:  # savepoint
                        cur.executemany(_GAP_UPSERT, rows)
                    written = len(rows)
                except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
                    written = 0
                    for row, origin in zip(rows, origins, strict=True):
                        try:
                            with conn.transaction():
                                conn.execute(_GAP_UPSERT, row)
                            written += 1
                        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as err:
                            detail = str(err).strip().splitlines()[0]
                            refused.append(
                                replace(origin, reason="rejected_by_database", detail=detail)
                            )
                return written, insert_rejected(conn, [*rejected, *refused])

        return self._with_retry("gap upsert", upsert)


GAP_COLUMNS = (
    "symbol",
    "stream",
    "first_missing_id",
    "last_missing_id",
    "window_start",
    "window_end",
    "filled_count",
    "unfilled_count",
    "status",
    "reason",
    "detected_at",
)
# A later report of the same gap (e.g. filled after all) replaces an older one; an
# older or identical report changes nothing, so replaying the topic is harmless.
_GAP_UPSERT = sql.SQL(
    "insert into staging.feed_gaps ({cols}) values ({vals})"
    " on conflict (symbol, stream, window_start, first_missing_id) do update set"
    " last_missing_id = excluded.last_missing_id, window_end = excluded.window_end,"
    " filled_count = excluded.filled_count, unfilled_count = excluded.unfilled_count,"
    " status = excluded.status, reason = excluded.reason, detected_at = excluded.detected_at"
    " where excluded.detected_at > staging.feed_gaps.detected_at"
).format(
    cols=sql.SQL(", ").join(sql.Identifier(c) for c in GAP_COLUMNS),
    vals=sql.SQL(", ").join(sql.Placeholder() * len(GAP_COLUMNS)),
)
