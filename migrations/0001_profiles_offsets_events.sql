-- PulseHub's system of record: profiles, the consumer offsets committed with
-- them, and the raw-event archive.

CREATE TABLE profiles (
    user_id    text PRIMARY KEY,
    profile    jsonb NOT NULL,
    revision   bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

COMMENT ON TABLE profiles IS
    'One row per user: the truth that Redis caches and the API serves.';
COMMENT ON COLUMN profiles.profile IS
    'The serde JSON of pulsehub::profile::Profile: attributes with value and provenance (plugin, plugin version, event id, event time).';
COMMENT ON COLUMN profiles.revision IS
    'Counts the commits that changed the profile; equals profile->>''revision''.';
COMMENT ON COLUMN profiles.created_at IS
    'Wall-clock time of the first commit that changed the profile.';
COMMENT ON COLUMN profiles.updated_at IS
    'Wall-clock time of the latest commit that changed the profile.';

CREATE TABLE consumer_offsets (
    group_id    text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);

COMMENT ON TABLE consumer_offsets IS
    'Where each consumer group resumes reading, written in the same transaction as the profile changes the records made.';
COMMENT ON COLUMN consumer_offsets.next_offset IS
    'The next offset to read: one past the last record applied.';
COMMENT ON COLUMN consumer_offsets.updated_at IS
    'Wall-clock time of the commit that last moved the offset.';

CREATE TABLE events (
    event_id      text PRIMARY KEY,
    user_id       text NOT NULL,
    event_type    text NOT NULL,
    event_time_ms bigint NOT NULL,
    topic         text,
    partition     integer,
    "offset"      bigint,
    -- json rather than jsonb: keeps the original text byte for byte and
    -- accepts the \u0000 escape, which jsonb refuses.
    payload       json NOT NULL,
    archived_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_user_time ON events (user_id, event_time_ms);

COMMENT ON TABLE events IS
    'The raw-event archive, idempotent by event id: for replays and reconciliation.';
COMMENT ON COLUMN events.event_time_ms IS
    'The event''s own time, milliseconds since the Unix epoch.';
COMMENT ON COLUMN events.topic IS
    'Where the event was read from (topic, partition, offset); null when it did not come from a log.';
COMMENT ON COLUMN events.payload IS
    'The event as received, unchanged.';
COMMENT ON COLUMN events.archived_at IS
    'When the archive stored the event.';
