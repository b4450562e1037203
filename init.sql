-- init.sql: the warehouse of the Binance pipeline.
-- Applied by the local stack (scripts/stack.sh) and mounted by docker-compose into
-- /docker-entrypoint-initdb.d. Ordered: schemas, roles, tables, indexes, functions,
-- procedures, views, grants. Safe to apply twice (every statement is create-if-absent or
-- create-or-replace). Contract: docs/architecture.md; guide: docs/warehouse.md.
-- Every day boundary is a UTC day, computed as `day::timestamp at time zone 'utc'`, so
-- nothing here depends on the session's TimeZone.

-- schemas -----------------------------------------------------------------------

create schema if not exists staging;
create schema if not exists analytics;

comment on schema staging is 'Raw prices and feed bookkeeping written by consumer_app.';
comment on schema analytics is 'Daily candles and psql-friendly views for analysts.';

-- roles -------------------------------------------------------------------------
-- One role per process (docs/local-stack.md, "Security"); POSTGRES_USER owns everything
-- and runs this file, no application logs in as it.
--   pipeline_writer   the consumer: writes staging, creates partitions, reads last prices
--   pipeline_dag      the Airflow DAG (connection pipeline_postgres): partitions, summary, purge
--   pipeline_analyst  read-only: analysts' psql, the dashboard
--   airflow           owner of Airflow's metadata database `airflow` (no access here)
-- Created NOLOGIN when missing; the launcher (scripts/stack.sh, compose's migration service)
-- gives each LOGIN and its password from the environment. Creating a role needs CREATEROLE:
-- the local stack creates them as superuser before applying this file as the owner.

do $$
declare
    role_name text;
begin
    foreach role_name in array array['pipeline_writer', 'pipeline_dag', 'pipeline_analyst', 'airflow']
    loop
        if not exists (select 1 from pg_roles where rolname = role_name) then
            execute format('create role %I nologin', role_name);
        end if;
    end loop;
end
$$;

-- tables ------------------------------------------------------------------------

-- staging.raw_prices: every trade and ticker price the consumer committed, one row per
-- (symbol, stream, event_time, sequence_id). Written by consumer_app (COPY, one transaction
-- per micro-batch); read by analytics.get_daily_summary and analytics.latest_prices.
-- Partitioned by UTC day of event_time: one partition staging.raw_prices_pYYYYMMDD per day,
-- made by staging.create_raw_prices_partitions, dropped whole by analytics.purge_raw_prices.
-- Column order is the consumer's COPY order (docs/architecture.md): do not reorder.
create table if not exists staging.raw_prices (
    symbol              text        not null,
    stream              text        not null check (stream in ('trade', 'miniTicker')),
    sequence_id         bigint      not null,
    event_time          timestamptz not null,  -- trade time for trades, exchange event time for tickers
    exchange_event_time timestamptz not null,
    price               numeric     not null check (price > 0),
    quantity            numeric,               -- null for tickers
    is_buyer_maker      boolean,               -- null for tickers
    previous_price      numeric,
    price_change        numeric,
    price_change_pct    numeric,
    received_at         timestamptz not null,
    ingested_at         timestamptz not null default now(),
    source              text        not null default 'ws',
    primary key (symbol, stream, event_time, sequence_id)
) partition by range (event_time);

comment on table staging.raw_prices is
    'Every trade/ticker price committed by consumer_app; one partition per UTC day (raw_prices_pYYYYMMDD).';
comment on column staging.raw_prices.event_time is
    'Price time: trade time T for trades, exchange event time E for tickers. Orders events with sequence_id.';
comment on column staging.raw_prices.sequence_id is
    'Trade id t for trades; event time E in ms for tickers. Breaks ties inside one millisecond.';

-- staging.consumer_batches: ledger of committed Spark micro-batches, written by
-- consumer_app in the same transaction as the batch's rows, so a re-run batch is skipped.
create table if not exists staging.consumer_batches (
    query_id     text        not null,
    batch_id     bigint      not null,
    row_count    integer     not null,
    committed_at timestamptz not null default now(),
    primary key (query_id, batch_id)
);

-- staging.feed_gaps: sequence gaps the producer saw, filled from REST or not. Written by
-- consumer_app from the binance.gaps topic; read by the Airflow data-quality check.
create table if not exists staging.feed_gaps (
    symbol           text        not null,
    stream           text        not null,
    first_missing_id bigint      not null,
    last_missing_id  bigint,
    window_start     timestamptz not null,
    window_end       timestamptz not null,
    filled_count     bigint      not null default 0,
    unfilled_count   bigint      not null default 0,
    status           text        not null check (status in ('filled', 'partially_filled', 'unfilled')),
    reason           text        not null,
    detected_at      timestamptz not null,
    primary key (symbol, stream, window_start, first_missing_id)
);

-- staging.rejected_records: the consumer's dead letters (CONTRACT 4, docs/architecture.md):
-- every Kafka record of the prices or gaps topic it could not store (not a valid event, a
-- time out of range, a gap report without its key fields, a row PostgreSQL refused), with
-- the reason code, a detail, the record's coordinates and bytes. Written by consumer_app in
-- the same transaction as the batch's rows; one row per Kafka record (re-reading the topic
-- changes nothing). Read by operators (docs/consumer.md, "Dead letters").
create table if not exists staging.rejected_records (
    topic           text        not null,
    kafka_partition integer     not null,
    kafka_offset    bigint      not null,
    reason          text        not null,  -- a code: not_an_event, missing_field, time_out_of_range, ...
    detail          text        not null,  -- what exactly, for a person
    kafka_key       bytea,
    kafka_value     bytea,                 -- the record as it was in Kafka, byte for byte
    kafka_timestamp timestamptz,
    rejected_at     timestamptz not null default now(),
    primary key (topic, kafka_partition, kafka_offset)
);

comment on table staging.rejected_records is
    'Kafka records consumer_app could not store, with the reason; one row per (topic, partition, offset).';

-- analytics.daily_summary_dw: one candle per (UTC day, symbol). Written only by
-- analytics.get_daily_summary (upsert); read by analysts, analytics.daily_candles and the
-- Airflow data-quality check. Prices are exact NUMERIC, never floats.
create table if not exists analytics.daily_summary_dw (
    event_date       date        not null,
    symbol           text        not null,
    open_price       numeric     not null,
    high_price       numeric     not null,
    low_price        numeric     not null,
    close_price      numeric     not null,
    avg_price        numeric     not null,
    volume           numeric     not null,
    quote_volume     numeric     not null,
    vwap             numeric,
    trade_count      bigint      not null,
    first_event_time timestamptz not null,
    last_event_time  timestamptz not null,
    candle_source    text        not null default 'trade' check (candle_source in ('trade', 'miniTicker')),
    computed_at      timestamptz not null default now(),
    primary key (event_date, symbol)
);

-- databases created from the first skeleton of this file lack candle_source
alter table analytics.daily_summary_dw
    add column if not exists candle_source text not null default 'trade'
    check (candle_source in ('trade', 'miniTicker'));

comment on table analytics.daily_summary_dw is
    'One daily candle per (UTC day, symbol), upserted by CALL analytics.get_daily_summary(day).';
comment on column analytics.daily_summary_dw.candle_source is
    'trade: OHLC from that day''s trades; miniTicker: the symbol had no trades that day, OHLC from ticker prices.';
comment on column analytics.daily_summary_dw.avg_price is
    'Plain mean of the candle_source prices of the day (the volume-weighted mean is vwap).';
comment on column analytics.daily_summary_dw.computed_at is
    'When the row last changed; a re-run that computes identical values leaves the row (and this) alone.';

