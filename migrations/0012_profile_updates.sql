-- The outbox of the `profile-updates` stream (contract §3a).
--
-- A batch's commit writes one row holding the messages of every profile it
-- changed, in the same transaction as the profiles: what is committed is
-- published, whatever process dies when. One row per commit, not per
-- profile, keeps the outbox's cost per batch rather than per profile. The
-- relay publishes rows in `id` order and deletes them once the broker
-- acknowledged every message, so a crash between the two publishes a row
-- again (consumers drop repeats by profile id and revision). Two commits of
-- one profile hold its row lock in turn, and the second inserts its outbox
-- row after the first committed, so `id` order is revision order per
-- profile.
CREATE TABLE profile_updates (
    id          bigserial PRIMARY KEY,
    profile_ids text[]    NOT NULL,
    messages    text[]    NOT NULL
);

-- Compressed with lz4: a fraction of pglz's time, and the messages (JSON
-- repeating the same keys and plugin names) shrink to about a third.
ALTER TABLE profile_updates ALTER COLUMN messages SET COMPRESSION lz4;

COMMENT ON COLUMN profile_updates.messages IS
    'The JSON published as each message value; its key is profile_ids at the same index.';
