-- Dead-lettered events `pulsehub dlq redrive` ran a plugin version over:
-- the latest outcome of each, written in the transaction of the profile
-- change it made. An applied one is never run again (its event would count
-- twice) and tells replays that the profile holds that version's output
-- for the event; a failed one keeps its new error and may be tried again.
CREATE TABLE dead_letter_redrives (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    plugin      text        NOT NULL,
    user_id     text COLLATE "C" NOT NULL,
    version     text        NOT NULL,
    applied     boolean     NOT NULL,
    error_kind  text,
    detail      text,
    attempts    integer     NOT NULL,
    redriven_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, topic, partition, "offset", plugin)
);

CREATE INDEX dead_letter_redrives_user ON dead_letter_redrives (group_id, topic, user_id)
    WHERE applied;

COMMENT ON COLUMN dead_letter_redrives.error_kind IS
    'NULL when the version applied; else the kind of error it failed with again (trap, invalid-event, ...).';
