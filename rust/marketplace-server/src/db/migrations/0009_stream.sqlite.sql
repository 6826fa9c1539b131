-- Statements are separated by blank lines (see db/mod.rs).
-- The change stream's outbox (see stream/mod.rs). Every transaction that
-- changes the market adds its events and, last of all, bumps the one
-- counter row: the row lock held to the commit numbers events in commit
-- order, without gaps, on every backend and replica.
CREATE TABLE stream_head (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    pruned_through BIGINT NOT NULL
)

INSERT INTO stream_head (id, seq, pruned_through) VALUES (1, 0, 0)

CREATE TABLE stream_events (
    seq BIGINT PRIMARY KEY,
    item_id TEXT,
    owner_id BIGINT,
    recipient_id BIGINT,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
)

CREATE INDEX stream_events_by_time ON stream_events (created_at)

-- What happened while a player was away: one open row per listing or
-- order (`subject_id`) and kind, brought up to date until acknowledged.
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY,
    player_id BIGINT NOT NULL REFERENCES players (id),
    kind TEXT NOT NULL,
    subject_id BIGINT NOT NULL,
    item_id TEXT NOT NULL,
    listing_id BIGINT,
    order_id BIGINT,
    quantity BIGINT NOT NULL,
    credits BIGINT NOT NULL,
    fee BIGINT NOT NULL,
    fills BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    acked_at BIGINT
)

CREATE INDEX notifications_by_player ON notifications (player_id, acked_at, id)

CREATE UNIQUE INDEX notifications_open ON notifications (player_id, kind, subject_id) WHERE acked_at IS NULL

CREATE INDEX notifications_by_time ON notifications (updated_at)

CREATE INDEX notifications_acked ON notifications (acked_at) WHERE acked_at IS NOT NULL
