-- Identity (docs/identity.md): one profile per person across identifiers.
--
-- * `profiles.merged_into`: set on a pointer row, the row at an
--   identifier's home key (or at a profile merged away) that belongs to the
--   profile at the key it names. The profile document says the same
--   (`"merged_into"`); the column lets listings skip pointers.
-- * `profile_merges`: the merge log, keyed by the event whose identifiers
--   caused it and what it joined: a profile merged away (`merge`) or a new
--   identifier's home key (`attach`).
ALTER TABLE profiles ADD COLUMN merged_into text COLLATE "C";

CREATE TABLE profile_merges (
    event_id  text        NOT NULL,
    merged    text        COLLATE "C" NOT NULL,
    survivor  text        COLLATE "C" NOT NULL,
    kind      text        NOT NULL CHECK (kind IN ('merge', 'attach')),
    merged_at timestamptz NOT NULL,
    PRIMARY KEY (event_id, merged)
);
CREATE INDEX profile_merges_survivor ON profile_merges (survivor);
