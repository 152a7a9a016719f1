-- The sink re-inserts a batch after a crash with the batch's original
-- insert_deduplication_token (sinks/worker.py); ClickHouse drops it only while the token
-- is among the table's last `non_replicated_deduplication_window` block ids. One block id
-- is kept per part written: (topic partitions) x (table partitions the batch spans) per
-- flush, from every sink worker. 10,000 covers a restarted worker's wait for its
-- partitions (the session timeout) many times over at any realistic flush rate; each id
-- costs about 100 bytes in the table's deduplication_logs.
-- (A ReplicatedMergeTree copy of these tables needs replicated_deduplication_window and
-- replicated_deduplication_window_seconds instead.)

ALTER TABLE trades MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE ohlcv MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE book_buckets MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE bbo MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE status MODIFY SETTING non_replicated_deduplication_window = 10000;
