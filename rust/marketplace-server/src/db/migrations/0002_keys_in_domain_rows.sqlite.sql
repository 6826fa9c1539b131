-- Statements are separated by blank lines (see db/mod.rs).
-- An operation that happened is recognised by its Idempotency-Key forever:
-- the key (and, through the owning column, the requester) lives in the rows
-- the operation created or changed, which are never pruned. Rows written
-- before this migration get their keys back from the ledger.
ALTER TABLE listings ADD COLUMN create_key TEXT

ALTER TABLE listings ADD COLUMN listed_price BIGINT

ALTER TABLE listings ADD COLUMN cancel_key TEXT

ALTER TABLE purchases ADD COLUMN buy_key TEXT

ALTER TABLE purchases ADD COLUMN claim_key TEXT

CREATE TABLE listing_reprices (
    id INTEGER PRIMARY KEY,
    listing_id BIGINT NOT NULL REFERENCES listings (id),
    seller_id BIGINT NOT NULL REFERENCES players (id),
    idem_key TEXT NOT NULL,
    price BIGINT NOT NULL,
    at BIGINT NOT NULL
)

UPDATE listings SET
    create_key = (SELECT MIN(g.idempotency_key) FROM ledger g WHERE g.action = 'list' AND g.listing_id = listings.id),
    listed_price = COALESCE((SELECT MIN(g.amount) FROM ledger g WHERE g.action = 'list' AND g.listing_id = listings.id), price),
    cancel_key = (SELECT MIN(g.idempotency_key) FROM ledger g WHERE g.action = 'cancel' AND g.listing_id = listings.id)

UPDATE purchases SET
    buy_key = (SELECT MIN(g.idempotency_key) FROM ledger g WHERE g.action = 'purchase' AND g.purchase_id = purchases.id),
    claim_key = (SELECT MIN(g.idempotency_key) FROM ledger g WHERE g.action = 'claim' AND g.purchase_id = purchases.id)

INSERT INTO listing_reprices (listing_id, seller_id, idem_key, price, at)
SELECT g.listing_id, g.player_id, g.idempotency_key, g.amount, g.at FROM ledger g
WHERE g.action = 'reprice' AND g.idempotency_key IS NOT NULL ORDER BY g.id

CREATE UNIQUE INDEX listings_by_create_key ON listings (seller_id, create_key)

CREATE UNIQUE INDEX listings_by_cancel_key ON listings (seller_id, cancel_key)

CREATE UNIQUE INDEX purchases_by_buy_key ON purchases (buyer_id, buy_key)

CREATE UNIQUE INDEX purchases_by_claim_key ON purchases (seller_id, claim_key)

CREATE UNIQUE INDEX reprices_by_key ON listing_reprices (seller_id, idem_key)

CREATE INDEX listings_by_item ON listings (item_id, status, id)
