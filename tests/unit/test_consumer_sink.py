"""Unit tests of consumer_app.sink's pure helpers: Arrow -> exact Decimals, batch days."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from consumer_app.sink import (
    batch_days,
    contiguous_ranges,
    copy_text_from_arrow,
    decimals_from_arrow,
)

pytestmark = pytest.mark.unit


def test_decimals_come_back_exact_and_without_padding_zeros() -> None:
    values = [
        Decimal("0.23120000"),
        Decimal("100"),
        Decimal("0"),
        None,
        Decimal("-0.5"),
        Decimal("1E-18"),
        Decimal("1.5E-10"),
        Decimal("0.0000001"),
        Decimal("10"),
        Decimal("12345678901234567890.123456789012345678"),
        Decimal("-0.00000000100"),
    ]
    column = pa.chunked_array([pa.array(values, pa.decimal128(38, 18))])
    out = decimals_from_arrow(column)
    assert out == values  # Decimal equality is by value
    assert str(out[0]) == "0.2312"  # padding gone, value the same
    assert str(out[1]) == "100"  # integer zeros kept


def test_batch_days_are_the_distinct_utc_days() -> None:
    us = np.array(
        [1_577_836_800_000_000, 1_577_923_199_999_999, 1_741_046_401_271_497], dtype=np.int64
    )  # 2020-01-01 00:00, 2020-01-01 23:59:59.999999, 2025-03-04
    assert batch_days(us) == [dt.date(2020, 1, 1), dt.date(2025, 3, 4)]
    assert batch_days(np.array([], dtype=np.int64)) == []


def test_days_group_into_contiguous_ranges() -> None:
    d = dt.date
    days = [d(2020, 1, 3), d(2020, 1, 1), d(2020, 1, 2), d(2020, 1, 7)]
    assert contiguous_ranges(days) == [
        (d(2020, 1, 1), d(2020, 1, 3)),
        (d(2020, 1, 7), d(2020, 1, 7)),
    ]


def test_copy_text_payload_is_postgres_text_format() -> None:
    utc = dt.UTC
    table = pa.table(
        {
            "symbol": ["BTCUSDT", "A\tB\\C\nD"],
            "stream": ["trade", "miniTicker"],
            "sequence_id": pa.array([7, 8], pa.int64()),
            "event_time": pa.array(
                [
                    dt.datetime(2020, 1, 1, tzinfo=utc),
                    dt.datetime(2025, 3, 4, 0, 0, 1, 271497, utc),
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "exchange_event_time": pa.array(
                [
                    dt.datetime(2020, 1, 1, 0, 0, 0, 1, utc),
                    dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=utc),
                ],
                pa.timestamp("us"),
            ),
            "price": pa.array([Decimal("7195.24"), Decimal("1.5E-10")], pa.decimal128(38, 18)),
            "quantity": pa.array([Decimal("0.00100000"), None], pa.decimal128(38, 18)),
            "is_buyer_maker": pa.array([True, None]),
            "previous_price": pa.array([None, Decimal("100")], pa.decimal128(38, 18)),
            "price_change": pa.array([None, Decimal("-0.5")], pa.decimal128(38, 18)),
            "price_change_pct": pa.array([None, Decimal("-12.34567800")], pa.decimal128(38, 8)),
            "received_at": pa.array(
                [dt.datetime(2020, 1, 1, 0, 0, 0, 900, utc)] * 2, pa.timestamp("us", tz="UTC")
            ),
            "source": ["ws", "rest"],
            "is_key_last": [True, False],  # helper columns are not part of the payload
        }
    )
    expected = (
        "BTCUSDT\ttrade\t7\t2020-01-01 00:00:00.000000Z\t2020-01-01 00:00:00.000001Z\t"
        "7195.24\t0.001\ttrue\t\\N\t\\N\t\\N\t2020-01-01 00:00:00.000900Z\tws\n"
        "A\\tB\\\\C\\nD\tminiTicker\t8\t2025-03-04 00:00:01.271497Z\t1999-12-31 23:59:59.000000Z\t"
        "1.50000000E-10\t\\N\t\\N\t100\t-0.5\t-12.345678\t2020-01-01 00:00:00.000900Z\trest\n"
    )
    assert bytes(copy_text_from_arrow(table)).decode() == expected
    assert bytes(copy_text_from_arrow(table.slice(0, 0))) == b""
