-- Derivatives (md.funding, md.open-interest, md.mark-price, md.liquidations; Avro FundingRate,
-- OpenInterest, MarkPrice, Liquidation) and the views over them. Sizes are in contracts of the
-- instrument (instruments.contract_size of contract_size_currency each). Dedup as in 0001:
-- ReplacingMergeTree on the natural key, so a replay or a retried insert stores nothing twice.

-- Funding history: one row per change of a symbol's funding (the stream publishes changes only).
CREATE TABLE IF NOT EXISTS funding
(
    exchange        LowCardinality(String),
    symbol          LowCardinality(String),
    exchange_symbol LowCardinality(String),
    rate            Float64 CODEC(ZSTD(1)),
    predicted_rate  Nullable(Float64) CODEC(ZSTD(1)),
    next_funding_ts Nullable(DateTime64(6, 'UTC')) CODEC(ZSTD(1)),
    interval_s      Nullable(Int64) CODEC(ZSTD(1)),
    ts              DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    recv_ts         DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    conn            LowCardinality(String),
    seq             Int64 CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (exchange, symbol, ts, conn, seq)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS open_interest
(
    exchange        LowCardinality(String),
    symbol          LowCardinality(String),
    exchange_symbol LowCardinality(String),
    open_interest   Float64 CODEC(ZSTD(1)),
    value           Nullable(Float64) CODEC(ZSTD(1)),
    ts              DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    recv_ts         DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    conn            LowCardinality(String),
    seq             Int64 CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (exchange, symbol, ts, conn, seq)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS mark_price
(
    exchange        LowCardinality(String),
    symbol          LowCardinality(String),
    exchange_symbol LowCardinality(String),
    mark_price      Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    index_price     Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    settle_price    Nullable(Float64) CODEC(ZSTD(1)),
    ts              DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    recv_ts         DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    conn            LowCardinality(String),
    seq             Int64 CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (exchange, symbol, ts, conn, seq)
SETTINGS non_replicated_deduplication_window = 10000;

-- One row per liquidation: the same one seen on two connections has the same natural key.
CREATE TABLE IF NOT EXISTS liquidations
(
    exchange        LowCardinality(String),
    symbol          LowCardinality(String),
    exchange_symbol LowCardinality(String),
    side            Enum8('buy' = 1, 'sell' = 2, 'unknown' = 3),
    price           Float64 CODEC(ZSTD(1)),
    size            Float64 CODEC(ZSTD(1)),
    liquidation_id  Nullable(String) CODEC(ZSTD(1)),
    ts              DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    recv_ts         DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    conn            LowCardinality(String),
    seq             Int64 CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (exchange, symbol, ts, side, price, size)
SETTINGS non_replicated_deduplication_window = 10000;

-- Sizes in base currency and notional (quote currency) from the contract size: a linear
-- contract is contract_size base (or quote) units, an inverse one contract_size quote units
-- (USD), worth contract_size / price base. Spot and instruments without metadata count 1 base.
CREATE VIEW IF NOT EXISTS trades_notional AS
SELECT
    t.exchange AS exchange, t.symbol AS symbol, t.ts AS ts, t.trade_id AS trade_id,
    if(i.kind = '', 'spot', i.kind) AS kind,
    if(i.base = '', splitByChar('-', t.symbol)[1], i.base) AS base,
    t.side AS side, t.price AS price, t.size AS contracts,
    multiIf(
        i.contract_size_currency = '', t.size,
        i.contract_size_currency = i.quote, t.size * i.contract_size / t.price,
        t.size * i.contract_size
    ) AS base_size,
    base_size * t.price AS notional
FROM trades AS t FINAL
LEFT JOIN (SELECT * FROM instruments FINAL) AS i ON i.exchange = t.exchange AND i.symbol = t.symbol
SETTINGS join_use_nulls = 0;

-- The cross-exchange volume of one underlying per minute, spot and each derivative kind apart:
-- in base currency and notional, so contracts of different sizes (and linear and inverse ones)
-- add up. notional sums the quote currencies as they are (USD, USDT and USDC alike).
CREATE VIEW IF NOT EXISTS volume_by_underlying_1m AS
SELECT
    base, kind, toStartOfMinute(ts) AS minute,
    groupUniqArray(exchange) AS exchanges, count() AS trades,
    sum(base_size) AS base_volume, sum(notional) AS notional
FROM trades_notional
GROUP BY base, kind, minute
ORDER BY base, kind, minute;

CREATE VIEW IF NOT EXISTS funding_latest AS
SELECT *
FROM funding FINAL
ORDER BY exchange, symbol, ts DESC
LIMIT 1 BY exchange, symbol;

-- Per minute: mark vs index of each contract, and the perpetual's mark vs the same pair's spot
-- (the average 1m close of that pair over every spot exchange marketpipe follows).
CREATE VIEW IF NOT EXISTS perp_basis_1m AS
WITH marks AS (
    SELECT
        exchange, symbol, toStartOfMinute(ts) AS minute,
        argMax(mark_price, ts) AS mark, argMax(index_price, ts) AS index
    FROM mark_price FINAL
    GROUP BY exchange, symbol, minute
),
spot AS (
    SELECT symbol, toStartOfMinute(open_time) AS minute, avg(close) AS spot_close
    FROM ohlcv FINAL
    WHERE interval = '1m' AND countSubstrings(symbol, '-') = 1
    GROUP BY symbol, minute
)
SELECT
    m.exchange AS exchange, m.symbol AS symbol, m.minute AS minute, m.mark AS mark, m.index AS index,
    (m.mark - m.index) / m.index * 10000 AS mark_index_bps,
    s.spot_close AS spot_close,
    (m.mark - s.spot_close) / s.spot_close * 10000 AS mark_spot_bps
FROM marks AS m
LEFT JOIN spot AS s ON s.symbol = substring(m.symbol, 1, position(m.symbol, '-PERP') - 1) AND s.minute = m.minute
WHERE position(m.symbol, '-PERP') > 0
SETTINGS join_use_nulls = 1;

CREATE VIEW IF NOT EXISTS open_interest_1m AS
SELECT
    exchange, symbol, toStartOfMinute(ts) AS minute,
    argMax(open_interest, ts) AS open_interest, argMax(value, ts) AS value
FROM open_interest FINAL
GROUP BY exchange, symbol, minute
ORDER BY exchange, symbol, minute;

CREATE VIEW IF NOT EXISTS liquidations_1m AS
SELECT
    exchange, symbol, toStartOfMinute(ts) AS minute,
    countIf(side = 'sell') AS longs_liquidated, sumIf(size, side = 'sell') AS long_contracts,
    countIf(side = 'buy') AS shorts_liquidated, sumIf(size, side = 'buy') AS short_contracts
FROM liquidations FINAL
GROUP BY exchange, symbol, minute
ORDER BY exchange, symbol, minute;
