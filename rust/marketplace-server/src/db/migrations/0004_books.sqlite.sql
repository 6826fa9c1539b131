-- Statements are separated by blank lines (see db/mod.rs).
-- Server-side books: every credit and item inside the market is in exactly
-- one place — an account, a listing's escrow, or unclaimed proceeds — and
-- every movement is a ledger row with what moved (item_id NULL: credits).
CREATE TABLE accounts (
    player_id BIGINT PRIMARY KEY REFERENCES players (id),
    credits BIGINT NOT NULL DEFAULT 0 CHECK (credits >= 0),
    version BIGINT NOT NULL DEFAULT 0
)

CREATE TABLE stash (
    player_id BIGINT NOT NULL REFERENCES players (id),
    item_id TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity >= 0),
    PRIMARY KEY (player_id, item_id)
)

CREATE TABLE deposit_window (
    player_id BIGINT NOT NULL,
    item_id TEXT NOT NULL,
    hour BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (player_id, item_id, hour)
)

CREATE TABLE withdrawals (
    id INTEGER PRIMARY KEY,
    player_id BIGINT NOT NULL REFERENCES players (id),
    idem_key TEXT NOT NULL,
    item_id TEXT,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    at BIGINT NOT NULL
)

CREATE UNIQUE INDEX withdrawals_by_key ON withdrawals (player_id, idem_key)

CREATE TABLE deposits (
    id INTEGER PRIMARY KEY,
    player_id BIGINT NOT NULL REFERENCES players (id),
    idem_key TEXT NOT NULL,
    item_id TEXT,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    at BIGINT NOT NULL
)

CREATE UNIQUE INDEX deposits_by_key ON deposits (player_id, idem_key)

CREATE TABLE grants (
    id INTEGER PRIMARY KEY,
    idem_key TEXT NOT NULL UNIQUE,
    player_id BIGINT NOT NULL REFERENCES players (id),
    item_id TEXT,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    at BIGINT NOT NULL
)

CREATE TABLE bans (
    player_id BIGINT PRIMARY KEY REFERENCES players (id),
    at BIGINT NOT NULL
)

ALTER TABLE ledger ADD COLUMN item_id TEXT

ALTER TABLE ledger ADD COLUMN quantity BIGINT

-- What each trade moved between the game's save and the market, for
-- rebuilding answers after pruning. NULL: the row is from before the books,
-- when everything moved to and from the save.
ALTER TABLE purchases ADD COLUMN deposited BIGINT

ALTER TABLE purchases ADD COLUMN delivered BIGINT

ALTER TABLE purchases ADD COLUMN claim_delivered BIGINT

ALTER TABLE listings ADD COLUMN deposited BIGINT

ALTER TABLE listings ADD COLUMN cancel_delivered BIGINT

-- Listings beyond the limits the protocol has now (quantity 10^6, price
-- 10^12) were made by modified clients before there were limits: they are
-- withdrawn, and nobody can buy them.
UPDATE listings SET status = 'cancelled' WHERE status = 'active' AND (quantity > 1000000 OR price > 1000000000000)

INSERT INTO ledger (at, player_id, action, listing_id, item_id, quantity, request_id)
SELECT created_at, seller_id, 'opening_escrow', id, item_id, quantity, 'migration-4'
FROM listings WHERE status = 'active' ORDER BY id

INSERT INTO ledger (at, player_id, action, listing_id, purchase_id, quantity, request_id)
SELECT created_at, seller_id, 'opening_proceeds', listing_id, id, price, 'migration-4'
FROM purchases WHERE claimed_at IS NULL ORDER BY id

CREATE INDEX ledger_by_action ON ledger (action, player_id)
