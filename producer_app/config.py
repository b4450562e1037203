"""The producer's settings: one frozen pydantic-settings object, read once from the environment.

Data comes from the process environment (and ``.env`` when present); it goes to every
other module as an argument. Nothing else in producer_app reads ``os.environ``. Shared
names are fixed by docs/architecture.md; the producer's own knobs start with ``PRODUCER_``.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from producer_app.events import STREAM_MINI_TICKER, STREAM_TRADE

#: librdkafka settings the delivery guarantees rely on (docs/producer.md, "Kafka").
PROTECTED_KAFKA_OPTIONS = frozenset(
    {"enable.idempotence", "acks", "bootstrap.servers", "on_delivery", "error_cb"}
)

#: Binance allows at most 1024 streams on one connection.
BINANCE_MAX_STREAMS_PER_CONNECTION = 1024


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ProducerSettings(BaseSettings):
    """Every knob of producer_app (env name = field name upper-cased)."""

    model_config = SettingsConfigDict(
        frozen=True,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # --- shared names (docs/architecture.md) ------------------------------------------
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prices: str = "binance.prices"
    kafka_topic_dlq: str = "binance.prices.dlq"
    kafka_topic_gaps: str = "binance.gaps"
    kafka_topic_resume: str = "binance.resume"
    kafka_topic_partitions: int = Field(default=6, ge=1)
    binance_ws_url: str = "wss://data-stream.binance.vision"
    binance_rest_url: str = "https://api.binance.com"
    binance_symbols: Annotated[tuple[str, ...], NoDecode] = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    binance_streams: Annotated[tuple[str, ...], NoDecode] = (STREAM_TRADE,)
    replay_host: str = "127.0.0.1"
    replay_port: int = Field(default=9443, ge=0, le=65535)

    # --- producer knobs ------------------------------------------------------------------
    producer_metrics_port: int = Field(default=9108, ge=0, le=65535)
    #: Address the metrics endpoint binds to: loopback unless asked (compose sets 0.0.0.0).
    producer_metrics_host: str = "127.0.0.1"
    #: "MICROSECOND" appends timeUnit=MICROSECOND to the stream URL (and asks REST for µs).
    producer_time_unit: Literal["MICROSECOND", "MILLISECOND"] = "MICROSECOND"
    #: Open a replacement connection after this long (Binance closes at 24 h).
    producer_rotation_interval_s: float = Field(default=23 * 3600, gt=0)
    #: Replace a connection that delivered no data frame for this long.
    producer_watchdog_timeout_s: float = Field(default=60.0, gt=0)
    #: Exponential reconnect backoff: base * 2**attempt, capped, with jitter.
    producer_backoff_base_s: float = Field(default=0.5, ge=0)
    producer_backoff_cap_s: float = Field(default=30.0, ge=0)
    #: Connection attempts allowed per window (Binance: 300 per 5 minutes per IP).
    producer_max_connect_attempts: int = Field(default=300, ge=1)
    producer_connect_window_s: float = Field(default=300.0, gt=0)
    producer_connect_timeout_s: float = Field(default=10.0, gt=0)
    #: Frames longer than this are dead-lettered unparsed.
    producer_max_frame_bytes: int = Field(default=65_536, ge=1024)
    producer_streams_per_connection: int = Field(
        default=BINANCE_MAX_STREAMS_PER_CONNECTION, ge=1, le=BINANCE_MAX_STREAMS_PER_CONNECTION
    )
    #: REST gap fill: trades per page (Binance max 1000), delay before filling a gap (so a
    #: lagging overlap connection can still deliver), pages per gap, HTTP timeout, retries.
    producer_rest_page_size: int = Field(default=1000, ge=1, le=1000)
    producer_gap_grace_s: float = Field(default=2.0, ge=0)
    producer_gap_max_pages: int = Field(default=50, ge=1)
    #: A closed gap larger than this many trade ids is not fetched (REST would take hours):
    #: it is recorded as unfilled with its size (another feed's ids, a days-long outage).
    producer_gap_max_trades: int = Field(default=50_000, ge=1)
    #: A failed REST fill stays pending and is retried after base * 2**(attempt-1), capped.
    producer_gap_retry_base_s: float = Field(default=2.0, gt=0)
    producer_gap_retry_cap_s: float = Field(default=300.0, gt=0)
    producer_rest_timeout_s: float = Field(default=10.0, gt=0)
    producer_rest_retries: int = Field(default=3, ge=0)
    #: Pending (possibly missing) id ranges kept per symbol before the oldest is given up.
    producer_max_pending_ranges: int = Field(default=1000, ge=1)
    #: Kafka producer tuning (measured in docs/benchmarks.md, producer).
    #: zstd: ~4% more process CPU than lz4, 40% fewer bytes (docs/benchmarks.md, producer).
    producer_compression: Literal["none", "lz4", "zstd", "snappy", "gzip"] = "zstd"
    producer_linger_ms: int = Field(default=20, ge=0)
    producer_batch_bytes: int = Field(default=1_048_576, ge=1024)
    producer_queue_max_messages: int = Field(default=500_000, ge=1000)
    producer_flush_timeout_s: float = Field(default=30.0, gt=0)
    #: Extra librdkafka properties, ``key=value`` separated by commas (TLS/SASL of a managed
    #: cluster, ...). The ones exactly-once relies on cannot be overridden.
    producer_kafka_options: Annotated[tuple[tuple[str, str], ...], NoDecode] = ()
    #: librdkafka message.timeout.ms: how long a queued message may wait for the broker's
    #: acknowledgement before its delivery fails (docs/producer.md, "Broker outages").
    producer_delivery_timeout_s: float = Field(default=300.0, gt=0)
    #: Seed the dedup/gap marks from the tail of the prices topic at start, so a restart
    #: neither re-produces nor silently skips trades (the replay command turns it off: a
    #: replay deliberately publishes its recording again).
    producer_resume_from_kafka: bool = True
    #: Identity of the feed in the resume topic's keys: a replay's ids never become the live
    #: feed's resume point. Empty = derived from BINANCE_WS_URL (scheme, host, port).
    producer_feed_id: str = ""
    #: How often acknowledged resume points are written to KAFKA_TOPIC_RESUME.
    producer_resume_interval_s: float = Field(default=1.0, gt=0)
    #: Event-time bounds against the producer's receive time (0 = no bound). AHEAD holds for
    #: replays too (their times are in the past); BEHIND suits a live feed only, so the replay
    #: command and `make demo` set it to 0 (docs/producer.md, "Out-of-range times").
    producer_max_event_ahead_s: float = Field(default=86_400.0, ge=0)
    producer_max_event_behind_s: float = Field(default=86_400.0, ge=0)
    #: Create missing topics at start (with KAFKA_TOPIC_PARTITIONS) when the stack did not.
    producer_create_topics: bool = True
    #: Stop (instead of reconnecting) when the server closes with 1000 "end of recording":
    #: set by `python -m producer_app.replay`.
    producer_stop_at_end_of_recording: bool = False
    producer_log_level: str = "INFO"

    @field_validator("binance_symbols", "binance_streams", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("producer_kafka_options", mode="before")
    @classmethod
    def _kafka_options(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        options = []
        for item in (part.strip() for part in value.split(",") if part.strip()):
            key, sep, option = str(item).partition("=")
            if not sep or not key.strip():
                raise ValueError(f"PRODUCER_KAFKA_OPTIONS: {item!r} is not key=value")
            if key.strip() in PROTECTED_KAFKA_OPTIONS:
                raise ValueError(
                    f"PRODUCER_KAFKA_OPTIONS: {key.strip()} cannot be changed "
                    "(the producer's exactly-once delivery relies on it)"
                )
            options.append((key.strip(), option.strip()))
        return tuple(options)

    @field_validator("binance_symbols")
    @classmethod
    def _upper_symbols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("BINANCE_SYMBOLS is empty")
        return tuple(dict.fromkeys(symbol.upper() for symbol in value))

    @field_validator("binance_streams")
    @classmethod
    def _known_streams(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        aliases = {"trade": STREAM_TRADE, "miniticker": STREAM_MINI_TICKER}
        streams = []
        for stream in value:
            key = stream.lower()
            if key not in aliases:
                raise ValueError(f"BINANCE_STREAMS: unknown stream {stream!r} (trade, miniTicker)")
            streams.append(aliases[key])
        if not streams:
            raise ValueError("BINANCE_STREAMS is empty")
        return tuple(dict.fromkeys(streams))

    @model_validator(mode="after")
    def _backoff_order(self) -> ProducerSettings:
        if self.producer_backoff_cap_s < self.producer_backoff_base_s:
            raise ValueError("PRODUCER_BACKOFF_CAP_S must be >= PRODUCER_BACKOFF_BASE_S")
        return self

    @property
    def feed_id(self) -> str:
        """``PRODUCER_FEED_ID``, else the WebSocket URL's scheme://host:port."""
        if self.producer_feed_id:
            return self.producer_feed_id
        parts = urlsplit(self.binance_ws_url)
        return f"{parts.scheme}://{parts.hostname or ''}:{parts.port or ''}"

    @property
    def stream_names(self) -> tuple[str, ...]:
        """Binance stream names, lower case: ``btcusdt@trade``, ``btcusdt@miniTicker``."""
        return tuple(
            f"{symbol.lower()}@{stream}"
            for symbol in self.binance_symbols
            for stream in self.binance_streams
        )

    @property
    def rest_time_unit_header(self) -> dict[str, str]:
        return (
            {"X-MBX-TIME-UNIT": "MICROSECOND"} if self.producer_time_unit == "MICROSECOND" else {}
        )


def load_settings(**overrides: object) -> ProducerSettings:
    """Read the environment once; keyword overrides win (tests and the replay command)."""
    return ProducerSettings(**overrides)  # type: ignore[arg-type]
