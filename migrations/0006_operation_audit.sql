-- Every operation that changes stored or cached profiles outside the live
-- pipeline (`pulsehub rebuild`, and the backfills, reconcile repairs and
-- dead-letter re-drives to come): who ran it, what, over which range, with
-- what counts, and how it ended. Beside `plugin_audit`, which records the
-- changes to the running plugins.
CREATE TABLE operation_audit (
    id        bigserial   PRIMARY KEY,
    at        timestamptz NOT NULL,
    actor     text        NOT NULL,
    operation text        NOT NULL,
    outcome   text        NOT NULL,
    detail    json        NOT NULL
);

CREATE INDEX operation_audit_operation_at ON operation_audit (operation, at);

COMMENT ON COLUMN operation_audit.actor IS
    'Who ran it: the operating-system user of a command (cli:<user>).';
COMMENT ON COLUMN operation_audit.operation IS
    'What ran, e.g. rebuild-cache.';
COMMENT ON COLUMN operation_audit.outcome IS
    'done, or failed (the error is in detail).';
COMMENT ON COLUMN operation_audit.detail IS
    'The options, the range covered and the counts, as the command printed them.';
