-- Views for people: documented with examples in docs/sql.md.

-- One row per candle: the highest version of each (exchange, symbol, interval, open_time).
CREATE VIEW IF NOT EXISTS ohlcv_final AS
SELECT
    exchange, symbol, interval, open_time, close_time, open, high, low, close,
    volume, quote_volume, buy_volume, sell_volume, trades, vwap,
    first_trade_ts, last_trade_ts, closed, late, version, markets
FROM ohlcv FINAL;

-- Parameterized: SELECT * FROM candle_series(exchange='binance', symbol='BTC-USDT', interval='1m')
CREATE VIEW IF NOT EXISTS candle_series AS
SELECT
    open_time, close_time, open, high, low, close, volume, quote_volume,
    buy_volume, sell_volume, trades, vwap, closed, late, version
FROM ohlcv FINAL
WHERE exchange = {exchange:String} AND symbol = {symbol:String} AND interval = {interval:String}
ORDER BY open_time;

-- Per symbol and second: the best bid and best ask across exchanges (each exchange's
-- last BBO in that second). A negative spread means the books cross between venues.
CREATE VIEW IF NOT EXISTS cross_exchange_spread AS
SELECT
    symbol,
    second,
    max(bid) AS best_bid,
    argMax(exchange, bid) AS best_bid_exchange,
    min(ask) AS best_ask,
    argMin(exchange, ask) AS best_ask_exchange,
    best_ask - best_bid AS spread,
    (best_ask - best_bid) / ((best_ask + best_bid) / 2) * 10000 AS spread_bps,
    count() AS exchanges
FROM
(
    SELECT
        symbol,
        exchange,
        toStartOfSecond(ts) AS second,
        argMax(bid_price, ts) AS bid,
        argMax(ask_price, ts) AS ask
    FROM bbo
    WHERE exchange != 'all'
    GROUP BY symbol, exchange, second
)
GROUP BY symbol, second
HAVING exchanges >= 2;

-- Every bucket of every snapshot as rows (side, price, size, notional): a heatmap source.
CREATE VIEW IF NOT EXISTS book_heatmap AS
SELECT
    exchange, symbol, ts, mid, bucket_size,
    level.1 AS side, level.2 AS price, level.3 AS size, level.4 AS notional
FROM book_buckets
ARRAY JOIN arrayConcat(
    arrayMap((p, s, n) -> ('bid', p, s, n), bids.price, bids.size, bids.notional),
    arrayMap((p, s, n) -> ('ask', p, s, n), asks.price, asks.size, asks.notional)
) AS level;

-- The latest snapshot of each (exchange, symbol), as heatmap rows.
CREATE VIEW IF NOT EXISTS book_heatmap_latest AS
SELECT
    exchange, symbol, ts, mid, bucket_size,
    level.1 AS side, level.2 AS price, level.3 AS size, level.4 AS notional
FROM
(
    SELECT exchange, symbol, ts, mid, bucket_size, bids.price, bids.size, bids.notional,
           asks.price, asks.size, asks.notional
    FROM book_buckets
    ORDER BY exchange, symbol, ts DESC
    LIMIT 1 BY exchange, symbol
)
ARRAY JOIN arrayConcat(
    arrayMap((p, s, n) -> ('bid', p, s, n), `bids.price`, `bids.size`, `bids.notional`),
    arrayMap((p, s, n) -> ('ask', p, s, n), `asks.price`, `asks.size`, `asks.notional`)
) AS level;

-- Feed health per exchange and hour from md.status events. A book that goes unsynced
-- (gap, checksum mismatch, crossed book) is resynced from a fresh snapshot, so
-- `resyncs` counts unsynced transitions.
CREATE VIEW IF NOT EXISTS feed_health AS
SELECT
    exchange,
    toStartOfHour(ts) AS hour,
    countIf(reason = 'gap') AS gaps,
    countIf(reason = 'checksum') AS checksum_failures,
    countIf(reason = 'crossed') AS crossed_books,
    countIf(state = 'unsynced') AS resyncs,
    countIf(state = 'disconnected') AS disconnects,
    uniqExact(symbol) AS symbols,
    count() AS events
FROM status FINAL
GROUP BY exchange, hour;
