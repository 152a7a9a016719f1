-- The exchanges' own tickers and candles (md.ticker, md.exchange-candles; Avro Ticker and
-- ExchangeCandle), and the check of marketpipe's candles against the exchange's.
-- A field an exchange does not send is NULL. Dedup as in 0001: ReplacingMergeTree on the
-- natural key, so a replay of a compacted topic (or a retried insert) stores nothing twice.

-- One row per ticker message: the natural key is the raw frame it came from (conn, seq) and
-- the symbol (one frame may carry several symbols' tickers).
CREATE TABLE IF NOT EXISTS ticker
(
    exchange         LowCardinality(String),
    symbol           LowCardinality(String),
    exchange_symbol  LowCardinality(String),
    last_price       Nullable(Float64) CODEC(ZSTD(1)),
    last_size        Nullable(Float64) CODEC(ZSTD(1)),
    bid_price        Nullable(Float64) CODEC(ZSTD(1)),
    bid_size         Nullable(Float64) CODEC(ZSTD(1)),
    ask_price        Nullable(Float64) CODEC(ZSTD(1)),
    ask_size         Nullable(Float64) CODEC(ZSTD(1)),
    open_24h         Nullable(Float64) CODEC(ZSTD(1)),
    high_24h         Nullable(Float64) CODEC(ZSTD(1)),
    low_24h          Nullable(Float64) CODEC(ZSTD(1)),
    volume_24h       Nullable(Float64) CODEC(ZSTD(1)),
    quote_volume_24h Nullable(Float64) CODEC(ZSTD(1)),
    trades_24h       Nullable(Int64) CODEC(ZSTD(1)),
    ts               DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    recv_ts          DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    conn             LowCardinality(String),
    seq              Int64 CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(recv_ts)
ORDER BY (exchange, symbol, recv_ts, conn, seq)
SETTINGS non_replicated_deduplication_window = 10000;

-- One row per candle window: the final version wins (closed rows outrank open ones, then the
-- latest received), so an open update that arrives after the final one cannot undo it.
CREATE TABLE IF NOT EXISTS exchange_candles
(
    exchange        LowCardinality(String),
    symbol          LowCardinality(String),
    exchange_symbol LowCardinality(String),
    interval        LowCardinality(String),
    open_time       DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    close_time      DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    open            Float64 CODEC(Gorilla, ZSTD(1)),
    high            Float64 CODEC(Gorilla, ZSTD(1)),
    low             Float64 CODEC(Gorilla, ZSTD(1)),
    close           Float64 CODEC(Gorilla, ZSTD(1)),
    volume          Nullable(Float64) CODEC(ZSTD(1)),
    quote_volume    Nullable(Float64) CODEC(ZSTD(1)),
    trades          Nullable(Int64) CODEC(ZSTD(1)),
    first_trade_id  Nullable(String) CODEC(ZSTD(1)),
    last_trade_id   Nullable(String) CODEC(ZSTD(1)),
    closed          Bool,
    ts              DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    recv_ts         DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    conn            LowCardinality(String),
    seq             Int64 CODEC(Delta, ZSTD(1)),
    version         UInt64 MATERIALIZED
        bitShiftLeft(toUInt64(closed), 62) + toUInt64(toUnixTimestamp64Micro(recv_ts))
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(open_time)
ORDER BY (exchange, symbol, interval, open_time)
SETTINGS non_replicated_deduplication_window = 10000;

-- The latest ticker of each (exchange, symbol).
CREATE VIEW IF NOT EXISTS ticker_latest AS
SELECT *
FROM ticker
ORDER BY exchange, symbol, ts DESC, recv_ts DESC
LIMIT 1 BY exchange, symbol;

-- marketpipe's candles (ohlcv) against the exchange's final candles of the same window, one
-- row per window. Windows are compared once both sides are done with them: the exchange's
-- candle is final and ours closed, or ours is missing although our candles of that market
-- have moved past it. The first window of each market in ohlcv is left out (the pipeline
-- may have started inside it). A *_diff is ours minus the exchange's; trades_diff is NULL
-- where the exchange gives no trade count. Prices must be equal (both sides parse the same
-- trade prices), volumes within a relative 1e-6 (float sums).
CREATE VIEW IF NOT EXISTS candle_check AS
SELECT
    e.exchange AS exchange,
    e.symbol AS symbol,
    e.interval AS interval,
    e.open_time AS open_time,
    o.open_time IS NULL AS ours_missing,
    e.trades AS exchange_trades,
    o.trades AS our_trades,
    ifNull(o.trades, 0) - e.trades AS trades_diff,
    o.open - e.open AS open_diff,
    o.high - e.high AS high_diff,
    o.low - e.low AS low_diff,
    o.close - e.close AS close_diff,
    ifNull(o.volume, 0) - e.volume AS volume_diff,
    (ours_missing AND (ifNull(e.volume, 0) > 0 OR ifNull(e.trades, 0) > 0))
        OR (NOT ours_missing AND (
            ifNull(trades_diff, 0) != 0
            OR abs(open_diff) > 1e-9 * e.open
            OR abs(high_diff) > 1e-9 * e.high
            OR abs(low_diff) > 1e-9 * e.low
            OR abs(close_diff) > 1e-9 * e.close
            OR abs(ifNull(volume_diff, 0)) > 1e-6 * greatest(ifNull(e.volume, 0), 1e-9)
        )) AS disagrees
FROM
(
    SELECT exchange, symbol, interval, open_time, open, high, low, close, volume, trades, closed
    FROM exchange_candles FINAL
    WHERE closed
) AS e
LEFT JOIN
(
    SELECT exchange, symbol, interval, open_time, open, high, low, close, volume, trades, closed
    FROM ohlcv FINAL
) AS o
    ON e.exchange = o.exchange AND e.symbol = o.symbol AND e.interval = o.interval
    AND e.open_time = o.open_time
INNER JOIN
(
    SELECT exchange, symbol, interval, min(open_time) AS first_open, max(open_time) AS last_open
    FROM ohlcv FINAL
    GROUP BY exchange, symbol, interval
) AS span
    ON e.exchange = span.exchange AND e.symbol = span.symbol AND e.interval = span.interval
WHERE e.open_time > span.first_open
  AND (o.closed OR (o.open_time IS NULL AND e.open_time < span.last_open))
ORDER BY exchange, symbol, interval, open_time
SETTINGS join_use_nulls = 1;
