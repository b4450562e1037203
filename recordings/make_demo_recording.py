"""Build the bundled replay recordings from real Binance data.

Reads Binance's official 1-minute klines (BTCUSDT, 2020-01-01) and a real capture of
``trxusdt@trade`` messages (2025-03-04), both from the shared Binance data set (byte
copies with origin notes in ``tests/fixtures/``, which this script reads), and writes
JSON Lines recordings (gzip) of
combined-stream trade frames ``{"stream": ..., "data": {"e": "trade", ...}}`` that the
replay server (``producer_app.replay_server``) sends exactly as Binance would.

The kline expansion is synthetic at the trade level but exact at the candle level: every
minute gets exactly ``number of trades`` trades with contiguous ids, times inside the
minute and non-decreasing, the first trade at the open, the last at the close, the high and
the low each hit, every price on the 0.01 tick grid inside [low, high], quantities with 8
decimals summing exactly to the minute's volume and, where possible, the taker-buy volume
carried by the trades whose buyer is the taker (``m`` false). So the day's candle computed
from the trades equals Binance's official one. Deterministic: a fixed seed and a gzip
header without a timestamp give byte-identical output on every run.

Standard library only (``decimal`` for exact arithmetic), so it runs without the venv:
    python3 recordings/make_demo_recording.py            # both recordings, default paths
    python3 recordings/make_demo_recording.py --check    # rebuild in memory, compare bytes
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import logging
import random
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "fixtures"

DEFAULT_KLINES = FIXTURES / "BTCUSDT-1m-2020-01-01.zip"
DEFAULT_TRADES_CSV = FIXTURES / "trxusdt-trade-2025-03-04.csv"  # byte copy of the shared capture
DEFAULT_BTC_OUT = HERE / "btcusdt-trade-2020-01-01.jsonl.gz"
DEFAULT_TRX_OUT = HERE / "trxusdt-trade-2025-03-04.jsonl.gz"

SEED = 20200101
FIRST_TRADE_ID = 1  # synthetic: Binance's real ids for that day are not in the klines
PRICE_TICK = Decimal("0.01")  # BTCUSDT tick size in 2020; every kline price is on it
QUANTITY_STEP = Decimal("0.00000001")  # klines carry volumes with 8 decimals
MINUTE_MS = 60_000


class RecordingError(Exception):
    """A kline or CSV row cannot be turned into trades that reproduce it exactly."""


@dataclass(frozen=True)
class Kline:
    """One official 1-minute kline row (only the fields the expansion needs)."""

    open_time_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trade_count: int
    taker_buy_volume: Decimal


def read_klines(zip_path: Path) -> list[Kline]:
    """Read the headerless 12-column kline CSV inside Binance's daily zip."""
    with zipfile.ZipFile(zip_path) as archive:
        (member,) = archive.namelist()
        text = archive.read(member).decode("ascii")
    klines = []
    for row in csv.reader(io.StringIO(text)):
        klines.append(
            Kline(
                open_time_ms=int(row[0]),
                open=Decimal(row[1]),
                high=Decimal(row[2]),
                low=Decimal(row[3]),
                close=Decimal(row[4]),
                volume=Decimal(row[5]),
                trade_count=int(row[8]),
                taker_buy_volume=Decimal(row[9]),
            )
        )
    return klines


def _split_units(rng: random.Random, total_units: int, parts: int) -> list[int]:
    """Split a positive integer into ``parts`` positive integers that sum to it exactly."""
    if parts == 0:
        if total_units != 0:
            raise RecordingError(f"cannot put {total_units} units into zero trades")
        return []
    if total_units < parts:
        raise RecordingError(f"{total_units} quantity steps cannot make {parts} positive trades")
    cuts = sorted(rng.sample(range(1, total_units), parts - 1))
    bounds = [0, *cuts, total_units]
    return [bounds[i + 1] - bounds[i] for i in range(parts)]


def _prices_for_minute(rng: random.Random, kline: Kline) -> list[Decimal]:
    """Prices on the tick grid: first = open, last = close, high and low each hit once at least."""
    n = kline.trade_count
    for value in (kline.open, kline.high, kline.low, kline.close):
        if value % PRICE_TICK:
            raise RecordingError(
                f"price {value} at {kline.open_time_ms} is off the {PRICE_TICK} tick"
            )
    low_ticks = int(kline.low / PRICE_TICK)
    high_ticks = int(kline.high / PRICE_TICK)
    prices = [PRICE_TICK * rng.randint(low_ticks, high_ticks) for _ in range(n)]
    prices[0] = kline.open
    prices[-1] = kline.close
    interior = list(range(1, n - 1))
    rng.shuffle(interior)
    for extreme in (kline.high, kline.low):
        if extreme in (kline.open, kline.close):
            continue
        if not interior:
            raise RecordingError(f"minute {kline.open_time_ms}: too few trades to hit {extreme}")
        prices[interior.pop()] = extreme
    return prices


