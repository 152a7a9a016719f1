-- Instrument metadata (md.instruments, Avro Instrument): what each normalised name stands for
-- (kind, linear/inverse, contract size and its currency, expiry, strike). The topic is
-- compacted by exchange:symbol and republished whenever a connection reads the instrument
-- list, so the table keeps one row per (exchange, symbol): the latest metadata read (highest
-- ts) wins under FINAL, and a replay stores nothing twice.
CREATE TABLE IF NOT EXISTS instruments
(
    exchange               LowCardinality(String),
    symbol                 String,
    exchange_symbol        String,
    kind                   LowCardinality(String),
    contract_type          LowCardinality(Nullable(String)),
    base                   LowCardinality(String),
    quote                  LowCardinality(String),
    settle_currency        LowCardinality(Nullable(String)),
    contract_size          Float64,
    contract_size_currency LowCardinality(String),
    expiry_ts              Nullable(DateTime64(6, 'UTC')),
    strike                 Nullable(Float64),
    option_type            LowCardinality(Nullable(String)),
    tick_size              Nullable(Float64),
    lot_size               Nullable(Float64),
    ts                     DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(ts)
ORDER BY (exchange, symbol)
SETTINGS non_replicated_deduplication_window = 10000;
