-- A player's operations by key, in order (`GET /v1/me/operations`), and a
-- player's ledger history, stay index lookups however long the ledger is;
-- old deposit buckets are pruned by age.
CREATE INDEX ledger_by_player ON ledger (player_id, id)

CREATE INDEX ledger_by_player_key ON ledger (player_id, idempotency_key)

CREATE INDEX deposit_log_by_age ON deposit_log (at)
