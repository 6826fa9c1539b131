-- Statements are separated by blank lines (see db/mod.rs).
-- The operator console (console/mod.rs): its sign-in sessions (only a hash
-- of the cookie is kept), every operator action with the session it came
-- from, and the indexes its pages page by.
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
)

CREATE TABLE console_actions (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL,
    session_label TEXT NOT NULL,
    action TEXT NOT NULL,
    player_id BIGINT,
    listing_id BIGINT,
    detail TEXT NOT NULL
)

CREATE INDEX console_actions_by_player ON console_actions (player_id, id)

CREATE INDEX players_by_name ON players (name, id)

CREATE INDEX ledger_by_item ON ledger (item_id, id)

CREATE INDEX ledger_by_action_id ON ledger (action, id)

CREATE TABLE console_audits (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL,
    session_label TEXT NOT NULL,
    ok BIGINT NOT NULL,
    report TEXT NOT NULL
)