-- ---- candles, completeness and reconciliation (issue 13) ----------------------------------
-- staging.consumer_progress: the consumer driver's own progress record, one row per streaming
-- query, rewritten every few seconds by consumer_app/progress.py (staging.record_consumer_progress).
-- Read by the Airflow DAG's completeness sensor: "caught up" means kafka_lag = 0 in a fresh row.
create table if not exists staging.consumer_progress (
    consumer      text        primary key,  -- the streaming query's name, e.g. consumer_prices
    query_id      text,                     -- its persistent id (the ledger's query_id)
    last_batch_id bigint,
    kafka_lag     bigint,                   -- Kafka end offsets minus processed; null = unknown
    progress_at   timestamptz,              -- time of Spark's last progress report
    updated_at    timestamptz not null default now()
);

comment on table staging.consumer_progress is
    'Consumer driver progress (lag, last batch) per streaming query; written by consumer_app/progress.py, read by the DAG sensor.';

-- staging.consumer_symbol_progress: per (symbol, stream) the newest committed price time and
-- when it last moved (changed_at, wall clock): "idle" = changed_at long ago. Written by
-- staging.record_consumer_progress from analytics.latest_prices; read by the DAG sensor.
create table if not exists staging.consumer_symbol_progress (
    symbol            text        not null,
    stream            text        not null,
    newest_event_time timestamptz not null,
    changed_at        timestamptz not null,
    updated_at        timestamptz not null,
    primary key (symbol, stream)
);

comment on table staging.consumer_symbol_progress is
    'Newest committed event time per (symbol, stream) and when it last moved; written with staging.consumer_progress.';

-- analytics.candles_1m: one-minute candles, materialised from staging.raw_prices by
-- analytics.refresh_candles_1m (the DAG, and analytics.purge_raw_prices before it drops a day)
-- and kept after the raw partitions are gone. Same rules as the daily summary: trades make the
-- candle when the minute has any, else ticker prices (volume 0, trade_count 0). Read by
-- analytics.candles and the reconciliation.
create table if not exists analytics.candles_1m (
    symbol         text        not null,
    bucket_start   timestamptz not null,   -- the minute, UTC-aligned
    open_price     numeric     not null,
    high_price     numeric     not null,
    low_price      numeric     not null,
    close_price    numeric     not null,
    volume         numeric     not null,
    quote_volume   numeric     not null,
    trade_count    bigint      not null,
    first_trade_id bigint,                 -- null for ticker candles
    last_trade_id  bigint,
    candle_source  text        not null check (candle_source in ('trade', 'miniTicker')),
    computed_at    timestamptz not null default now(),
    primary key (symbol, bucket_start)
);

comment on table analytics.candles_1m is
    'Materialised 1-minute candles (kept past the raw retention); written by analytics.refresh_candles_1m.';

-- analytics.candles_1m_coverage: per UTC day, the minutes materialised in analytics.candles_1m:
-- [day 00:00, materialised_until). analytics.candles reads those minutes from candles_1m and the
-- rest of the day from staging.raw_prices. Written by analytics.refresh_candles_1m.
create table if not exists analytics.candles_1m_coverage (
    event_date         date        primary key,
    materialised_until timestamptz not null,
    refreshed_at       timestamptz not null default now(),
    raw_purged_at      timestamptz  -- set by purge_raw_prices: candles_1m is then the only copy
);

comment on table analytics.candles_1m_coverage is
    'Minutes of each UTC day held by analytics.candles_1m: [day start, materialised_until).';

-- analytics.candles_1m_dirty: one-minute candles whose raw rows changed after they were
-- materialised (a late event, a REST fill, a delete): analytics.candles computes those minutes
-- from staging.raw_prices until a refresh re-materialises them and removes the mark. Written in
-- the writer's own transaction by the triggers on staging.raw_prices
-- (staging.mark_candles_1m_dirty), read and emptied by analytics.materialise_candles_1m.
create table if not exists analytics.candles_1m_dirty (
    symbol       text        not null,
    bucket_start timestamptz not null,   -- the minute, UTC-aligned
    marked_at    timestamptz not null default now(),
    primary key (symbol, bucket_start)
);

comment on table analytics.candles_1m_dirty is
    'Materialised minutes whose raw rows changed since; analytics.candles reads them from staging.raw_prices.';

-- analytics.exchange_klines: the exchange's own klines (GET /api/v3/klines, intervals 1d and
-- 1m), fetched by the Airflow DAG from BINANCE_REST_URL and upserted; compared with our
-- candles by analytics.reconcile_day.
create table if not exists analytics.exchange_klines (
    symbol                 text        not null,
    kline_interval         text        not null check (kline_interval in ('1m', '1d')),
    open_time              timestamptz not null,
    close_time             timestamptz not null,
    open_price             numeric     not null,
    high_price             numeric     not null,
    low_price              numeric     not null,
    close_price            numeric     not null,
    volume                 numeric     not null,
    quote_volume           numeric     not null,
    trade_count            bigint      not null,
    taker_buy_volume       numeric     not null,
    taker_buy_quote_volume numeric     not null,
    fetched_at             timestamptz not null default now(),
    primary key (symbol, kline_interval, open_time)
);

comment on table analytics.exchange_klines is
    'Klines as the exchange returned them (1d and 1m), fetched by the DAG; compared by analytics.reconcile_day.';

-- analytics.daily_reconciliation: the outcome of comparing one daily candle with the
-- exchange's klines. Written only by analytics.reconcile_day (the DAG); shown beside the candle
-- by analytics.daily_candles, which treats a row checked against an older version of the candle
-- (candle_computed_at <> daily_summary_dw.computed_at) as not checked yet.
create table if not exists analytics.daily_reconciliation (
    event_date             date        not null,
    symbol                 text        not null,
    status                 text        not null
        check (status in ('reconciled', 'mismatch', 'incomplete', 'unverified')),
    candle_computed_at     timestamptz not null,
    checked_at             timestamptz not null default now(),
    exchange_open          numeric,
    exchange_high          numeric,
    exchange_low           numeric,
    exchange_close         numeric,
    exchange_volume        numeric,
    exchange_trade_count   bigint,
    mismatched_minutes     integer     not null default 0,
    differences            jsonb       not null default '[]',
    detail                 text,
    primary key (event_date, symbol)
);

comment on table analytics.daily_reconciliation is
    'Daily candle vs the exchange''s klines: status, the exchange''s values, the differing minutes; written by analytics.reconcile_day.';

-- daily_summary_dw gains trade-id completeness, computed by analytics.get_daily_summary from the
-- same scan (null for ticker candles): expected ids = last - first + 1, missing = expected -
-- trade_count, the missing id ranges (inclusive, at most 1000), trades filled from REST.
alter table analytics.daily_summary_dw
    add column if not exists first_trade_id bigint,
    add column if not exists last_trade_id bigint,
    add column if not exists expected_trade_ids bigint,
    add column if not exists missing_trade_ids bigint,
    add column if not exists missing_trade_ranges jsonb,
    add column if not exists rest_filled_trades bigint;

comment on column analytics.daily_summary_dw.missing_trade_ranges is
    'Trade ids absent between first_trade_id and last_trade_id, as [[first, last], ...] (inclusive, at most 1000 ranges).';

-- indexes -----------------------------------------------------------------------

