-- Tables that mirror the Avro records in schemas/*.avsc.
-- Timestamps: DateTime64(6, 'UTC'), microseconds since the epoch as in the records
-- (toUnixTimestamp64Micro(ts) gives the record's integer back).
-- Dedup: ReplacingMergeTree on the natural key (read with FINAL for exact results),
-- plus insert_deduplication_token for retried inserts, which needs
-- non_replicated_deduplication_window on non-replicated tables.

CREATE TABLE IF NOT EXISTS trades
(
    exchange        LowCardinality(String),
    symbol          LowCardinality(String),
    exchange_symbol LowCardinality(String),
    trade_id        String CODEC(ZSTD(1)),
    price           Float64 CODEC(Gorilla, ZSTD(1)),
    size            Float64 CODEC(ZSTD(1)),
    side            LowCardinality(String),
    ts              DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    recv_ts         DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    conn            LowCardinality(String),
    seq             Int64 CODEC(Delta, ZSTD(1)),
    INDEX ts_minmax ts TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (exchange, symbol, trade_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ohlcv
(
    exchange       LowCardinality(String),
    symbol         LowCardinality(String),
    interval       LowCardinality(String),
    open_time      DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    close_time     DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    open           Float64 CODEC(Gorilla, ZSTD(1)),
    high           Float64 CODEC(Gorilla, ZSTD(1)),
    low            Float64 CODEC(Gorilla, ZSTD(1)),
    close          Float64 CODEC(Gorilla, ZSTD(1)),
    volume         Float64 CODEC(ZSTD(1)),
    quote_volume   Float64 CODEC(ZSTD(1)),
    buy_volume     Float64 CODEC(ZSTD(1)),
    sell_volume    Float64 CODEC(ZSTD(1)),
    trades         Int64 CODEC(T64, ZSTD(1)),
    vwap           Float64 CODEC(Gorilla, ZSTD(1)),
    first_trade_ts DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    last_trade_ts  DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    closed         Bool,
    late           Bool,
    version        UInt64 CODEC(Delta, ZSTD(1)),
    markets        Array(LowCardinality(String))
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(open_time)
ORDER BY (exchange, symbol, interval, open_time)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS book_buckets
(
    exchange    LowCardinality(String),
    symbol      LowCardinality(String),
    ts          DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    mid         Float64 CODEC(Gorilla, ZSTD(1)),
    best_bid    Float64 CODEC(Gorilla, ZSTD(1)),
    best_ask    Float64 CODEC(Gorilla, ZSTD(1)),
    spread      Float64 CODEC(ZSTD(1)),
    bucket_size Float64 CODEC(ZSTD(1)),
    bids        Nested(price Float64, size Float64, notional Float64) CODEC(ZSTD(1)),
    asks        Nested(price Float64, size Float64, notional Float64) CODEC(ZSTD(1)),
    bands       Nested(pct Float64, bid_size Float64, ask_size Float64, imbalance Float64) CODEC(ZSTD(1)),
    markets     Array(LowCardinality(String))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (exchange, symbol, ts)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS bbo
(
    exchange        LowCardinality(String),
    symbol          LowCardinality(String),
    exchange_symbol LowCardinality(String),
    bid_price       Float64 CODEC(Gorilla, ZSTD(1)),
    bid_size        Float64 CODEC(ZSTD(1)),
    ask_price       Float64 CODEC(Gorilla, ZSTD(1)),
    ask_size        Float64 CODEC(ZSTD(1)),
    ts              DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    recv_ts         DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (exchange, symbol, ts, recv_ts)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS status
(
    exchange          LowCardinality(String),
    symbol            LowCardinality(String),
    ts                DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    state             LowCardinality(String),
    reason            LowCardinality(String),
    detail            String CODEC(ZSTD(1)),
    conn              Nullable(String) CODEC(ZSTD(1)),
    gaps              Int64 CODEC(T64, ZSTD(1)),
    checksum_failures Int64 CODEC(T64, ZSTD(1)),
    resyncs           Int64 CODEC(T64, ZSTD(1)),
    crossed           Int64 CODEC(T64, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (exchange, symbol, ts, state, reason)
SETTINGS non_replicated_deduplication_window = 1000;
