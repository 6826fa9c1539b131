-- The deposit cap counts the last 24 hours, never less. Hour buckets
-- counted "hour > now_hour - 24", which forgot a deposit made at 10:59:50
-- at 10:00:00 the next day (23 h later). Deposits are now counted per
-- minute, and a minute counts until a day after it ends: 24 h to 24 h 1 min
-- after each deposit.
CREATE TABLE deposit_log (
    player_id BIGINT NOT NULL,
    item_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (player_id, item_id, at)
)

-- An hour bucket of the old table counts from the last minute of its hour:
-- never shorter than the deposits in it. (`deposit_window` stays for
-- replicas of the previous version still running during a rolling upgrade;
-- a later migration drops it.)
INSERT INTO deposit_log (player_id, item_id, at, amount)
SELECT player_id, item_id, hour * 3600 + 3540, amount FROM deposit_window