-- staging.raw_prices has ONE index, its primary key (symbol, stream, event_time, sequence_id):
-- it rejects duplicate events (a set of columns is unique whatever their order) and its
-- order is the per-symbol time order that the summary (each day's first and last rows) and
-- analytics.latest_prices (newest row per symbol) read. Every index is paid for on every
-- COPY: with the former second index (symbol, stream, event_time, sequence_id) beside a key
-- in (..., sequence_id, event_time) order, a binary COPY reached 163k rows/s; with the one
-- index, 300k (docs/benchmarks.md, consumer). Databases created before this change are
-- migrated here: the key is rebuilt in the new order, then the old index dropped.
do $$
declare
    old_key text;
begin
    select pg_get_constraintdef(c.oid) into old_key
    from pg_constraint as c
    where c.conrelid = 'staging.raw_prices'::regclass and c.contype = 'p';
    if old_key is distinct from 'PRIMARY KEY (symbol, stream, event_time, sequence_id)' then
        if old_key is not null then
            alter table staging.raw_prices drop constraint raw_prices_pkey;
        end if;
        alter table staging.raw_prices
            add constraint raw_prices_pkey primary key (symbol, stream, event_time, sequence_id);
    end if;
end
$$;
drop index if exists staging.raw_prices_symbol_stream_time_idx;

-- staging.feed_gaps counts are bigint: a gap between two feeds' id spaces (a replay's ids,
-- then the live feed's) spans billions of ids. Databases created with integer counts are
-- migrated in place here (once: the types are checked first, so a second run does nothing).
do $$
begin
    if exists (
        select 1 from information_schema.columns
        where table_schema = 'staging' and table_name = 'feed_gaps'
          and column_name in ('filled_count', 'unfilled_count') and data_type <> 'bigint'
    ) then
        -- the view reads these columns; it is created again further down
        drop view if exists analytics.unfilled_gaps;
        alter table staging.feed_gaps
            alter column filled_count type bigint,
            alter column unfilled_count type bigint;
    end if;
end
$$;

-- The data-quality check looks up gaps overlapping one UTC day.
create index if not exists feed_gaps_window_idx
    on staging.feed_gaps (window_start, window_end);

-- functions ---------------------------------------------------------------------

-- analytics.utc_day_start: the instant a UTC day begins, whatever the session TimeZone.
-- Used by every procedure here; immutable so the planner prunes partitions with it.
create or replace function analytics.utc_day_start(p_day date)
returns timestamptz
language sql
immutable
strict
parallel safe
as $$
    select p_day::timestamp at time zone 'utc'
$$;

-- analytics.utc_today: the current UTC date (today for 00:00..23:59:59 UTC).
create or replace function analytics.utc_today()
returns date
language sql
stable
parallel safe
as $$
    select (now() at time zone 'utc')::date
$$;

-- analytics.daily_stream_stats: one UTC day's aggregates per (symbol, stream) from a single
-- scan of that day's staging.raw_prices partition: row count, low, high, plain average,
-- volume, quote volume (sum price * quantity), first and last event time, lowest and highest
-- sequence id, rows filled from REST. Read by analytics.get_daily_summary; handy in psql too.
-- PL/pgSQL RETURN QUERY so the scan may run as a parallel query even when called from a
-- procedure (an INSERT .. SELECT cannot). Dropped first: its columns grew (issue 13).
drop function if exists analytics.daily_stream_stats(date);
create function analytics.daily_stream_stats(p_day date)
returns table (
    symbol           text,
    stream           text,
    row_count        bigint,
    low_price        numeric,
    high_price       numeric,
    avg_price        numeric,
    volume           numeric,
    quote_volume     numeric,
    first_event_time timestamptz,
    last_event_time  timestamptz,
    min_sequence_id  bigint,
    max_sequence_id  bigint,
    rest_rows        bigint
)
language plpgsql
stable
parallel safe
as $$
#variable_conflict use_column
begin
    return query
    select
        r.symbol,
        r.stream,
        count(*),
        min(r.price),
        max(r.price),
        avg(r.price),
        coalesce(sum(r.quantity), 0),
        coalesce(sum(r.price * r.quantity), 0),
        min(r.event_time),
        max(r.event_time),
        min(r.sequence_id),
        max(r.sequence_id),
        count(*) filter (where r.source = 'rest')
    from staging.raw_prices as r
    where r.event_time >= analytics.utc_day_start(p_day)
      and r.event_time < analytics.utc_day_start(p_day + 1)
    group by r.symbol, r.stream;
end
$$;

-- ---- candles at every timeframe (issue 13) ------------------------------------------------

-- analytics.candle_bucket_spec: checks a candle bucket and says how buckets are aligned.
-- Allowed: whole minutes dividing a day (1m, 5m, 15m, 1h, 4h, ...), whole days (weeks of 7-day
-- multiples start on Monday 00:00 UTC like Binance's 1w, other day counts on 1970-01-01), and
-- '1 month' (calendar months, UTC). Anything else raises an error naming what is allowed.
create or replace function analytics.candle_bucket_spec(
    bucket interval,
    out stride interval,
    out origin timestamptz,
    out is_month boolean
)
language plpgsql
immutable
strict
parallel safe
as $$
declare
    months  constant numeric := extract(year from bucket) * 12 + extract(month from bucket);
    seconds constant numeric := extract(day from bucket) * 86400 + extract(hour from bucket) * 3600
                                + extract(minute from bucket) * 60 + extract(second from bucket);
begin
    if months <> 0 then
        if months = 1 and seconds = 0 then
            stride := interval '1 month';
            origin := timestamptz '1970-01-01 00:00:00+00';
            is_month := true;
            return;
        end if;
    elsif seconds > 0 and seconds % 60 = 0
          and ((seconds < 86400 and 86400 % seconds = 0) or (seconds >= 86400 and seconds % 86400 = 0)) then
        stride := make_interval(secs => seconds);
        origin := case when seconds % 604800 = 0 then timestamptz '1970-01-05 00:00:00+00'  -- a Monday
                       else timestamptz '1970-01-01 00:00:00+00' end;
        is_month := false;
        return;
    end if;
    raise exception 'candles: unsupported bucket %; use whole minutes dividing a day (1 minute, 5 minutes, 15 minutes, 1 hour, 4 hours), whole days (1 day, 7 days) or 1 month', bucket
        using errcode = 'invalid_parameter_value';
end
$$;

-- analytics.raw_candles_1m: one symbol's one-minute candles computed from staging.raw_prices
-- for the minutes in [p_from, p_to) (minute-aligned). Trades make a minute's candle when it has
-- any, else ticker prices; open/close are the first/last price in (event_time, sequence_id)
-- order, found by the primary key's index at the minute's first and last instant. Read by
-- analytics.candles (minutes not materialised yet) and analytics.refresh_candles_1m.
create or replace function analytics.raw_candles_1m(p_symbol text, p_from timestamptz, p_to timestamptz)
returns table (
    bucket_start   timestamptz,
    open_price     numeric,
    high_price     numeric,
    low_price      numeric,
    close_price    numeric,
    volume         numeric,
    quote_volume   numeric,
    trade_count    bigint,
    first_trade_id bigint,
    last_trade_id  bigint,
    candle_source  text
)
language sql
stable
parallel safe
as $$
    with minute_stats as (
        select
            r.stream,
            date_bin(interval '1 minute', r.event_time, timestamptz '1970-01-01 00:00:00+00') as minute,
            min(r.price)                          as low_price,
            max(r.price)                          as high_price,
            coalesce(sum(r.quantity), 0)          as volume,
            coalesce(sum(r.price * r.quantity), 0) as quote_volume,
            count(*)                              as row_count,
            min(r.event_time)                     as first_event_time,
            max(r.event_time)                     as last_event_time,
            min(r.sequence_id)                    as min_sequence_id,
            max(r.sequence_id)                    as max_sequence_id
        from staging.raw_prices as r
        where r.symbol = p_symbol
          -- every stream the table allows (its check): gives the primary key
          -- (symbol, stream, event_time, ...) the stream, so a minute is an index range scan,
          -- not a scan of the whole day (docs/benchmarks.md, candles)
          and r.stream in ('trade', 'miniTicker')
          and r.event_time >= p_from
          and r.event_time < p_to
        group by r.stream, 2
    ),

    chosen as (
        -- trades make the candle when the minute has any, else tickers do
        select distinct on (minute) *
        from minute_stats
        order by minute, (stream = 'trade') desc
    )

    select
        c.minute,
        (
            select e.price from staging.raw_prices as e
            where e.symbol = p_symbol and e.stream = c.stream and e.event_time = c.first_event_time
              and e.event_time >= p_from and e.event_time < p_to
            order by e.sequence_id
            limit 1
        ),
        c.high_price,
        c.low_price,
        (
            select e.price from staging.raw_prices as e
            where e.symbol = p_symbol and e.stream = c.stream and e.event_time = c.last_event_time
              and e.event_time >= p_from and e.event_time < p_to
            order by e.sequence_id desc
            limit 1
        ),
        case when c.stream = 'trade' then c.volume else 0 end,
        case when c.stream = 'trade' then c.quote_volume else 0 end,
        case when c.stream = 'trade' then c.row_count else 0 end,
        case when c.stream = 'trade' then c.min_sequence_id end,
        case when c.stream = 'trade' then c.max_sequence_id end,
        c.stream
    from chosen as c
$$;

-- analytics.symbols_between: the symbols with rows in staging.raw_prices in [p_from, p_to), by
-- a loose index scan over the primary key (no scan of the rows). Read by refresh_candles_1m.
create or replace function analytics.symbols_between(p_from timestamptz, p_to timestamptz)
returns setof text
language sql
stable
parallel safe
as $$
    with recursive found as (
        (
            select r.symbol from staging.raw_prices as r
            where r.event_time >= p_from and r.event_time < p_to
            order by r.symbol
            limit 1
        )
        union all
        select next_symbol.symbol
        from found
        cross join lateral (
            select r.symbol from staging.raw_prices as r
            where r.symbol > found.symbol and r.event_time >= p_from and r.event_time < p_to
            order by r.symbol
            limit 1
        ) as next_symbol
    )
    select symbol from found
$$;

-- analytics.candles: THE candle query for psql and the dashboard (contract: docs/warehouse.md).
-- One row per UTC-aligned bucket that has prices, for the buckets STARTING in
-- [from_time, to_time), each complete (all its minutes, even past to_time); ordered by
-- bucket_start; buckets without prices are absent. A bucket's candle: trades when it has any,
-- else ticker prices (volume 0, trade_count 0, vwap null), like the daily summary; open/close
-- in (event_time, sequence_id) order. Minutes come from analytics.candles_1m where materialised
-- (analytics.candles_1m_coverage; kept after the raw partitions are purged) and unchanged since
-- (not in analytics.candles_1m_dirty), and from staging.raw_prices otherwise; longer buckets
-- are rolled up from the minutes. Any session
-- TimeZone gives the same rows.
create or replace function analytics.candles(
    symbol    text,
    bucket    interval,
    from_time timestamptz,
    to_time   timestamptz
)
returns table (
    bucket_start timestamptz,
    open_price   numeric,
    high_price   numeric,
    low_price    numeric,
    close_price  numeric,
    volume       numeric,
    quote_volume numeric,
    vwap         numeric,
    trade_count  bigint
)
language plpgsql
stable
parallel safe
-- JIT compiling this plan cost 13 s a call on a loaded 2-core machine (its cost estimate passes
-- jit_above_cost), the query itself 0.7 s: docs/benchmarks.md
set jit = off
as $$
#variable_conflict use_column
declare
    spec        record;
    range_start timestamptz;
    range_end   timestamptz;
    first_day   date;
    last_day    date;
begin
    if candles.symbol is null or candles.bucket is null or candles.from_time is null
       or candles.to_time is null then
        raise exception 'candles: symbol, bucket, from_time and to_time must not be null'
            using errcode = 'null_value_not_allowed';
    end if;
    spec := analytics.candle_bucket_spec(candles.bucket);
    -- the first bucket start at or after from_time .. the first at or after to_time
    range_start := case when spec.is_month
        then date_trunc('month', candles.from_time at time zone 'utc') at time zone 'utc'
        else date_bin(spec.stride, candles.from_time, spec.origin) end;
    if range_start < candles.from_time then
        range_start := range_start + spec.stride;
    end if;
    range_end := case when spec.is_month
        then date_trunc('month', candles.to_time at time zone 'utc') at time zone 'utc'
        else date_bin(spec.stride, candles.to_time, spec.origin) end;
    if range_end < candles.to_time then
        range_end := range_end + spec.stride;
    end if;
    if range_end <= range_start then
        return;
    end if;
    first_day := (range_start at time zone 'utc')::date;
    last_day := ((range_end - interval '1 microsecond') at time zone 'utc')::date;
    if last_day - first_day > 3700 then
        raise exception 'candles: % .. % is more than 3700 days; ask for a shorter range', range_start, range_end
            using errcode = 'invalid_parameter_value';
    end if;

    return query
    with days as (
        select
            greatest(analytics.utc_day_start(d.day), range_start)   as lo,
            least(analytics.utc_day_start(d.day + 1), range_end)    as hi,
            coalesce(cov.materialised_until, analytics.utc_day_start(d.day)) as covered_until,
            cov.raw_purged_at is not null                            as purged
        from generate_series(0, last_day - first_day) as g(n)
        cross join lateral (select first_day + g.n as day) as d
        left join analytics.candles_1m_coverage as cov on cov.event_date = d.day
    ),

    minutes as (
        select m.bucket_start, m.open_price, m.high_price, m.low_price, m.close_price,
               m.volume, m.quote_volume, m.trade_count, m.candle_source
        from days
        join analytics.candles_1m as m
          on m.symbol = candles.symbol
         and m.bucket_start >= days.lo
         and m.bucket_start < least(days.hi, days.covered_until)
        where days.purged or not exists (
            select 1 from analytics.candles_1m_dirty as dirty
            where dirty.symbol = m.symbol and dirty.bucket_start = m.bucket_start
        )
        union all
        select raw.bucket_start, raw.open_price, raw.high_price, raw.low_price, raw.close_price,
               raw.volume, raw.quote_volume, raw.trade_count, raw.candle_source
        from days
        cross join lateral analytics.raw_candles_1m(
            candles.symbol, greatest(days.lo, days.covered_until), days.hi
        ) as raw
        where greatest(days.lo, days.covered_until) < days.hi
        union all
        -- materialised minutes whose rows changed since (late events, REST fills): from the rows
        select raw.bucket_start, raw.open_price, raw.high_price, raw.low_price, raw.close_price,
               raw.volume, raw.quote_volume, raw.trade_count, raw.candle_source
        from days
        join analytics.candles_1m_dirty as dirty
          on dirty.symbol = candles.symbol
         and dirty.bucket_start >= days.lo
         and dirty.bucket_start < least(days.hi, days.covered_until)
         and not days.purged
        cross join lateral analytics.raw_candles_1m(
            candles.symbol, dirty.bucket_start, dirty.bucket_start + interval '1 minute'
        ) as raw
    ),

    per_source as (
        select
            case when spec.is_month
                then date_trunc('month', m.bucket_start at time zone 'utc') at time zone 'utc'
                else date_bin(spec.stride, m.bucket_start, spec.origin) end  as bucket,
            m.candle_source,
            (array_agg(m.open_price order by m.bucket_start))[1]            as open_price,
            max(m.high_price)                                               as high_price,
            min(m.low_price)                                                as low_price,
            (array_agg(m.close_price order by m.bucket_start desc))[1]      as close_price,
            sum(m.volume)                                                   as volume,
            sum(m.quote_volume)                                             as quote_volume,
            sum(m.trade_count)::bigint                                      as trade_count
        from minutes as m
        group by 1, 2
    )

    -- trades make the bucket's candle when it has any, else tickers do
    select distinct on (p.bucket)
        p.bucket, p.open_price, p.high_price, p.low_price, p.close_price, p.volume,
        p.quote_volume,
        case when p.candle_source = 'trade' and p.volume > 0 then p.quote_volume / p.volume end,
        p.trade_count
    from per_source as p
    order by p.bucket, (p.candle_source = 'trade') desc;
end
$$;

comment on function analytics.candles(text, interval, timestamptz, timestamptz) is
    'Candles of one symbol for the UTC-aligned buckets starting in [from_time, to_time): 1m .. 4h, days, weeks, 1 month.';

-- analytics.kline_differences: our candles of one symbol and UTC day against the exchange's
-- klines in analytics.exchange_klines, per compared field (open, high, low, close, volume,
-- trade count): one row per kline that differs (the day '1d', then each differing minute '1m'),
-- with both sides' values. A minute with no trades on either side is equal. Read by
-- analytics.reconcile_day and the DAG.
create or replace function analytics.kline_differences(p_day date, p_symbol text)
returns table (
    kline_interval text,
    open_time      timestamptz,
    fields         text[],
    ours           jsonb,
    exchange       jsonb
)
language sql
stable
as $$
    with ours_1m as (
        select c.bucket_start, c.open_price, c.high_price, c.low_price, c.close_price, c.volume, c.trade_count
        from analytics.candles(p_symbol, interval '1 minute', analytics.utc_day_start(p_day),
                               analytics.utc_day_start(p_day + 1)) as c
        where c.trade_count > 0
    ),

    exchange_1m as (
        select k.open_time, k.open_price, k.high_price, k.low_price, k.close_price, k.volume, k.trade_count
        from analytics.exchange_klines as k
        where k.symbol = p_symbol and k.kline_interval = '1m' and k.trade_count > 0
          and k.open_time >= analytics.utc_day_start(p_day)
          and k.open_time < analytics.utc_day_start(p_day + 1)
    ),

    ours_1d as (
        select analytics.utc_day_start(dw.event_date) as open_time, dw.open_price, dw.high_price,
               dw.low_price, dw.close_price, dw.volume, dw.trade_count
        from analytics.daily_summary_dw as dw
        where dw.event_date = p_day and dw.symbol = p_symbol
    ),

    exchange_1d as (
        select k.open_time, k.open_price, k.high_price, k.low_price, k.close_price, k.volume, k.trade_count
        from analytics.exchange_klines as k
        where k.symbol = p_symbol and k.kline_interval = '1d'
          and k.open_time = analytics.utc_day_start(p_day)
    ),

    paired as (
        select '1d' as kline_interval, coalesce(o.open_time, x.open_time) as open_time,
               to_jsonb(o) - 'open_time' as ours, to_jsonb(x) - 'open_time' as exchange
        from ours_1d as o full join exchange_1d as x on x.open_time = o.open_time
        union all
        select '1m', coalesce(o.bucket_start, x.open_time),
               to_jsonb(o) - 'bucket_start', to_jsonb(x) - 'open_time'
        from ours_1m as o full join exchange_1m as x on x.open_time = o.bucket_start
    )

    select p.kline_interval, p.open_time, f.fields, p.ours, p.exchange
    from paired as p
    cross join lateral (
        select array_agg(field order by ordinality) as fields
        from unnest(array['open_price', 'high_price', 'low_price', 'close_price', 'volume', 'trade_count'])
             with ordinality as u(field, ordinality)
        where (p.ours -> u.field)::numeric is distinct from (p.exchange -> u.field)::numeric
    ) as f
    where f.fields is not null
    order by p.kline_interval, p.open_time
$$;

-- procedures --------------------------------------------------------------------

-- staging.create_raw_prices_partitions: makes one partition per UTC day in [p_from, p_to]
-- (both inclusive), named staging.raw_prices_pYYYYMMDD, range [day 00:00 UTC, day+1 00:00 UTC).
-- Called ahead by staging.ensure_raw_prices_partitions (Airflow) and on demand by
-- consumer_app before it writes a day it has not seen. Security definer so the consumer's
-- login (a member of pipeline_writer, not the table owner) may create partitions; an
-- advisory lock serialises concurrent callers (consumer and DAG at midnight).
create or replace procedure staging.create_raw_prices_partitions(p_from date, p_to date)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    d date := p_from;
    partition_name text;
begin
    if p_from is null or p_to is null then
        raise exception 'create_raw_prices_partitions: p_from and p_to must not be null';
    end if;
    if p_to - p_from > 3660 then
        raise exception 'create_raw_prices_partitions: refusing to create % partitions (max 3661)', p_to - p_from + 1;
    end if;
    perform pg_advisory_xact_lock(hashtext('staging.raw_prices partitions'));
    while d <= p_to loop
        partition_name := 'raw_prices_p' || to_char(d, 'YYYYMMDD');
        if to_regclass(format('staging.%I', partition_name)) is null then
            execute format(
                'create table if not exists staging.%I partition of staging.raw_prices '
                'for values from (%L) to (%L)',
                partition_name,
                analytics.utc_day_start(d),
                analytics.utc_day_start(d + 1)
            );
        end if;
        d := d + 1;
    end loop;
end
$$;

-- staging.ensure_raw_prices_partitions: maintenance, run by the Airflow DAG before each
-- summary. Makes the partitions for p_from .. p_from + days_ahead (default today .. today+3
-- in UTC), so the consumer finds tomorrow's partition ready at midnight.
create or replace procedure staging.ensure_raw_prices_partitions(
    days_ahead integer default 3,
    p_from date default analytics.utc_today()
)
language plpgsql
as $$
begin
    if days_ahead is null or days_ahead < 0 then
        raise exception 'ensure_raw_prices_partitions: days_ahead must be >= 0, got %', days_ahead;
    end if;
    call staging.create_raw_prices_partitions(p_from, p_from + days_ahead);
end
$$;

-- analytics.get_daily_summary: computes one UTC day's candle per symbol from
-- staging.raw_prices and upserts it into analytics.daily_summary_dw. Called by the Airflow
-- DAG with the run's data-interval day; with no argument it summarises yesterday (UTC).
--   * reads only [day 00:00 UTC, day+1 00:00 UTC): one partition, any session TimeZone;
--   * candle source: a symbol's trades when it has any that day, else its ticker prices
--     (tickers then give open/high/low/close/avg only: volume 0, trade_count 0, vwap null);
--     volume, quote volume (sum price*quantity), vwap and trade count come from trades only;
--   * open/close: first_value over (event_time, sequence_id), the trade id breaking ties
--     inside one millisecond; only the rows at the day's first and last instant of each
--     symbol are windowed (found through the primary key's index), which gives the
--     same first/last row as windowing the whole day without sorting millions of rows;
--   * trade-id completeness (trade candles): first/last trade id, expected ids (last - first
--     + 1), missing ids, the missing ranges (only searched when ids are missing), rows from REST;
--   * idempotent: ON CONFLICT (event_date, symbol) DO UPDATE, and only when a value changed;
--   * a day with no rows changes nothing (existing candles stay: the raw rows of a purged day
--     are gone, its candle must not be) and raises a NOTICE; so does a purged day whose
--     partition late rows recreated (analytics.candles_1m_coverage.raw_purged_at).
create or replace procedure analytics.get_daily_summary(
    day date default (now() at time zone 'utc')::date - 1
)
language plpgsql
as $$
declare
    day_start constant timestamptz := analytics.utc_day_start(day);
    day_end   constant timestamptz := analytics.utc_day_start(day + 1);
    upserted  bigint;
begin
    if day is null then
        raise exception 'get_daily_summary: day must not be null';
    end if;

    perform 1
    from staging.raw_prices
    where event_time >= day_start and event_time < day_end
    limit 1;
    if not found then
        raise notice 'get_daily_summary: no rows in staging.raw_prices for % (UTC); nothing changed', day;
        return;
    end if;
    -- late rows may recreate a purged day's partition: they must not replace its full candles
    if exists (
        select 1 from analytics.candles_1m_coverage as cov
        where cov.event_date = day and cov.raw_purged_at is not null
    ) then
        raise notice 'get_daily_summary: % (UTC) was purged from staging.raw_prices; its candles are kept as they are', day;
        return;
    end if;

    with stream_stats as materialized (
        select * from analytics.daily_stream_stats(day)
    ),

    candle_stats as (
        -- trades make the candle when the symbol has any that day, else tickers do
        select distinct on (symbol) *
        from stream_stats
        order by symbol, (stream = 'trade') desc
    ),

    edge_rows as (
        -- rows at each symbol's first and last instant (index lookups, not a second scan),
        -- ordered by (event_time, sequence_id): the trade id breaks ties inside one ms
        select distinct on (c.symbol)
            c.symbol,
            first_value(r.price) over by_time as open_price,
            last_value(r.price) over by_time  as close_price
        from candle_stats as c
        cross join lateral (
            select edge.price, edge.event_time, edge.sequence_id
            from staging.raw_prices as edge
            where edge.symbol = c.symbol
              and edge.stream = c.stream
              and edge.event_time = any (array[c.first_event_time, c.last_event_time])
              and edge.event_time >= day_start and edge.event_time < day_end
        ) as r
        window by_time as (
            partition by c.symbol
            order by r.event_time, r.sequence_id
            rows between unbounded preceding and unbounded following
        )
    )

    insert into analytics.daily_summary_dw as dw (
        event_date, symbol, open_price, high_price, low_price, close_price, avg_price,
        volume, quote_volume, vwap, trade_count, first_event_time, last_event_time,
        candle_source, first_trade_id, last_trade_id, expected_trade_ids, missing_trade_ids,
        missing_trade_ranges, rest_filled_trades, computed_at
    )
    select
        day,
        c.symbol,
        e.open_price,
        c.high_price,
        c.low_price,
        e.close_price,
        c.avg_price,
        case when c.stream = 'trade' then c.volume else 0 end,
        case when c.stream = 'trade' then c.quote_volume else 0 end,
        case when c.stream = 'trade' and c.volume > 0 then c.quote_volume / c.volume end,
        case when c.stream = 'trade' then c.row_count else 0 end,
        c.first_event_time,
        c.last_event_time,
        c.stream,
        case when c.stream = 'trade' then c.min_sequence_id end,
        case when c.stream = 'trade' then c.max_sequence_id end,
        case when c.stream = 'trade' then c.max_sequence_id - c.min_sequence_id + 1 end,
        case when c.stream = 'trade' then c.max_sequence_id - c.min_sequence_id + 1 - c.row_count end,
        case when c.stream = 'trade' then coalesce(g.ranges, '[]'::jsonb) end,
        case when c.stream = 'trade' then c.rest_rows end,
        now()
    from candle_stats as c
    join edge_rows as e using (symbol)
    left join lateral (
        -- the missing id ranges, searched (a sort of the day's trade ids) only when ids are missing
        select jsonb_agg(jsonb_build_array(gap.prev_id + 1, gap.sequence_id - 1) order by gap.sequence_id) as ranges
        from (
            select ids.sequence_id, ids.prev_id
            from (
                select
                    t.sequence_id,
                    lag(t.sequence_id) over (order by t.sequence_id) as prev_id
                from staging.raw_prices as t
                where t.symbol = c.symbol
                  and t.stream = 'trade'
                  and t.event_time >= day_start and t.event_time < day_end
                  and c.stream = 'trade'
                  and c.max_sequence_id - c.min_sequence_id + 1 > c.row_count
            ) as ids
            where ids.sequence_id - ids.prev_id > 1
            order by ids.sequence_id
            limit 1000
        ) as gap
    ) as g on true
    on conflict (event_date, symbol) do update set
        open_price       = excluded.open_price,
        high_price       = excluded.high_price,
        low_price        = excluded.low_price,
        close_price      = excluded.close_price,
        avg_price        = excluded.avg_price,
        volume           = excluded.volume,
        quote_volume     = excluded.quote_volume,
        vwap             = excluded.vwap,
        trade_count      = excluded.trade_count,
        first_event_time = excluded.first_event_time,
        last_event_time  = excluded.last_event_time,
        candle_source    = excluded.candle_source,
        first_trade_id       = excluded.first_trade_id,
        last_trade_id        = excluded.last_trade_id,
        expected_trade_ids   = excluded.expected_trade_ids,
        missing_trade_ids    = excluded.missing_trade_ids,
        missing_trade_ranges = excluded.missing_trade_ranges,
        rest_filled_trades   = excluded.rest_filled_trades,
        computed_at      = excluded.computed_at
    where (
        dw.open_price, dw.high_price, dw.low_price, dw.close_price, dw.avg_price,
        dw.volume, dw.quote_volume, dw.vwap, dw.trade_count,
        dw.first_event_time, dw.last_event_time, dw.candle_source,
        dw.first_trade_id, dw.last_trade_id, dw.expected_trade_ids, dw.missing_trade_ids,
        dw.missing_trade_ranges, dw.rest_filled_trades
    ) is distinct from (
        excluded.open_price, excluded.high_price, excluded.low_price, excluded.close_price,
        excluded.avg_price, excluded.volume, excluded.quote_volume, excluded.vwap,
        excluded.trade_count, excluded.first_event_time, excluded.last_event_time,
        excluded.candle_source,
        excluded.first_trade_id, excluded.last_trade_id, excluded.expected_trade_ids,
        excluded.missing_trade_ids, excluded.missing_trade_ranges, excluded.rest_filled_trades
    );

    get diagnostics upserted = row_count;
    raise notice 'get_daily_summary: % (UTC): % candle(s) inserted or changed', day, upserted;
end
$$;

-- analytics.purge_raw_prices: retention. Drops whole staging.raw_prices_pYYYYMMDD
-- partitions of days before reference_date - (keep_days - 1): it keeps exactly keep_days
-- day partitions ending at reference_date (default: the current UTC date), plus any later
-- (pre-created) ones. keep_days = 7 on 2026-11-24 keeps 2026-11-18 .. 2026-11-24.
-- Dropping a partition is a catalog change (milliseconds), unlike DELETE. Candles in
-- analytics.daily_summary_dw are never purged; a day's one-minute candles are materialised into
-- analytics.candles_1m first (when not already) and its coverage row marked purged. Run by
-- the Airflow DAG (RAW_RETENTION_DAYS) with the run's data-interval end as reference_date;
-- partitions not named by create_raw_prices_partitions are left alone. Security definer
-- (fixed search_path, every name qualified): only the owner may drop a partition, and the
-- DAG's role pipeline_dag does not own them.
create or replace procedure analytics.purge_raw_prices(
    keep_days integer default 7,
    reference_date date default analytics.utc_today()
)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    oldest_kept constant date := reference_date - (keep_days - 1);
    part record;
    part_day date;
    dropped integer := 0;
begin
    if keep_days is null or keep_days < 1 then
        raise exception 'purge_raw_prices: keep_days must be >= 1, got %', keep_days;
    end if;
    if reference_date is null then
        raise exception 'purge_raw_prices: reference_date must not be null';
    end if;
    -- dropping a partition waits for the consumer's open batch on staging.raw_prices and
    -- queues its next one behind it: give up after 10 s (the DAG retries) rather than stall
    perform set_config('lock_timeout', '10s', true);
    for part in
        select child.relname as partition_name
        from pg_inherits as inh
        join pg_class as child on child.oid = inh.inhrelid
        join pg_namespace as ns on ns.oid = child.relnamespace
        where inh.inhparent = 'staging.raw_prices'::regclass
          and ns.nspname = 'staging'
          and child.relname ~ '^raw_prices_p[0-9]{8}$'
          and to_date(substr(child.relname, 13), 'YYYYMMDD') < oldest_kept
        order by child.relname
    loop
        -- one-minute candles outlive the raw rows: materialise the day first if it is not yet
        part_day := to_date(substr(part.partition_name, 13), 'YYYYMMDD');
        if not exists (
            select 1 from analytics.candles_1m_coverage
            where event_date = part_day and materialised_until >= analytics.utc_day_start(part_day + 1)
        ) then
            call analytics.refresh_candles_1m(part_day);
        end if;
        execute format('drop table staging.%I', part.partition_name);
        delete from analytics.candles_1m_dirty
        where bucket_start >= analytics.utc_day_start(part_day)
          and bucket_start < analytics.utc_day_start(part_day + 1);
        insert into analytics.candles_1m_coverage as cov (event_date, materialised_until, raw_purged_at)
        values (part_day, analytics.utc_day_start(part_day + 1), now())
        on conflict (event_date) do update set raw_purged_at = excluded.raw_purged_at;
        dropped := dropped + 1;
    end loop;
    raise notice 'purge_raw_prices: dropped % partition(s) older than %', dropped, oldest_kept;
end
$$;

-- ---- candles, completeness and reconciliation (issue 13) ----------------------------------

-- analytics.materialise_candles_1m: the one writer of analytics.candles_1m. For the UTC day
-- p_day it computes the minutes [p_from, p_until) from staging.raw_prices (every symbol) and
-- again every minute of that day marked in analytics.candles_1m_dirty below p_until, upserts
-- them (rows change only when a value changed; minutes that lost their rows are deleted),
-- removes those marks and extends analytics.candles_1m_coverage to p_until. A day whose raw
-- partition was purged (or never had rows) keeps its candles_1m untouched, so late rows that
-- recreate an old partition cannot shrink history. Called by analytics.refresh_candles_1m and
-- analytics.refresh_candles_1m_recent (run those, not this).
--   Exact under concurrent writers, without blocking them for the computation: it holds the
--   advisory lock 'candles_1m.refresh' while it reads, and waits once ('candles_1m.writers')
--   for every writer that checked the coverage before; any writer's statement meanwhile marks
--   all its minutes dirty (staging.mark_candles_1m_dirty), so nothing it adds is lost.
create or replace procedure analytics.materialise_candles_1m(
    p_day date,
    p_from timestamptz,
    p_until timestamptz
)
language plpgsql
as $$
declare
    day_start constant timestamptz := analytics.utc_day_start(p_day);
    day_end   constant timestamptz := analytics.utc_day_start(p_day + 1);
    origin    constant timestamptz := timestamptz '1970-01-01 00:00:00+00';
    from_at   timestamptz;
    until_at  timestamptz;
    redone    bigint;
    changed   bigint;
    removed   bigint;
begin
    if p_day is null then
        raise exception 'refresh_candles_1m: p_day must not be null';
    end if;
    until_at := least(greatest(coalesce(date_bin(interval '1 minute', p_until, origin), day_end),
                               day_start), day_end);
    from_at := least(greatest(coalesce(date_bin(interval '1 minute', p_from, origin), day_start),
                              day_start), until_at);
    -- one refresh at a time; then wait for the writers that checked the coverage before it
    perform pg_advisory_xact_lock(hashtext('candles_1m.refresh'));
    perform pg_advisory_xact_lock(hashtext('analytics.candles_1m'), (p_day - date '1970-01-01'));
    perform pg_advisory_lock(hashtext('candles_1m.writers')), pg_advisory_unlock(hashtext('candles_1m.writers'));

    if exists (
        select 1 from analytics.candles_1m_coverage
        where event_date = p_day and raw_purged_at is not null
    ) then
        raise notice 'refresh_candles_1m: % (UTC) was purged from staging.raw_prices; candles_1m kept as it is', p_day;
        return;
    end if;
    perform 1 from staging.raw_prices where event_time >= day_start and event_time < day_end limit 1;
    if not found then
        raise notice 'refresh_candles_1m: no rows in staging.raw_prices for % (UTC); nothing changed', p_day;
        return;
    end if;

    create temporary table if not exists pg_temp.fresh_candles_1m (like analytics.candles_1m)
        on commit delete rows;
    create temporary table if not exists pg_temp.redo_candles_1m (symbol text, bucket_start timestamptz)
        on commit delete rows;
    delete from pg_temp.fresh_candles_1m;
    delete from pg_temp.redo_candles_1m;
    -- the marks first: a writer committing after this statement keeps its mark
    with taken as (
        delete from analytics.candles_1m_dirty as d
        where d.bucket_start >= day_start and d.bucket_start < until_at
        returning d.symbol, d.bucket_start
    )
    insert into pg_temp.redo_candles_1m select symbol, bucket_start from taken where bucket_start < from_at;
    get diagnostics redone = row_count;

    insert into pg_temp.fresh_candles_1m (
        symbol, bucket_start, open_price, high_price, low_price, close_price, volume,
        quote_volume, trade_count, first_trade_id, last_trade_id, candle_source, computed_at
    )
    select s.symbol, c.bucket_start, c.open_price, c.high_price, c.low_price, c.close_price,
           c.volume, c.quote_volume, c.trade_count, c.first_trade_id, c.last_trade_id,
           c.candle_source, now()
    from analytics.symbols_between(from_at, until_at) as s(symbol)
    cross join lateral analytics.raw_candles_1m(s.symbol, from_at, until_at) as c
    where from_at < until_at
    union all
    select d.symbol, c.bucket_start, c.open_price, c.high_price, c.low_price, c.close_price,
           c.volume, c.quote_volume, c.trade_count, c.first_trade_id, c.last_trade_id,
           c.candle_source, now()
    from pg_temp.redo_candles_1m as d
    cross join lateral analytics.raw_candles_1m(d.symbol, d.bucket_start, d.bucket_start + interval '1 minute') as c;

    delete from analytics.candles_1m as m
    where (
        (m.bucket_start >= from_at and m.bucket_start < until_at)
        or exists (
            select 1 from pg_temp.redo_candles_1m as d
            where d.symbol = m.symbol and d.bucket_start = m.bucket_start
        )
    )
      and not exists (
          select 1 from pg_temp.fresh_candles_1m as f
          where f.symbol = m.symbol and f.bucket_start = m.bucket_start
      );
    get diagnostics removed = row_count;

    insert into analytics.candles_1m as m (
        symbol, bucket_start, open_price, high_price, low_price, close_price, volume,
        quote_volume, trade_count, first_trade_id, last_trade_id, candle_source, computed_at
    )
    select symbol, bucket_start, open_price, high_price, low_price, close_price, volume,
           quote_volume, trade_count, first_trade_id, last_trade_id, candle_source, computed_at
    from pg_temp.fresh_candles_1m
    on conflict (symbol, bucket_start) do update set
        open_price     = excluded.open_price,
        high_price     = excluded.high_price,
        low_price      = excluded.low_price,
        close_price    = excluded.close_price,
        volume         = excluded.volume,
        quote_volume   = excluded.quote_volume,
        trade_count    = excluded.trade_count,
        first_trade_id = excluded.first_trade_id,
        last_trade_id  = excluded.last_trade_id,
        candle_source  = excluded.candle_source,
        computed_at    = excluded.computed_at
    where (
        m.open_price, m.high_price, m.low_price, m.close_price, m.volume, m.quote_volume,
        m.trade_count, m.first_trade_id, m.last_trade_id, m.candle_source
    ) is distinct from (
        excluded.open_price, excluded.high_price, excluded.low_price, excluded.close_price,
        excluded.volume, excluded.quote_volume, excluded.trade_count, excluded.first_trade_id,
        excluded.last_trade_id, excluded.candle_source
    );
    get diagnostics changed = row_count;
    delete from pg_temp.fresh_candles_1m;
    delete from pg_temp.redo_candles_1m;

    insert into analytics.candles_1m_coverage as cov (event_date, materialised_until, refreshed_at)
    values (p_day, until_at, now())
    on conflict (event_date) do update set
        materialised_until = greatest(cov.materialised_until, excluded.materialised_until),
        refreshed_at       = excluded.refreshed_at;
    raise notice 'refresh_candles_1m: % (UTC) % .. % and % changed minute(s) before: % minute candle(s) inserted or changed, % removed',
        p_day, from_at, until_at, redone, changed, removed;
end
$$;

-- analytics.refresh_candles_1m: materialises one UTC day's one-minute candles (every symbol)
-- for the minutes [day 00:00, p_until) (default: the whole day), all recomputed from
-- staging.raw_prices (analytics.materialise_candles_1m). Idempotent. Called by the DAG after
-- each summary and by analytics.purge_raw_prices before it drops a day not materialised yet.
create or replace procedure analytics.refresh_candles_1m(
    p_day date,
    p_until timestamptz default null
)
language plpgsql
as $$
begin
    call analytics.materialise_candles_1m(p_day, analytics.utc_day_start(p_day), p_until);
end
$$;

-- analytics.refresh_candles_1m_recent: the incremental refresh during the day, run every few
-- minutes by the Airflow DAG refresh_recent_candles. Materialises the closed minutes since the
-- last coverage, up to the consumer's committed progress (the newest event time in
-- staging.consumer_symbol_progress, at most now()) minus p_grace, for that day and the day
-- before (midnight), and re-materialises every marked minute (analytics.candles_1m_dirty) of
-- the days that have any. A minute closed too early (a symbol behind the others, an event later
-- than the grace) is not wrong: its late rows mark it dirty, and analytics.candles reads it from
-- the raw rows until the next refresh.
create or replace procedure analytics.refresh_candles_1m_recent(p_grace interval default interval '2 minutes')
language plpgsql
as $$
declare
    newest   timestamptz;
    until_at timestamptz;
    target   record;
begin
    if p_grace is null or p_grace < interval '0' then
        raise exception 'refresh_candles_1m_recent: p_grace must be >= 0, got %', p_grace;
    end if;
    select max(newest_event_time) into newest from staging.consumer_symbol_progress;
    until_at := date_bin(interval '1 minute', least(newest, now()) - p_grace,
                         timestamptz '1970-01-01 00:00:00+00');
    for target in
        select d.day, coalesce(cov.materialised_until, analytics.utc_day_start(d.day)) as covered_until,
               d.recent
        from (
            select day, bool_or(recent) as recent
            from (
                select (until_at at time zone 'utc')::date - n as day, true as recent
                from generate_series(0, 1) as n
                where until_at is not null
                union all
                select distinct (bucket_start at time zone 'utc')::date, false
                from analytics.candles_1m_dirty
            ) as wanted
            group by day
        ) as d
        left join analytics.candles_1m_coverage as cov on cov.event_date = d.day
        where cov.raw_purged_at is null
        order by d.day
    loop
        if target.recent and until_at > target.covered_until then
            call analytics.materialise_candles_1m(target.day, target.covered_until, until_at);
        else  -- only the minutes marked dirty below the coverage
            call analytics.materialise_candles_1m(target.day, target.covered_until, target.covered_until);
        end if;
    end loop;
    if until_at is null then
        raise notice 'refresh_candles_1m_recent: no consumer progress in staging.consumer_symbol_progress yet';
    end if;
end
$$;

-- staging.mark_candles_1m_dirty: the statement-level triggers of staging.raw_prices (insert,
-- update, delete: every writer, the consumer's COPY included) mark the materialised minutes
-- whose rows they change in analytics.candles_1m_dirty, in the writer's own transaction, so
-- analytics.candles never serves a stale materialised minute. While a refresh reads the rows
-- (it holds 'candles_1m.refresh') a statement marks all its minutes, materialised or not;
-- purged days are left alone (their candles_1m is the only copy). Cost: one pass over the
-- statement's rows and two advisory locks (docs/benchmarks.md). Security definer: the
-- consumer's role writes no analytics table itself.
create or replace function staging.mark_candles_1m_dirty()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    refreshing boolean;
    rows_name  text;
begin
    -- a refresh starting now waits for this transaction before it reads the rows ...
    perform pg_advisory_xact_lock_shared(hashtext('candles_1m.writers'));
    -- ... and one reading them already cannot see them: mark every minute then
    refreshing := not pg_try_advisory_xact_lock_shared(hashtext('candles_1m.refresh'));
    -- the statement's rows: new_rows (insert, update) and old_rows (delete, update)
    foreach rows_name in array case tg_op when 'INSERT' then array['new_rows']
                                           when 'DELETE' then array['old_rows']
                                           else array['new_rows', 'old_rows'] end
    loop
        execute format($sql$
            insert into analytics.candles_1m_dirty (symbol, bucket_start)
            select distinct r.symbol,
                   date_bin(interval '1 minute', r.event_time, timestamptz '1970-01-01 00:00:00+00')
            from %I as r
            left join analytics.candles_1m_coverage as cov
              on cov.event_date = (r.event_time at time zone 'utc')::date
            where cov.raw_purged_at is null and ($1 or r.event_time < cov.materialised_until)
            on conflict do nothing
        $sql$, rows_name) using refreshing;
    end loop;
    return null;
end
$$;

create or replace trigger raw_prices_mark_candles_1m_insert
    after insert on staging.raw_prices referencing new table as new_rows
    for each statement execute function staging.mark_candles_1m_dirty();
create or replace trigger raw_prices_mark_candles_1m_update
    after update on staging.raw_prices referencing old table as old_rows new table as new_rows
    for each statement execute function staging.mark_candles_1m_dirty();
create or replace trigger raw_prices_mark_candles_1m_delete
    after delete on staging.raw_prices referencing old table as old_rows
    for each statement execute function staging.mark_candles_1m_dirty();

-- analytics.reconcile_day: gives one daily candle its reconciliation status against the
-- exchange's klines already stored in analytics.exchange_klines (the DAG fetches them) and
-- records it in analytics.daily_reconciliation, with the exchange's 1d values and the first
-- 100 differences (analytics.kline_differences). p_exchange says how the exchange answered:
-- 'answered' (compare), 'unreachable' (status unverified) or 'open' (it has not closed the day:
-- incomplete); p_detail is kept as the row's detail when given.
--   unverified  ticker-only candle (nothing trade-derived to compare), exchange unreachable,
--               or no 1d kline for the symbol on the exchange
--   incomplete  the exchange's day is still open, or every field matches but trade ids are missing
--   mismatch    some field of the day or of a minute differs
--   reconciled  the day and every minute equal the exchange's (open, high, low, close, volume,
--               trade count)
create or replace procedure analytics.reconcile_day(
    p_day date,
    p_symbol text,
    p_exchange text default 'answered',
    p_detail text default null
)
language plpgsql
as $$
declare
    candle      analytics.daily_summary_dw%rowtype;
    kline       analytics.exchange_klines%rowtype;
    outcome     text;
    note        text := p_detail;
    minutes_off integer := 0;
    diffs       jsonb := '[]';
begin
    if p_day is null or p_symbol is null then
        raise exception 'reconcile_day: p_day and p_symbol must not be null';
    end if;
    if p_exchange not in ('answered', 'unreachable', 'open') then
        raise exception 'reconcile_day: p_exchange must be answered, unreachable or open, got %', p_exchange;
    end if;
    select * into candle from analytics.daily_summary_dw where event_date = p_day and symbol = p_symbol;
    if not found then
        raise notice 'reconcile_day: no candle for % on % (UTC); nothing recorded', p_symbol, p_day;
        return;
    end if;
    select * into kline from analytics.exchange_klines
    where symbol = p_symbol and kline_interval = '1d' and open_time = analytics.utc_day_start(p_day);

    if candle.candle_source <> 'trade' then
        outcome := 'unverified';
        note := coalesce(note, 'ticker prices only: nothing trade-derived to compare with the exchange''s klines');
    elsif p_exchange = 'unreachable' then
        outcome := 'unverified';
        note := coalesce(note, 'the exchange did not answer');
    elsif p_exchange = 'open' then
        outcome := 'incomplete';
        note := coalesce(note, 'the exchange has not closed the day yet');
    elsif kline.symbol is null then
        outcome := 'unverified';
        note := coalesce(note, 'the exchange returned no 1d kline for the symbol and day');
    else
        select count(*) filter (where d.kline_interval = '1m'),
               coalesce(jsonb_agg(jsonb_build_object(
                   'interval', d.kline_interval, 'open_time', d.open_time, 'fields', d.fields,
                   'ours', d.ours, 'exchange', d.exchange) order by d.kline_interval, d.open_time)
                   filter (where d.rank <= 100), '[]')
        into minutes_off, diffs
        from (
            select k.*, row_number() over (order by k.kline_interval, k.open_time) as rank
            from analytics.kline_differences(p_day, p_symbol) as k
        ) as d;
        if jsonb_array_length(diffs) > 0 then
            outcome := 'mismatch';
            note := coalesce(note, format('%s minute(s) differ from the exchange''s 1m klines', minutes_off));
        elsif coalesce(candle.missing_trade_ids, 0) > 0 then
            outcome := 'incomplete';
            note := coalesce(note, format('%s trade id(s) missing although every kline matches', candle.missing_trade_ids));
        else
            outcome := 'reconciled';
        end if;
    end if;

    insert into analytics.daily_reconciliation as r (
        event_date, symbol, status, candle_computed_at, checked_at, exchange_open, exchange_high,
        exchange_low, exchange_close, exchange_volume, exchange_trade_count, mismatched_minutes,
        differences, detail
    )
    values (
        p_day, p_symbol, outcome, candle.computed_at, now(), kline.open_price, kline.high_price,
        kline.low_price, kline.close_price, kline.volume, kline.trade_count, minutes_off, diffs, note
    )
    on conflict (event_date, symbol) do update set
        status               = excluded.status,
        candle_computed_at   = excluded.candle_computed_at,
        checked_at           = excluded.checked_at,
        exchange_open        = excluded.exchange_open,
        exchange_high        = excluded.exchange_high,
        exchange_low         = excluded.exchange_low,
        exchange_close       = excluded.exchange_close,
        exchange_volume      = excluded.exchange_volume,
        exchange_trade_count = excluded.exchange_trade_count,
        mismatched_minutes   = excluded.mismatched_minutes,
        differences          = excluded.differences,
        detail               = excluded.detail;
    raise notice 'reconcile_day: % % (UTC): % %', p_symbol, p_day, outcome, coalesce('(' || note || ')', '');
end
$$;

-- staging.record_consumer_progress: the consumer driver's progress report (CONTRACT 3), called
-- every few seconds by consumer_app/progress.py: upserts staging.consumer_progress and, from
-- analytics.latest_prices, each (symbol, stream)'s newest committed event time, moving
-- changed_at only when that time moved.
create or replace procedure staging.record_consumer_progress(
    p_consumer text,
    p_query_id text,
    p_last_batch_id bigint,
    p_kafka_lag bigint,
    p_progress_at timestamptz
)
language plpgsql
as $$
begin
    insert into staging.consumer_progress as p (
        consumer, query_id, last_batch_id, kafka_lag, progress_at, updated_at
    )
    values (p_consumer, p_query_id, p_last_batch_id, p_kafka_lag, p_progress_at, now())
    on conflict (consumer) do update set
        query_id      = excluded.query_id,
        last_batch_id = excluded.last_batch_id,
        kafka_lag     = excluded.kafka_lag,
        progress_at   = excluded.progress_at,
        updated_at    = excluded.updated_at;

    insert into staging.consumer_symbol_progress as sp (
        symbol, stream, newest_event_time, changed_at, updated_at
    )
    select l.symbol, l.stream, l.event_time, now(), now()
    from analytics.latest_prices as l
    on conflict (symbol, stream) do update set
        newest_event_time = greatest(sp.newest_event_time, excluded.newest_event_time),
        changed_at        = case
            when excluded.newest_event_time > sp.newest_event_time then excluded.changed_at
            else sp.changed_at
        end,
        updated_at        = excluded.updated_at;
end
$$;

-- views -------------------------------------------------------------------------

-- analytics.latest_prices: the newest price of every (symbol, stream) in staging.raw_prices,
-- for `select * from analytics.latest_prices;` in psql. A loose index scan over the
-- primary key (symbol, stream, event_time, sequence_id) finds the pairs and the newest row of each without
-- reading whole partitions. Written by nobody (a view); reads staging.raw_prices.
create or replace view analytics.latest_prices as
with recursive pairs as (
    (
        select symbol, stream
        from staging.raw_prices
        order by symbol, stream
        limit 1
    )
    union all
    select next_pair.symbol, next_pair.stream
    from pairs
    cross join lateral (
        select r.symbol, r.stream
        from staging.raw_prices as r
        where (r.symbol, r.stream) > (pairs.symbol, pairs.stream)
        order by r.symbol, r.stream
        limit 1
    ) as next_pair
)
select
    newest.symbol,
    newest.stream,
    newest.price            as last_price,
    newest.previous_price,
    newest.price_change,
    newest.price_change_pct,
    newest.event_time,
    newest.sequence_id,
    newest.ingested_at,
    newest.source
from pairs
cross join lateral (
    select r.*
    from staging.raw_prices as r
    where r.symbol = pairs.symbol and r.stream = pairs.stream
    order by r.event_time desc, r.sequence_id desc
    limit 1
) as newest;

comment on view analytics.latest_prices is
    'Newest price per (symbol, stream) in staging.raw_prices, with its change vs the previous price.';

-- analytics.daily_candles: analytics.daily_summary_dw formatted for reading: trailing zeros
-- trimmed, vwap/avg rounded to 8 decimals, the day's change, UTC wall-clock times; then the
-- reconciliation with the exchange (analytics.daily_reconciliation: status and the exchange's
-- values, null while the current version of the candle has not been checked) and trade-id
-- completeness. Written by nobody (a view); reads those two tables.
create or replace view analytics.daily_candles as
select
    dw.event_date,
    dw.symbol,
    trim_scale(dw.open_price)                                      as open,
    trim_scale(dw.high_price)                                      as high,
    trim_scale(dw.low_price)                                       as low,
    trim_scale(dw.close_price)                                     as close,
    trim_scale(dw.close_price - dw.open_price)                     as change,
    round((dw.close_price - dw.open_price) / dw.open_price * 100, 4) as change_pct,
    trim_scale(dw.volume)                                          as volume,
    trim_scale(round(dw.quote_volume, 8))                          as quote_volume,
    trim_scale(round(dw.vwap, 8))                                  as vwap,
    trim_scale(round(dw.avg_price, 8))                             as avg_price,
    dw.trade_count,
    dw.candle_source,
    (dw.first_event_time at time zone 'utc')                       as first_event_utc,
    (dw.last_event_time at time zone 'utc')                        as last_event_utc,
    dw.computed_at,
    r.status                                                       as reconciliation_status,
    trim_scale(r.exchange_open)                                    as exchange_open,
    trim_scale(r.exchange_high)                                    as exchange_high,
    trim_scale(r.exchange_low)                                     as exchange_low,
    trim_scale(r.exchange_close)                                   as exchange_close,
    trim_scale(r.exchange_volume)                                  as exchange_volume,
    r.exchange_trade_count,
    r.mismatched_minutes,
    r.detail                                                       as reconciliation_detail,
    r.checked_at                                                   as reconciled_at,
    dw.first_trade_id,
    dw.last_trade_id,
    dw.expected_trade_ids,
    dw.missing_trade_ids,
    dw.missing_trade_ranges,
    dw.rest_filled_trades
from analytics.daily_summary_dw as dw
left join analytics.daily_reconciliation as r
  on r.event_date = dw.event_date
 and r.symbol = dw.symbol
 and r.candle_computed_at = dw.computed_at;

comment on view analytics.daily_candles is
    'Daily candles for psql: trimmed decimals, change vs open, UTC times, reconciliation with the exchange, trade-id completeness.';

-- analytics.unfilled_gaps: feed gaps the producer could not (fully) fill from REST, with the
-- UTC day(s) they touch. Read by the Airflow data-quality check and by analysts.
-- Written by nobody (a view); reads staging.feed_gaps.
create or replace view analytics.unfilled_gaps as
select
    symbol,
    stream,
    first_missing_id,
    last_missing_id,
    window_start,
    window_end,
    (window_start at time zone 'utc')::date as first_day,
    (window_end at time zone 'utc')::date   as last_day,
    unfilled_count,
    filled_count,
    status,
    reason,
    detected_at
from staging.feed_gaps
where status <> 'filled';

comment on view analytics.unfilled_gaps is
    'Gaps in the feed that were not (fully) filled from the REST API, with the UTC days they touch.';

-- grants ------------------------------------------------------------------------
-- Exactly what each role's process does (docs/local-stack.md, "Security"; the integration
-- test tests/integration/test_warehouse_roles.py runs each process's statements under its
-- role). Privileges on staging.raw_prices cover its partitions when reached through the
-- parent. Everything is revoked first, so a database made by an older init.sql ends up with
-- exactly these grants too; safe twice. Add the grants of a new object here, per role.

do $$
begin
    -- only the pipeline's roles may connect; nobody else gets temp tables
    execute format('revoke connect, temporary on database %I from public', current_database());
    execute format('grant connect on database %I to pipeline_writer, pipeline_dag, pipeline_analyst',
                   current_database());
    -- temp tables: the consumer's merge path (replays after a lost checkpoint) and
    -- analytics.refresh_candles_1m (the DAG) stage rows in one
    execute format('grant temporary on database %I to pipeline_writer, pipeline_dag', current_database());
end
$$;

revoke all on all tables in schema staging, analytics from pipeline_writer, pipeline_dag, pipeline_analyst;
revoke all on schema staging, analytics from pipeline_writer, pipeline_dag, pipeline_analyst;
-- older init.sql gave the writer every future staging table
alter default privileges in schema staging revoke all on tables from pipeline_writer;

revoke execute on procedure staging.create_raw_prices_partitions(date, date) from public;
revoke execute on procedure staging.ensure_raw_prices_partitions(integer, date) from public;
revoke execute on procedure analytics.get_daily_summary(date) from public;
revoke execute on procedure analytics.purge_raw_prices(integer, date) from public;

-- pipeline_writer: the consumer (consumer_app/sink.py, state.py)
grant usage on schema staging, analytics to pipeline_writer;
-- COPY of a batch; select for the merge path's `create temp table (like staging.raw_prices)`
grant select, insert on staging.raw_prices to pipeline_writer;
-- the ledger: read the position, claim a batch
grant select, insert on staging.consumer_batches to pipeline_writer;
-- the gap upsert (on conflict do update ... where excluded.detected_at > detected_at)
grant select, insert, update on staging.feed_gaps to pipeline_writer;
-- the last prices after a Redis loss
grant select on analytics.latest_prices to pipeline_writer;
grant execute on procedure staging.create_raw_prices_partitions(date, date) to pipeline_writer;
-- the dead letters (CONTRACT 4): insert ... on conflict (topic, kafka_partition, kafka_offset)
-- do nothing returning reason; reading them back is the analysts' business
grant insert, select (topic, kafka_partition, kafka_offset, reason)
    on staging.rejected_records to pipeline_writer;

-- the consumer's progress for the DAG's completeness sensor (CONTRACT 3)
grant select, insert, update on staging.consumer_progress, staging.consumer_symbol_progress
    to pipeline_writer;
revoke execute on procedure staging.record_consumer_progress(text, text, bigint, bigint, timestamptz) from public;
grant execute on procedure staging.record_consumer_progress(text, text, bigint, bigint, timestamptz)
    to pipeline_writer;

-- pipeline_dag: the Airflow DAG get_daily_summary (airflow/dags/get_daily_summary.py)
grant usage on schema staging, analytics to pipeline_dag;
-- make_partitions: ensure_... calls create_... (security definer)
grant execute on procedure staging.ensure_raw_prices_partitions(integer, date) to pipeline_dag;
grant execute on procedure staging.create_raw_prices_partitions(date, date) to pipeline_dag;
-- summarize_day: get_daily_summary runs as the caller, reads raw prices, upserts candles
grant execute on procedure analytics.get_daily_summary(date) to pipeline_dag;
grant select on staging.raw_prices to pipeline_dag;
grant select, insert, update on analytics.daily_summary_dw to pipeline_dag;
-- check_data_quality
grant select on analytics.unfilled_gaps, analytics.daily_candles to pipeline_dag;
-- candles, completeness and reconciliation (issue 13): materialise one-minute candles, store
-- the exchange's klines, reconcile; read the consumer's progress for the sensor
grant select on staging.consumer_progress, staging.consumer_symbol_progress to pipeline_dag;
grant select, insert, update, delete on analytics.candles_1m, analytics.candles_1m_coverage,
    analytics.candles_1m_dirty, analytics.exchange_klines, analytics.daily_reconciliation
    to pipeline_dag;
revoke execute on procedure analytics.refresh_candles_1m(date, timestamptz) from public;
revoke execute on procedure analytics.materialise_candles_1m(date, timestamptz, timestamptz) from public;
revoke execute on procedure analytics.refresh_candles_1m_recent(interval) from public;
revoke execute on procedure analytics.reconcile_day(date, text, text, text) from public;
grant execute on procedure analytics.refresh_candles_1m(date, timestamptz),
    analytics.materialise_candles_1m(date, timestamptz, timestamptz),
    analytics.reconcile_day(date, text, text, text) to pipeline_dag;
-- the DAG refresh_recent_candles: the day's closed minutes, every few minutes
grant execute on procedure analytics.refresh_candles_1m_recent(interval) to pipeline_dag;
-- every writer of staging.raw_prices fires staging.mark_candles_1m_dirty (security definer)
revoke execute on function staging.mark_candles_1m_dirty() from public;
-- purge_raw_prices (security definer: drops partitions as the owner)
grant execute on procedure analytics.purge_raw_prices(integer, date) to pipeline_dag;

-- pipeline_analyst: reads everything in both schemas, now and later (tables made by the
-- owner, partitions included), writes nothing and runs no procedure
grant usage on schema staging, analytics to pipeline_analyst;
grant select on all tables in schema staging, analytics to pipeline_analyst;
alter default privileges in schema staging, analytics grant select on tables to pipeline_analyst;
