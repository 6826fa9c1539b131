-- The deposit cap counts exactly the last 24 hours. Hour buckets counted
-- "hour > now_hour - 24", which forgot a deposit made at 10:59:50 at
-- 10:00:00 the next day (23 h later). Each second of deposits is now a row;
-- a deposit at t counts while now < t + 86400.
CREATE TABLE deposit_log (
    player_id BIGINT NOT NULL,
    item_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (player_id, item_id, at)
)

-- Buckets of the old table count from the last second of their hour: never
-- shorter than the deposits in them.
INSERT INTO deposit_log (player_id, item_id, at, amount)
SELECT player_id, item_id, hour * 3600 + 3599, amount FROM deposit_window

DROP TABLE deposit_window
