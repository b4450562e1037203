-- init.sql: the warehouse of the Binance pipeline.
-- Applied by the local stack (scripts/stack.sh) and mounted by docker-compose into
-- /docker-entrypoint-initdb.d. Ordered: schemas, roles, tables, indexes, functions,
-- procedures. Safe to apply twice. Contract: docs/architecture.md.

-- schemas ---------------------------------------------------------------------
create schema if not exists staging;
create schema if not exists analytics;

-- roles -------------------------------------------------------------------------
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
-- (symbol, stream, sequence_id). Written by consumer_app (COPY, one transaction per
-- micro-batch); read by analytics.get_daily_summary. Partitioned by UTC day of event_time.
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
    primary key (symbol, stream, sequence_id, event_time)
) partition by range (event_time);

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

-- analytics.daily_summary_dw: one candle per (UTC day, symbol). Written by
-- analytics.get_daily_summary; read by analysts and analytics.daily_candles.
create table if not exists analytics.daily_summary_dw (
    event_date       date        not null,
    symbol           text        not null,
    open_price       numeric     not null,
    high_price       numeric     not null,
    low_price        numeric     not null,
    close_price      numeric     not null,
    avg_price        numeric     not null,
    volume           numeric,
    quote_volume     numeric,
    vwap             numeric,
    trade_count      bigint      not null,
    first_event_time timestamptz not null,
    last_event_time  timestamptz not null,
    computed_at      timestamptz not null default now(),
    primary key (event_date, symbol)
);

-- procedures --------------------------------------------------------------------

-- staging.create_raw_prices_partitions: makes one partition per UTC day in [p_from, p_to].
-- Called ahead by the Airflow DAG and on demand by consumer_app for historical replays.
create or replace procedure staging.create_raw_prices_partitions(p_from date, p_to date)
language plpgsql
as $$
declare
    d date := p_from;
    partition_name text;
begin
    while d <= p_to loop
        partition_name := 'raw_prices_p' || to_char(d, 'YYYYMMDD');
        if to_regclass(format('staging.%I', partition_name)) is null then
            execute format(
                'create table if not exists staging.%I partition of staging.raw_prices '
                'for values from (%L) to (%L)',
                partition_name,
                (d::timestamp at time zone 'UTC'),
                ((d + 1)::timestamp at time zone 'UTC')
            );
        end if;
        d := d + 1;
    end loop;
end
$$;
