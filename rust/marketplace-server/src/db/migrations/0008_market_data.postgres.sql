-- Statements are separated by blank lines (see db/mod.rs).
-- Market data per item (last price, 24 h volume, price history) reads an
-- item's fills by time.
CREATE INDEX purchases_by_item ON purchases (item_id, created_at, id)
