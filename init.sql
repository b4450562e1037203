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
-- Group roles (nologin): grant them to login users, e.g. `grant pipeline_writer to consumer`.
-- pipeline_writer: the consumer (insert/select on staging, create partitions).
-- pipeline_analyst: read-only (select on analytics and staging).

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'pipeline_writer') then
        create role pipeline_writer nologin;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'pipeline_analyst') then
        create role pipeline_analyst nologin;
    end if;
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
    filled_count     integer     not null default 0,
    unfilled_count   integer     not null default 0,
    status           text        not null check (status in ('filled', 'partially_filled', 'unfilled')),
    reason           text        not null,
    detected_at      timestamptz not null,
    primary key (symbol, stream, window_start, first_missing_id)
);

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
-- volume, quote volume (sum price * quantity), first and last event time. Read by
-- analytics.get_daily_summary; handy in psql too. PL/pgSQL RETURN QUERY so the scan may run
-- as a parallel query even when called from a procedure (an INSERT .. SELECT cannot).
create or replace function analytics.daily_stream_stats(p_day date)
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
    last_event_time  timestamptz
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
        max(r.event_time)
    from staging.raw_prices as r
    where r.event_time >= analytics.utc_day_start(p_day)
      and r.event_time < analytics.utc_day_start(p_day + 1)
    group by r.symbol, r.stream;
end
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
--   * idempotent: ON CONFLICT (event_date, symbol) DO UPDATE, and only when a value changed;
--   * a day with no rows changes nothing (existing candles stay: the raw rows of a purged day
--     are gone, its candle must not be) and raises a NOTICE.
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
        candle_source, computed_at
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
        now()
    from candle_stats as c
    join edge_rows as e using (symbol)
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
        computed_at      = excluded.computed_at
    where (
        dw.open_price, dw.high_price, dw.low_price, dw.close_price, dw.avg_price,
        dw.volume, dw.quote_volume, dw.vwap, dw.trade_count,
        dw.first_event_time, dw.last_event_time, dw.candle_source
    ) is distinct from (
        excluded.open_price, excluded.high_price, excluded.low_price, excluded.close_price,
        excluded.avg_price, excluded.volume, excluded.quote_volume, excluded.vwap,
        excluded.trade_count, excluded.first_event_time, excluded.last_event_time,
        excluded.candle_source
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
-- analytics.daily_summary_dw are never purged. Run by the Airflow DAG (RAW_RETENTION_DAYS)
-- with the run's data-interval end as reference_date; partitions not named by
-- create_raw_prices_partitions are left alone.
create or replace procedure analytics.purge_raw_prices(
    keep_days integer default 7,
    reference_date date default analytics.utc_today()
)
language plpgsql
as $$
declare
    oldest_kept constant date := reference_date - (keep_days - 1);
    part record;
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
        execute format('drop table staging.%I', part.partition_name);
        dropped := dropped + 1;
    end loop;
    raise notice 'purge_raw_prices: dropped % partition(s) older than %', dropped, oldest_kept;
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
-- trimmed, vwap/avg rounded to 8 decimals, the day's change, UTC wall-clock times.
-- Written by nobody (a view); reads analytics.daily_summary_dw.
create or replace view analytics.daily_candles as
select
    event_date,
    symbol,
    trim_scale(open_price)                                   as open,
    trim_scale(high_price)                                   as high,
    trim_scale(low_price)                                    as low,
    trim_scale(close_price)                                  as close,
    trim_scale(close_price - open_price)                     as change,
    round((close_price - open_price) / open_price * 100, 4)  as change_pct,
    trim_scale(volume)                                       as volume,
    trim_scale(round(quote_volume, 8))                       as quote_volume,
    trim_scale(round(vwap, 8))                               as vwap,
    trim_scale(round(avg_price, 8))                          as avg_price,
    trade_count,
    candle_source,
    (first_event_time at time zone 'utc')                    as first_event_utc,
    (last_event_time at time zone 'utc')                     as last_event_utc,
    computed_at
from analytics.daily_summary_dw;

comment on view analytics.daily_candles is
    'Daily candles for psql: trimmed decimals, change vs open, first/last event in UTC.';

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
-- Privileges on staging.raw_prices cover its partitions when reached through the parent;
-- default privileges also cover tables (partitions) created later by the role running
-- this file (the owner, also via the security-definer partition procedure).

grant usage on schema staging to pipeline_writer, pipeline_analyst;
grant usage on schema analytics to pipeline_analyst;

grant select, insert on all tables in schema staging to pipeline_writer;
-- the consumer upserts gap reports (on conflict do update): a later report replaces an older one
grant update on staging.feed_gaps to pipeline_writer;
grant select on all tables in schema staging to pipeline_analyst;
grant select on all tables in schema analytics to pipeline_analyst;

alter default privileges in schema staging grant select, insert on tables to pipeline_writer;
alter default privileges in schema staging grant select on tables to pipeline_analyst;
alter default privileges in schema analytics grant select on tables to pipeline_analyst;

revoke execute on procedure staging.create_raw_prices_partitions(date, date) from public;
revoke execute on procedure staging.ensure_raw_prices_partitions(integer, date) from public;
revoke execute on procedure analytics.get_daily_summary(date) from public;
revoke execute on procedure analytics.purge_raw_prices(integer, date) from public;
grant execute on procedure staging.create_raw_prices_partitions(date, date) to pipeline_writer;
