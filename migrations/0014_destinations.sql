-- Destinations: webhooks that receive chosen changes of the
-- `profile-updates` stream (docs/destinations.md, contract §5).
--
-- * `destinations`: one per name, with what it receives, its signing
--   secrets and what became of its deliveries. Each destination reads the
--   stream with a consumer group of its own, so where it is in the stream
--   lives in the broker, not here; it receives what was published from
--   `created_at` on.
-- * `destination_dead_letters`: batches that failed every attempt of the
--   retry schedule, kept until the admin API sends them again or deletes
--   them.
CREATE TABLE destinations (
    name       text        COLLATE "C" PRIMARY KEY,
    url        text        NOT NULL,
    -- The signing secret (`whsec_…`), and the one before it, which also
    -- signs until `previous_until` so receivers can switch over.
    secret          text        NOT NULL,
    previous_secret text,
    previous_until  timestamptz,
    -- Message types (`profile.updated`, `segment.entered`, …) and segment
    -- names; NULL segments: every segment.
    events     text[]      NOT NULL,
    segments   text[],
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    -- NULL while enabled; why it stopped otherwise (a `410 Gone`).
    disabled_reason text,
    disabled_at     timestamptz,
    -- Counters, added to by the process that delivers.
    sent           bigint      NOT NULL DEFAULT 0,
    failed         bigint      NOT NULL DEFAULT 0,
    retried        bigint      NOT NULL DEFAULT 0,
    dead_lettered  bigint      NOT NULL DEFAULT 0,
    last_sent_at   timestamptz,
    last_error     text,
    last_error_at  timestamptz
);

CREATE TABLE destination_dead_letters (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination text        COLLATE "C" NOT NULL
                            REFERENCES destinations (name) ON DELETE CASCADE,
    -- The `webhook-id` every attempt carried, and the body they signed.
    webhook_id  text        NOT NULL,
    body        text        NOT NULL,
    messages    integer     NOT NULL,
    attempts    integer     NOT NULL,
    last_error  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX destination_dead_letters_by_destination
    ON destination_dead_letters (destination, id);
