"""Last-price recovery from PostgreSQL (Redis lost) on a real database.

The expected last price of each (symbol, stream) is worked out in plain Python from the rows
the test inserts: the greatest (event_time, sequence_id), whatever order the rows arrive in.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from consumer_app.state import last_prices_from_postgres

pytestmark = pytest.mark.integration


def test_recovery_returns_the_newest_row_of_each_symbol_and_stream(pg_dsn: str) -> None:
    base = datetime(2020, 1, 1, 23, 59, 59, tzinfo=UTC)
    rows = []
    for symbol in ("BTCUSDT", "ETHUSDT"):
        for i in range(40):
            # Two days, several trades per millisecond, so sequence_id must break ties.
            event_time = base + timedelta(milliseconds=(i // 4) * 150)
            price = (
                Decimal(f"{100 + i}.{i:02d}") if symbol == "BTCUSDT" else Decimal(f"0.{i + 1:08d}")
            )
            rows.append((symbol, "trade", 1000 + i, event_time, price))
    rows.append(("BTCUSDT", "miniTicker", 1577923199000, base, Decimal("7200.85")))
    random.Random(7).shuffle(rows)  # noqa: S311 - arrival order must not matter

    expected: dict[tuple[str, str], tuple[datetime, int, Decimal]] = {}
    for symbol, stream, sequence_id, event_time, price in rows:
        best = expected.get((symbol, stream))
        if best is None or (event_time, sequence_id) > (best[0], best[1]):
            expected[(symbol, stream)] = (event_time, sequence_id, price)

    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "call staging.create_raw_prices_partitions(%s, %s)", ("2020-01-01", "2020-01-02")
        )
        with conn.cursor() as cur:
            cur.executemany(
                "insert into staging.raw_prices (symbol, stream, sequence_id, event_time, "
                "exchange_event_time, price, quantity, received_at) "
                "values (%s, %s, %s, %s, %s, %s, 1, %s)",
                [(s, st, seq, t, t, p, t) for s, st, seq, t, p in rows],
            )
        conn.commit()
        recovered = last_prices_from_postgres(conn)

    assert set(recovered) == set(expected)
    for key, (event_time, sequence_id, price) in expected.items():
        last = recovered[key]
        assert last.price == price
        assert last.sequence_id == sequence_id
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        assert last.price_time_us == (event_time - epoch) // timedelta(microseconds=1)
    # The newest BTC trade straddles midnight: it lives in the 2020-01-02 partition.
    assert recovered[("BTCUSDT", "trade")].sequence_id == 1039
