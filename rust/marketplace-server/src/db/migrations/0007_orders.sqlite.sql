-- Statements are separated by blank lines (see db/mod.rs).
-- A real market: partial fills, buy orders, expiry, fees and deliveries.
--
-- Prices become per unit. A listing's `quantity` stays what was listed;
-- `remaining` is what can still be bought (its escrow while active). A
-- purchase row is one fill (several per listing now), `price` what the
-- buyer paid in all, `fee` what the market kept from the seller.
CREATE TABLE purchases_v7 (
    id INTEGER PRIMARY KEY,
    listing_id BIGINT NOT NULL REFERENCES listings (id),
    buyer_id BIGINT NOT NULL REFERENCES players (id),
    seller_id BIGINT NOT NULL REFERENCES players (id),
    item_id TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    price BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    claimed_at BIGINT,
    buy_key TEXT,
    claim_key TEXT,
    deposited BIGINT,
    delivered BIGINT,
    claim_delivered BIGINT,
    order_id BIGINT,
    unit_price BIGINT,
    fee BIGINT NOT NULL DEFAULT 0,
    taker_id BIGINT,
    taker_key TEXT
)

INSERT INTO purchases_v7 (id, listing_id, buyer_id, seller_id, item_id, quantity, price, created_at, claimed_at, buy_key, claim_key, deposited, delivered, claim_delivered)
SELECT id, listing_id, buyer_id, seller_id, item_id, quantity, price, created_at, claimed_at, buy_key, claim_key, deposited, delivered, claim_delivered FROM purchases

DROP TABLE purchases

ALTER TABLE purchases_v7 RENAME TO purchases

CREATE INDEX purchases_by_seller ON purchases (seller_id, claimed_at, id)

CREATE UNIQUE INDEX purchases_by_buy_key ON purchases (buyer_id, buy_key)

CREATE UNIQUE INDEX purchases_by_claim_key ON purchases (seller_id, claim_key)

CREATE INDEX purchases_by_listing ON purchases (listing_id, id)

CREATE INDEX purchases_by_order ON purchases (order_id, id)

-- The request that made an order fill (the order placed, or the listing
-- created or repriced, that took the resting side), to rebuild its answer.
CREATE INDEX purchases_by_taker ON purchases (taker_id, taker_key)

-- Fills from before keep no unit price: their expected price was the
-- lot's, and replays of their keys are recognised by it.

ALTER TABLE listings ADD COLUMN remaining BIGINT NOT NULL DEFAULT 0

ALTER TABLE listings ADD COLUMN expires_at BIGINT

-- Why a listing closed without being sold out: 'seller' (cancelled),
-- 'expiry', 'migration'.
ALTER TABLE listings ADD COLUMN closed_by TEXT

-- What went back to the seller when it closed unsold (read in the same
-- statement that zeroes `remaining`).
ALTER TABLE listings ADD COLUMN returned BIGINT

UPDATE listings SET remaining = quantity WHERE status = 'active'

UPDATE listings SET closed_by = 'seller' WHERE status = 'cancelled'

ALTER TABLE ledger ADD COLUMN order_id BIGINT

ALTER TABLE ledger ADD COLUMN delivery_id BIGINT

CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    buyer_id BIGINT NOT NULL REFERENCES players (id),
    item_id TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    remaining BIGINT NOT NULL CHECK (remaining >= 0),
    max_price BIGINT NOT NULL CHECK (max_price > 0),
    min_fill BIGINT NOT NULL CHECK (min_fill > 0),
    escrow BIGINT NOT NULL CHECK (escrow >= 0),
    status TEXT NOT NULL CHECK (status IN ('active', 'filled', 'cancelled', 'expired')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    place_key TEXT,
    cancel_key TEXT,
    deposited BIGINT NOT NULL DEFAULT 0,
    returned BIGINT,
    cancel_delivered BIGINT
)

CREATE UNIQUE INDEX orders_by_place_key ON orders (buyer_id, place_key)

CREATE UNIQUE INDEX orders_by_cancel_key ON orders (buyer_id, cancel_key)

CREATE INDEX orders_by_buyer ON orders (buyer_id, id)

-- The best bid first: highest price, then the oldest.
CREATE INDEX orders_book ON orders (item_id, status, max_price DESC, id)

CREATE INDEX orders_by_expiry ON orders (status, expires_at)

CREATE INDEX listings_book ON listings (item_id, status, price, id)

CREATE INDEX listings_by_expiry ON listings (status, expires_at)

-- What the market owes a player until they collect it.
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    player_id BIGINT NOT NULL REFERENCES players (id),
    kind TEXT NOT NULL,
    item_id TEXT,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    listing_id BIGINT,
    order_id BIGINT,
    fill_id BIGINT,
    created_at BIGINT NOT NULL,
    collected_at BIGINT,
    collect_key TEXT,
    collect_delivered BIGINT
)

CREATE INDEX deliveries_by_player ON deliveries (player_id, collected_at, id)

CREATE INDEX deliveries_by_key ON deliveries (player_id, collect_key)

-- One row per item traded by orders: every change that can make a book
-- cross (a buy order, a new or repriced listing) updates its item's row
-- first, so matching on one item runs one at a time on every backend.
CREATE TABLE item_books (
    item_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL
)

-- Lots whose price does not divide into whole credits per unit cannot be
-- sold by the unit: they are withdrawn, and their escrow waits for the
-- seller as a delivery. The others get their unit price.
UPDATE listings SET status = 'cancelled', closed_by = 'migration', updated_at = updated_at
WHERE status = 'active' AND quantity > 1 AND price % quantity <> 0

INSERT INTO deliveries (player_id, kind, item_id, quantity, listing_id, created_at)
SELECT seller_id, 'listing_returned', item_id, remaining, id, updated_at FROM listings
WHERE closed_by = 'migration' ORDER BY id

INSERT INTO ledger (at, player_id, action, listing_id, delivery_id, item_id, quantity, request_id)
SELECT d.created_at, d.player_id, 'listing_return', d.listing_id, d.id, d.item_id, d.quantity, 'migration-7'
FROM deliveries d WHERE d.kind = 'listing_returned' ORDER BY d.id

UPDATE listings SET returned = remaining, remaining = 0 WHERE closed_by = 'migration'

UPDATE listings SET price = price / quantity WHERE status = 'active' AND quantity > 1
