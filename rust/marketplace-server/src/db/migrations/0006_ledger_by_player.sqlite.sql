-- A player's operations by key, in order (`GET /v1/me/operations`), and a
-- player's ledger history, stay index lookups however long the ledger is.
CREATE INDEX ledger_by_player ON ledger (player_id, id)

CREATE INDEX ledger_by_player_key ON ledger (player_id, idempotency_key)
