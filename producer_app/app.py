"""The producer: WebSocket frames -> parse -> dedup -> Kafka, plus gap filling and metrics.

Data comes from the ``StreamGroup`` connections (``producer_app.ws``) and the REST gap
filler; it goes to Kafka through ``KafkaSink``. Everything runs on one asyncio event loop
in one thread: the frame handler is synchronous and never awaits, so the tracker and the
producer need no locks. ``Producer.run()`` returns when asked to stop (SIGTERM/SIGINT in
``__main__``) or, in replay mode, when every connection ended with "end of recording";
either way it fills pending gaps, flushes Kafka and returns a ``RunSummary``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaException

from producer_app.config import ProducerSettings
from producer_app.events import STREAM_TRADE
from producer_app.gaps import GapFiller, RestClient
from producer_app.metrics import ProducerMetrics
from producer_app.parser import (
    CONTROL_SERVER_SHUTDOWN,
    TIME_OUT_OF_RANGE,
    Control,
    DeadLetter,
    ParsedEvent,
    _raw_text,
    parse_frame,
    time_bound_violation,
)
from producer_app.resume import ResumePoints, load_positions
from producer_app.sequence import SequenceTracker
from producer_app.sink import FatalSinkError, KafkaSink
from producer_app.ws import ConnectLimiter, StreamConnection, StreamGroup, stream_urls

log = logging.getLogger(__name__)

_POLL_EVERY_FRAMES = 1024  # serve delivery callbacks from the hot path this often


class FrameHandler(Protocol):
    """``handle_frame(frame, conn=None)``: what connections (and benchmarks) call per frame."""

    def __call__(self, frame: bytes, conn: StreamConnection | None = None) -> None: ...


@dataclass
class RunSummary:
    """What one run did; printed by the replay command and asserted by tests."""

    frames_received: int = 0
    events_queued: int = 0
    events_acked: int = 0
    delivery_failures: int = 0
    undelivered_at_exit: int = 0
    trades_reopened: int = 0
    events_lost: int = 0
    duplicates_dropped: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    gap_trades_filled: int = 0
    gap_trades_unfilled: int = 0
    reconnects: dict[str, int] = field(default_factory=dict)
    connections_opened: int = 0
    ended_by_end_of_recording: bool = False

    @property
    def ok(self) -> bool:
        """Nothing lost: every failed delivery was reopened as a gap or resent."""
        return self.events_lost == 0 and self.undelivered_at_exit == 0


class Producer:
    """Wires connections, parser, tracker, sink and gap filler together."""

    def __init__(
        self,
        settings: ProducerSettings,
        metrics: ProducerMetrics | None = None,
        sink: KafkaSink | None = None,
        rest: RestClient | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else ProducerMetrics()
        # "is not None": a KafkaSink with an empty queue has len() 0 and is falsy.
        self.sink = sink if sink is not None else KafkaSink(settings, self.metrics)
        self.tracker = SequenceTracker(
            settings.producer_gap_grace_s, settings.producer_max_pending_ranges
        )
        self.gap_filler = GapFiller(settings, self.tracker, self.sink, self.metrics, rest)
        self.resume_points = ResumePoints(settings.feed_id)
        self.sink.on_undelivered_trade = self._reopen_undelivered
        self.sink.on_acked_event = self.resume_points.acked
        self._synced_reopened = 0
        self._synced_lost = 0
        self._last_resume_write = 0.0
        self.limiter = ConnectLimiter(
            settings.producer_max_connect_attempts, settings.producer_connect_window_s
        )
        self._stop = asyncio.Event()
        self._max_frame = settings.producer_max_frame_bytes
        self.frames_received = 0
        self.duplicates = 0
        self.dead_letters: dict[str, int] = {}
        self._synced_frames = 0
        self._synced_duplicates = 0
        # (symbol, stream) -> newest sequence id seen at the last metrics sync
        self._feed_marks: dict[tuple[str, str], int | None] = {}
        self.handle_frame = self._make_handler()
        self.groups: list[StreamGroup] = self._make_groups()

    def _make_groups(self) -> list[StreamGroup]:
        settings = self.settings
        names = settings.stream_names
        per = settings.producer_streams_per_connection
        urls = stream_urls(settings.binance_ws_url, names, per, settings.producer_time_unit)
        groups = []
        for index, url in enumerate(urls):
            chunk = names[index * per : (index + 1) * per]
            trade_symbols = [
                n.split("@", 1)[0].upper() for n in chunk if n.endswith("@" + STREAM_TRADE)
            ]
            groups.append(
                StreamGroup(
                    url,
                    trade_symbols,
                    settings,
                    self.handle_frame,
                    self.limiter,
                    self.metrics,
                    self._lost,
                )
            )
        return groups

    # -- hot path ---------------------------------------------------------------------------
    def _make_handler(self) -> FrameHandler:
        """Build the per-frame handler as a closure over its collaborators.

        Local names instead of attribute lookups, and the Kafka ``produce`` called directly,
        save ~1 µs a frame (docs/benchmarks.md, producer); the logic is the plain sequence
        parse -> dedup -> produce, with dead letters and control messages off the fast path.
        """
        parse = parse_frame
        max_frame = self._max_frame
        accept = self.tracker.accept
        sink = self.sink
        kafka_produce = sink.raw_producer.produce
        topic = sink.topic_prices
        time_ns = time.time_ns
        parsed_event = ParsedEvent
        poll_every = _POLL_EVERY_FRAMES
        ahead_us = int(self.settings.producer_max_event_ahead_s * 1_000_000)
        behind_us = int(self.settings.producer_max_event_behind_s * 1_000_000)

        def handle_frame(frame: bytes, conn: StreamConnection | None = None) -> None:
            """Parse one frame, produce its event or dead letter. Never awaits or raises on data."""
            self.frames_received += 1
            received_at_us = time_ns() // 1000
            result = parse(frame, received_at_us, max_frame)
            if result.__class__ is parsed_event:
                event: ParsedEvent = result
                price_time = event.price_time_us
                if (ahead_us and price_time > received_at_us + ahead_us) or (
                    behind_us and price_time < received_at_us - behind_us
                ):
                    why = time_bound_violation(price_time, received_at_us, ahead_us, behind_us)
                    self.gap_filler.note_rejected(event.symbol, event.sequence_id)  # not via REST
                    self._handle_other(
                        DeadLetter(TIME_OUT_OF_RANGE, str(why), _raw_text(frame), event.symbol),
                        received_at_us,
                        conn,
                    )
                elif accept(event.symbol, event.stream, event.sequence_id, price_time):
                    try:
                        kafka_produce(topic, event.value, event.symbol)
                    except BufferError:
                        self._produce_waiting(event)
                    except KafkaException as err:
                        self._refused(event, err)
                    else:
                        sink.produced_events += 1
                else:
                    self.duplicates += 1
            else:
                self._handle_other(result, received_at_us, conn)
            if self.frames_received % poll_every == 0:
                sink.poll(0)

        return handle_frame

    def _produce_waiting(self, event: ParsedEvent) -> None:
        try:
            self.sink.produce_event(event.symbol, event.value)  # waits for room
        except FatalSinkError:
            self.request_stop()

    def _refused(self, event: ParsedEvent, err: KafkaException) -> None:
        try:
            self.sink.refused(event.value, err)
        except FatalSinkError:
            self.request_stop()

    def _reopen_undelivered(
        self, symbol: str, sequence_id: int, price_time_us: int, reason: str
    ) -> bool:
        """Delivery callback: the broker never acknowledged this trade; REST will fill it."""
        reopened = self.tracker.reopen(symbol, sequence_id, price_time_us, reason[:200])
        if reopened:
            self.gap_filler.poke()
        return reopened

    def _handle_other(
        self,
        result: DeadLetter | Control | ParsedEvent,
        received_at_us: int,
        conn: StreamConnection | None,
    ) -> None:
        if isinstance(result, DeadLetter):
            code = result.code
            self.dead_letters[code] = self.dead_letters.get(code, 0) + 1
            self.metrics.dead_letters.labels(code).inc()
            log.warning("dead letter (%s): %s", code, result.reason)
            # "<code>: <detail>": groupable by code, precise for a human.
            self.sink.produce_dead_letter(
                f"{code}: {result.reason}",
                result.raw,
                result.symbol,
                received_at_us,
                conn.url if conn is not None else "",
            )
        elif isinstance(result, Control):
            kind = result.kind
            self.metrics.control_messages.labels(kind).inc()
            log.info("control message %s on connection %s", kind, conn.id if conn else "-")
            if kind == CONTROL_SERVER_SHUTDOWN and conn is not None:
                conn.notice_server_shutdown()

    def _lost(self, symbols: Sequence[str]) -> None:
        for symbol in symbols:
            self.tracker.open_window(symbol)
        self.gap_filler.poke()

    # -- lifecycle ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def _sync_metrics(self) -> None:
        self.sink.sync_metrics()
        self._sync_feed_marks()
        if self.frames_received > self._synced_frames:
            self.metrics.frames_received.inc(self.frames_received - self._synced_frames)
            self._synced_frames = self.frames_received
        if self.duplicates > self._synced_duplicates:
            self.metrics.duplicates_dropped.labels("all").inc(
                self.duplicates - self._synced_duplicates
            )
            self._synced_duplicates = self.duplicates
        if self.sink.reopened > self._synced_reopened:
            self.metrics.trades_reopened.inc(self.sink.reopened - self._synced_reopened)
            self._synced_reopened = self.sink.reopened
        if self.sink.lost > self._synced_lost:
            self.metrics.events_lost.inc(self.sink.lost - self._synced_lost)
            self._synced_lost = self.sink.lost
        self.metrics.gap_ranges_pending.set(self.tracker.pending_count())

    def _sync_feed_marks(self) -> None:
        """Stamp each (symbol, stream) whose newest sequence id moved since the last sync.

        Off the hot path: the tracker already holds each pair's newest id, so the gauge costs
        the frame handler nothing; its resolution is the housekeeping period (0.2 s).
        """
        now = time.time()
        for symbol in self.settings.binance_symbols:
            for stream in self.settings.binance_streams:
                mark = self.tracker.high_water_mark(symbol, stream)
                key = (symbol, stream)
                if key not in self._feed_marks or self._feed_marks[key] != mark:
                    self._feed_marks[key] = mark
                    self.metrics.last_event_received.labels(symbol, stream).set(now)

    async def _housekeeping(self) -> None:
        while True:
            self.sink.poll(0)
            self._sync_metrics()
            if self.sink.fatal_error is not None:
                self.request_stop()
            now = time.monotonic()
            if now - self._last_resume_write >= self.settings.producer_resume_interval_s:
                self._last_resume_write = now
                self.write_resume_points()
            while self.tracker.id_space_resets:
                symbol, old, new = self.tracker.id_space_resets.pop(0)
                log.warning(
                    "%s: trade id %s is below the mark %s but later in time: another feed's "
                    "id space; starting over at it (pending ranges of the old ids dropped)",
                    symbol,
                    new,
                    old,
                )
            await asyncio.sleep(0.2)

    def write_resume_points(self) -> None:
        """Produce the acknowledged marks that moved (never past a pending id)."""
        if self.sink.fatal_error is not None:
            return
        records = self.resume_points.take_records(self.tracker.floor)
        for key, value in records:
            self.sink.produce_resume_point(key, value)
        if records:
            self.metrics.resume_points_written.inc(len(records))

    async def resume(self) -> int:
        """Seed the tracker from this feed's resume points; returns how many marks were set."""
        positions = await asyncio.to_thread(load_positions, self.settings)
        subscribed = set(self.settings.binance_symbols)
        seeded = 0
        for (symbol, stream), (sequence_id, price_time_us) in positions.items():
            if symbol not in subscribed or stream not in self.settings.binance_streams:
                continue
            self.tracker.seed(symbol, stream, sequence_id, price_time_us)
            if stream == STREAM_TRADE:
                # Trades after the mark happened while no producer was running.
                self.tracker.open_window(symbol, reason="producer restart")
            seeded += 1
            log.info(
                "resuming %s %s after sequence id %s (feed %s)",
                symbol,
                stream,
                sequence_id,
                self.settings.feed_id,
            )
        return seeded

    async def run(self) -> RunSummary:
        await asyncio.to_thread(self.sink.check_broker)
        if self.settings.producer_resume_from_kafka:
            await self.resume()
        try:
            self.metrics.serve(
                self.settings.producer_metrics_port, self.settings.producer_metrics_host
            )
        except OSError as err:
            log.error(
                "metrics endpoint on port %s unavailable: %s",
                self.settings.producer_metrics_port,
                err,
            )
        log.info(
            "producing %s streams over %s connection(s) to %s",
            len(self.settings.stream_names),
            len(self.groups),
            self.settings.kafka_topic_prices,
        )
        group_tasks = [
            asyncio.create_task(g.run(), name=f"group-{i}") for i, g in enumerate(self.groups)
        ]
        filler = asyncio.create_task(self.gap_filler.run(), name="gap-filler")
        housekeeping = asyncio.create_task(self._housekeeping(), name="housekeeping")
        all_groups: asyncio.Future[Any] = asyncio.gather(*group_tasks)
        stop_wait: asyncio.Future[Any] = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({all_groups, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for group in self.groups:
                group.stop()
            try:
                await asyncio.wait_for(all_groups, timeout=10)
            except TimeoutError:
                log.error("connections did not close in 10 s")
            stop_wait.cancel()
            filler.cancel()
            housekeeping.cancel()
            await asyncio.gather(filler, housekeeping, return_exceptions=True)
            fatal = self.sink.fatal_error
            if fatal is None:
                await self.gap_filler.drain()
            undelivered = await asyncio.to_thread(
                self.sink.flush, 5.0 if fatal is not None else None
            )
            self.write_resume_points()
            await asyncio.to_thread(self.sink.flush, 5.0)
            self._sync_metrics()
            fatal = self.sink.fatal_error  # the flushes may have named the underlying error
        if fatal is not None:
            raise FatalSinkError(
                f"fatal Kafka producer error: {fatal.str()} ({fatal.name()}); this producer "
                "instance cannot produce again: exiting so the supervisor restarts it (the "
                "restart resumes from the last acknowledged trade and fills the downtime from REST)"
            )
        return self.summary(undelivered)

    def summary(self, undelivered: int = 0) -> RunSummary:
        reconnects: dict[str, int] = {}
        for group in self.groups:
            for cause, count in group.reconnects.items():
                reconnects[cause] = reconnects.get(cause, 0) + count
        return RunSummary(
            frames_received=self.frames_received,
            events_queued=self.sink.produced_events,
            events_acked=self.sink.events_acked,
            delivery_failures=self.sink.failed,
            undelivered_at_exit=undelivered,
            trades_reopened=self.sink.reopened,
            events_lost=self.sink.lost,
            duplicates_dropped=self.duplicates,
            dead_letters=dict(self.dead_letters),
            gap_trades_filled=self.gap_filler.filled,
            gap_trades_unfilled=self.gap_filler.unfilled,
            reconnects=reconnects,
            connections_opened=sum(g.connections_opened for g in self.groups),
            ended_by_end_of_recording=all(g.finished_by_end_of_recording for g in self.groups),
        )
