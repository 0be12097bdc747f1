-- Backfills of a plugin version over the archive (`pulsehub backfill`): each
-- row is one backfill, its options, and its progress, which moves in the
-- same transaction as the profile changes it made.
--
-- With the timeline, a backfill says which version's output the profiles
-- hold for the events below the offsets the version began at: for a user
-- the backfill has done (`after_user` or before it in byte order, or every
-- user once it finished), the plugin's attributes are what `version`
-- computes over the user's events below `until_offsets` (those at or after
-- `since_ms` when set) and, from there on, what the timeline says ran.
-- Reconcile and `rebuild --profiles` replay the archive through both.
CREATE TABLE plugin_backfills (
    id            bigserial   PRIMARY KEY,
    group_id      text        NOT NULL,
    topic         text        NOT NULL,
    plugin        text        NOT NULL,
    version       text        NOT NULL,
    since_ms      bigint,
    users         json,
    until_offsets json        NOT NULL,
    actor         text        NOT NULL,
    started_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    after_user    text COLLATE "C",
    events        bigint      NOT NULL DEFAULT 0,
    users_done    bigint      NOT NULL DEFAULT 0,
    changed       bigint      NOT NULL DEFAULT 0
);

CREATE INDEX plugin_backfills_plugin ON plugin_backfills (group_id, topic, plugin, id);

COMMENT ON COLUMN plugin_backfills.since_ms IS
    'Only events at or after this time (milliseconds since the Unix epoch) below until_offsets count; NULL: all of them.';
COMMENT ON COLUMN plugin_backfills.users IS
    'The user ids it covers, sorted bytewise, as a JSON array; NULL: every user of the archive.';
COMMENT ON COLUMN plugin_backfills.until_offsets IS
    'Partition (as text) to the offset the version''s running stretch began at: the backfill recomputes the events below it.';
COMMENT ON COLUMN plugin_backfills.after_user IS
    'The last user done, in byte order; NULL before the first page.';
COMMENT ON COLUMN plugin_backfills.changed IS
    'Profiles whose attributes the backfill changed.';

-- Replays page through the archive's users in byte order, the order of the
-- profiles' key and of every commit (0003): the archive's user ids compare
-- the same way, so its index serves those pages.
ALTER TABLE events ALTER COLUMN user_id TYPE text COLLATE "C";

-- Where an interrupted replay that is not a backfill (`rebuild --profiles`)
-- got to, moved with the profiles of each page it wrote.
CREATE TABLE replay_progress (
    operation  text PRIMARY KEY,
    after_user text COLLATE "C" NOT NULL,
    updated_at timestamptz NOT NULL
);
