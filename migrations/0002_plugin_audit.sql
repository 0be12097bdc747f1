-- Every change to the running plugins: operators' uploads, rollbacks and
-- removals through the admin API, the watched plugin directory, and the
-- host's own quarantines and automatic rollbacks.
CREATE TABLE plugin_audit (
    id                  bigserial   PRIMARY KEY,
    at                  timestamptz NOT NULL,
    actor               text        NOT NULL,
    action              text        NOT NULL,
    plugin              text        NOT NULL,
    outcome             text        NOT NULL,
    version             text,
    version_id          text,
    sha256              text,
    previous_version_id text,
    detail              text
);

CREATE INDEX plugin_audit_plugin_at ON plugin_audit (plugin, at);
