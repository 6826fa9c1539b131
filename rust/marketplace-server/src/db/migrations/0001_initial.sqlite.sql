-- Statements are separated by blank lines (see db/mod.rs).
CREATE TABLE players (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
)

CREATE TABLE listings (
    id INTEGER PRIMARY KEY,
    seller_id BIGINT NOT NULL REFERENCES players (id),
    item_id TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    price BIGINT NOT NULL CHECK (price > 0),
    status TEXT NOT NULL CHECK (status IN ('active', 'sold', 'cancelled')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
)

CREATE INDEX listings_by_status ON listings (status, id)

CREATE INDEX listings_by_seller ON listings (seller_id, id)

CREATE TABLE purchases (
    id INTEGER PRIMARY KEY,
    listing_id BIGINT NOT NULL UNIQUE REFERENCES listings (id),
    buyer_id BIGINT NOT NULL REFERENCES players (id),
    seller_id BIGINT NOT NULL REFERENCES players (id),
    item_id TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    price BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    claimed_at BIGINT
)

CREATE INDEX purchases_by_seller ON purchases (seller_id, claimed_at, id)

CREATE TABLE idempotency_keys (
    player_id BIGINT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status_code BIGINT NOT NULL,
    response_body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (player_id, idem_key)
)

CREATE INDEX idempotency_by_age ON idempotency_keys (created_at)

CREATE TABLE ledger (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL,
    player_id BIGINT NOT NULL,
    action TEXT NOT NULL,
    listing_id BIGINT,
    purchase_id BIGINT,
    amount BIGINT,
    idempotency_key TEXT,
    request_id TEXT NOT NULL
)

CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END

CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END

CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
