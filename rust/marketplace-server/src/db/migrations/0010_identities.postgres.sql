-- Statements are separated by blank lines (see db/mod.rs).
-- Identities from the game's own identity providers (see identity.rs):
-- (provider, subject) is one player; a player holds at most one identity
-- per provider. A player made by a token login has no device: its
-- players.device_id is `identity:` and random bits, which no device id
-- hashes to (those are `sha256:…`).
CREATE TABLE identities (
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    player_id BIGINT NOT NULL REFERENCES players (id),
    linked_at BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
)

CREATE UNIQUE INDEX identities_by_player ON identities (player_id, provider)
