"""Unit tests of consumer_app.sink's pure helpers: Arrow -> exact Decimals, batch days."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from consumer_app.sink import batch_days, contiguous_ranges, decimals_from_arrow

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
