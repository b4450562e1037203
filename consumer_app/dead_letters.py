"""Dead letters of the consumer: Kafka records it cannot store, kept in staging.rejected_records.

Where the data comes from: the rejected part of a micro-batch (transform.REJECT_COLUMNS of
the Arrow table job.py collects, or the gap reports job.py parses), and rows PostgreSQL
itself refused (reason `rejected_by_database`). Where it goes: staging.rejected_records
(init.sql; CONTRACT 4 in docs/architecture.md), inside the transaction that commits the
batch's good rows, so a batch's dead letters commit exactly when its rows do. The key
(topic, kafka_partition, kafka_offset) makes a re-read record (a replay after a lost
checkpoint) a no-op.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

# PostgreSQL's text type cannot hold NUL; a detail is ours, but it may quote the record.
_NUL = "\u0000"


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """One Kafka record the consumer could not store, and why."""

    topic: str
    partition: int
    offset: int
    reason: str  # a code of validation.REASONS
    detail: str
    key: bytes | None
    value: bytes | None
    timestamp: dt.datetime | None


def rejected_from_arrow(table: pa.Table) -> list[RejectedRecord]:
    """The rows of `table` whose reject_reason is set, as RejectedRecords (few: per row is fine)."""
    if table.num_rows == 0 or table.column("reject_reason").null_count == table.num_rows:
        return []
    rejected = table.filter(pc.is_valid(table.column("reject_reason")))
    columns = {
        name: rejected.column(name).to_pylist()
        for name in (
            "kafka_topic",
            "kafka_partition",
            "kafka_offset",
            "reject_reason",
            "reject_detail",
            "kafka_key",
            "kafka_value",
            "kafka_timestamp",
        )
    }
    return [
        RejectedRecord(
            topic=columns["kafka_topic"][i],
            partition=columns["kafka_partition"][i],
            offset=columns["kafka_offset"][i],
            reason=columns["reject_reason"][i],
            detail=columns["reject_detail"][i] or "",
            key=columns["kafka_key"][i],
            value=columns["kafka_value"][i],
            timestamp=columns["kafka_timestamp"][i],
        )
        for i in range(rejected.num_rows)
    ]


def stored_part(table: pa.Table) -> pa.Table:
    """The rows of `table` that go to staging.raw_prices (reject_reason null)."""
    reasons = table.column("reject_reason")
    if reasons.null_count == table.num_rows:
        return table  # the usual batch: nothing rejected, no copy
    return table.filter(pc.is_null(reasons))


# One statement for the whole list: arrays in, unnest, ON CONFLICT on the Kafka coordinates.
_INSERT = """
insert into staging.rejected_records
    (topic, kafka_partition, kafka_offset, reason, detail, kafka_key, kafka_value,
     kafka_timestamp)
select * from unnest(
    %s::text[], %s::integer[], %s::bigint[], %s::text[], %s::text[], %s::bytea[], %s::bytea[],
    %s::timestamptz[]
)
on conflict (topic, kafka_partition, kafka_offset) do nothing
returning reason
"""


def insert_rejected(conn: psycopg.Connection[Any], records: list[RejectedRecord]) -> Counter[str]:
    """Insert dead letters in the caller's transaction; the reasons of those newly stored."""
    if not records:
        return Counter()
    params = (
        [r.topic for r in records],
        [r.partition for r in records],
        [r.offset for r in records],
        [r.reason for r in records],
        [r.detail.replace(_NUL, "\\0") for r in records],
        [r.key for r in records],
        [r.value for r in records],
        [r.timestamp for r in records],
    )
    return Counter(row[0] for row in conn.execute(_INSERT, params).fetchall())