def _quantities_and_sides(rng: random.Random, kline: Kline) -> tuple[list[int], list[bool]]:
    """Quantities (in 1e-8 steps) and buyer-is-maker flags for the minute's trades.

    The quantities sum to the volume; where possible the trades with a taker buyer (m false)
    sum to the kline's taker-buy volume too, else the sides are drawn at random.
    """
    n = kline.trade_count
    total = int(kline.volume / QUANTITY_STEP)
    taker_buy = int(kline.taker_buy_volume / QUANTITY_STEP)
    if taker_buy in (0, total):
        return _split_units(rng, total, n), [taker_buy == 0] * n
    buys = min(n - 1, max(1, round(n * taker_buy / total)))
    if n < 2 or taker_buy < buys or total - taker_buy < n - buys:
        return _split_units(rng, total, n), [rng.random() < 0.5 for _ in range(n)]
    buy_positions = set(rng.sample(range(n), buys))
    buy_units = iter(_split_units(rng, taker_buy, buys))
    sell_units = iter(_split_units(rng, total - taker_buy, n - buys))
    quantities_units: list[int] = []
    flags: list[bool] = []
    for i in range(n):
        is_taker_buy = i in buy_positions
        quantities_units.append(next(buy_units) if is_taker_buy else next(sell_units))
        flags.append(not is_taker_buy)  # m = buyer is the maker = not a taker buy
    return quantities_units, flags


def expand_kline(
    rng: random.Random, kline: Kline, first_trade_id: int, symbol: str
) -> list[dict[str, object]]:
    """Trade payloads (Binance `trade` fields, ms times) that reproduce one kline exactly."""
    n = kline.trade_count
    if n == 0:
        if kline.volume != 0:
            raise RecordingError(f"minute {kline.open_time_ms} has volume but no trades")
        return []
    prices = _prices_for_minute(rng, kline)
    quantities_units, flags = _quantities_and_sides(rng, kline)
    trade_times = sorted(kline.open_time_ms + rng.randrange(MINUTE_MS) for _ in range(n))
    trades: list[dict[str, object]] = []
    last_event_time = 0
    for i in range(n):
        # The event is stamped a few ms after the trade, never before the previous event.
        event_time = max(last_event_time, trade_times[i] + rng.randint(0, 5))
        last_event_time = event_time
        trades.append(
            {
                "e": "trade",
                "E": event_time,
                "s": symbol,
                "t": first_trade_id + i,
                "p": f"{prices[i]:.8f}",
                "q": f"{QUANTITY_STEP * quantities_units[i]:.8f}",
                "T": trade_times[i],
                "m": flags[i],
                "M": True,
            }
        )
    return trades


def kline_trade_frames(
    klines: Iterable[Kline], symbol: str = "BTCUSDT", seed: int = SEED
) -> Iterator[str]:
    """Combined-stream frame lines for every trade of every kline, in trade-id order."""
    rng = random.Random(seed)  # noqa: S311 - seeded, deterministic data
    stream = f"{symbol.lower()}@trade"
    next_id = FIRST_TRADE_ID
    for kline in klines:
        for trade in expand_kline(rng, kline, next_id, symbol):
            yield json.dumps({"stream": stream, "data": trade}, separators=(",", ":"))
        next_id += kline.trade_count


def csv_trade_frames(csv_path: Path) -> Iterator[str]:
    """Frames from a recorder CSV of real trade messages; times stay in µs as recorded."""
    with csv_path.open(newline="", encoding="ascii") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if header[:9] != [
            "TimestampOfReceive",
            "Stream",
            "EventType",
            "EventTime",
            "TransactionTime",
            "Symbol",
            "TradeId",
            "Price",
            "Quantity",
        ]:
            raise RecordingError(f"unexpected CSV header in {csv_path}: {header}")
        for row in reader:
            trade = {
                "e": row[2],
                "E": int(row[3]),
                "s": row[5],
                "t": int(row[6]),
                "p": row[7],
                "q": row[8],
                "T": int(row[4]),
                "m": row[9] == "1",
                "M": row[10] == "True",
            }
            yield json.dumps({"stream": row[1], "data": trade}, separators=(",", ":"))


def gzip_lines(lines: Iterable[str]) -> bytes:
    """Gzip JSON Lines with no file name or timestamp in the header, so output is reproducible."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as archive:
        for line in lines:
            archive.write(line.encode("ascii") + b"\n")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--klines", type=Path, default=DEFAULT_KLINES)
    parser.add_argument("--trades-csv", type=Path, default=DEFAULT_TRADES_CSV)
    parser.add_argument("--btc-out", type=Path, default=DEFAULT_BTC_OUT)
    parser.add_argument("--trx-out", type=Path, default=DEFAULT_TRX_OUT)
    parser.add_argument(
        "--check", action="store_true", help="rebuild and compare with the files on disk"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    outputs = {
        args.btc_out: gzip_lines(kline_trade_frames(read_klines(args.klines))),
        args.trx_out: gzip_lines(csv_trade_frames(args.trades_csv)),
    }
    status = 0
    for path, payload in outputs.items():
        digest = hashlib.sha256(payload).hexdigest()
        if args.check:
            same = path.exists() and path.read_bytes() == payload
            logger.info("%s %s sha256 %s", "same" if same else "DIFFERENT", path.name, digest)
            status |= 0 if same else 1
        else:
            path.write_bytes(payload)
            logger.info("wrote %s (%d bytes, sha256 %s)", path, len(payload), digest)
    return status


if __name__ == "__main__":
    sys.exit(main())
