-- Segments (docs/segments.md, contract §5).
--
-- * `segments`: the live definitions, one per name. A definition's `id`
--   changes whenever its condition does (ids come from a sequence and are
--   never reused), so a profile's memberships, kept in its document as
--   segment ids, never count for a condition they were not computed under.
-- * `segment_members`: who is in each segment, written by the commit that
--   changed the membership, in the same transaction as the profile. Rows of
--   an id that is no longer live are left to the definition's change to
--   delete; every read joins on the live ids.
CREATE SEQUENCE segment_ids AS integer;

CREATE TABLE segments (
    name       text        COLLATE "C" PRIMARY KEY,
    id         integer     NOT NULL UNIQUE DEFAULT nextval('segment_ids'),
    condition  json        NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    -- Computing the definition over the profiles that existed before it:
    -- the last profile key done (NULL before the first page), how many
    -- profiles were done, whether all are, and whether the memberships it
    -- finds are announced on the stream.
    backfill_after    text    COLLATE "C",
    backfill_profiles bigint  NOT NULL DEFAULT 0,
    backfill_done     boolean NOT NULL DEFAULT false,
    emit_backfill     boolean NOT NULL DEFAULT false
);

COMMENT ON COLUMN segments.condition IS
    'As the definition gave it: a CEL expression (a JSON string) or a JSON tree.';
COMMENT ON COLUMN segments.updated_at IS
    'When the condition last changed (and the id with it).';

CREATE TABLE segment_members (
    segment_id integer     NOT NULL,
    user_id    text        COLLATE "C" NOT NULL,
    PRIMARY KEY (segment_id, user_id)
);

-- When a profile's memberships next change with time alone (a condition
-- relative to now, such as `last_active_at > now - duration('7d')`), in
-- milliseconds since the Unix epoch; NULL when never. Set by the commit
-- that evaluates the profile; the scheduler re-evaluates what came due.
ALTER TABLE profiles ADD COLUMN segments_due_ms bigint;
CREATE INDEX profiles_segments_due ON profiles (segments_due_ms)
    WHERE segments_due_ms IS NOT NULL;
