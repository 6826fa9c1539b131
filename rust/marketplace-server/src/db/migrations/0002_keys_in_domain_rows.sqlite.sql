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

CREATE INDEX ledger_by_listing ON ledger (listing_id, action)

CREATE INDEX ledger_by_purchase ON ledger (purchase_id, action)

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

-- The old server ran a key again once its stored answer was pruned, so a
-- key may have made two rows: only the first keeps it.
UPDATE listings SET create_key = NULL WHERE create_key IS NOT NULL AND id <> (SELECT MIN(o.id) FROM listings o WHERE o.seller_id = listings.seller_id AND o.create_key = listings.create_key)

UPDATE listings SET cancel_key = NULL WHERE cancel_key IS NOT NULL AND id <> (SELECT MIN(o.id) FROM listings o WHERE o.seller_id = listings.seller_id AND o.cancel_key = listings.cancel_key)

UPDATE purchases SET buy_key = NULL WHERE buy_key IS NOT NULL AND id <> (SELECT MIN(o.id) FROM purchases o WHERE o.buyer_id = purchases.buyer_id AND o.buy_key = purchases.buy_key)

UPDATE purchases SET claim_key = NULL WHERE claim_key IS NOT NULL AND id <> (SELECT MIN(o.id) FROM purchases o WHERE o.seller_id = purchases.seller_id AND o.claim_key = purchases.claim_key)

DELETE FROM listing_reprices WHERE id <> (SELECT MIN(o.id) FROM listing_reprices o WHERE o.seller_id = listing_reprices.seller_id AND o.idem_key = listing_reprices.idem_key)

CREATE UNIQUE INDEX listings_by_create_key ON listings (seller_id, create_key)

CREATE UNIQUE INDEX listings_by_cancel_key ON listings (seller_id, cancel_key)

CREATE UNIQUE INDEX purchases_by_buy_key ON purchases (buyer_id, buy_key)

CREATE UNIQUE INDEX purchases_by_claim_key ON purchases (seller_id, claim_key)

CREATE UNIQUE INDEX reprices_by_key ON listing_reprices (seller_id, idem_key)

CREATE INDEX listings_by_item ON listings (item_id, status, id)

-- Which kind of change each key made, for every key that changed something:
-- one lookup tells a fresh request from a replay (of which kind), and the
-- rows above rebuild the answer.
CREATE TABLE operation_keys (
    player_id BIGINT NOT NULL,
    idem_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (player_id, idem_key)
)

INSERT INTO operation_keys (player_id, idem_key, kind)
SELECT seller_id, create_key, 'create_listing' FROM listings WHERE create_key IS NOT NULL
ON CONFLICT DO NOTHING

INSERT INTO operation_keys (player_id, idem_key, kind)
SELECT seller_id, cancel_key, 'cancel' FROM listings WHERE cancel_key IS NOT NULL
ON CONFLICT DO NOTHING

INSERT INTO operation_keys (player_id, idem_key, kind)
SELECT seller_id, idem_key, 'reprice' FROM listing_reprices WHERE idem_key IS NOT NULL
ON CONFLICT DO NOTHING

INSERT INTO operation_keys (player_id, idem_key, kind)
SELECT buyer_id, buy_key, 'purchase' FROM purchases WHERE buy_key IS NOT NULL
ON CONFLICT DO NOTHING

INSERT INTO operation_keys (player_id, idem_key, kind)
SELECT seller_id, claim_key, 'claim' FROM purchases WHERE claim_key IS NOT NULL
ON CONFLICT DO NOTHING
