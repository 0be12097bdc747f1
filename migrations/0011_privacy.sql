-- Privacy requests (docs/identity.md, contract §5).
--
-- * `privacy_requests`: every request as asked and as carried out; with
--   `operation_audit`, its audit record.
-- * `suppressions`: the keys (profile keys and identifiers' home keys) whose
--   events the lanes drop before any plugin runs, grouped by the request
--   that suppressed them.
-- * `privacy_state`: one row, the generation of the suppressions. Every
--   change of them moves it, under the exclusive advisory lock the batch
--   commits take shared: a batch commits only under the generation it was
--   filtered with.
CREATE TABLE privacy_requests (
    id           bigserial   PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind IN ('suppress', 'unsuppress', 'delete', 'export')),
    identifiers  json        NOT NULL,
    keys         text[]      NOT NULL,
    status       text        NOT NULL CHECK (status IN ('pending', 'applied', 'done')),
    actor        text        NOT NULL,
    submitted_at timestamptz NOT NULL,
    finished_at  timestamptz,
    result       json,
    cache_keys   text[]
);

COMMENT ON COLUMN privacy_requests.identifiers IS
    'As the caller named them: [{"type": ..., "value": ...}] (plain values of hashed types).';
COMMENT ON COLUMN privacy_requests.keys IS
    'The home keys of the identifiers, in the same order.';
COMMENT ON COLUMN privacy_requests.status IS
    'pending: not applied yet; applied: stored data changed, cached copies still to clear; done.';
COMMENT ON COLUMN privacy_requests.cache_keys IS
    'While applied: the keys whose cached copies are still to clear.';

CREATE TABLE suppressions (
    key        text        COLLATE "C" PRIMARY KEY,
    request_id bigint      NOT NULL REFERENCES privacy_requests (id),
    since      timestamptz NOT NULL
);
CREATE INDEX suppressions_request ON suppressions (request_id);

CREATE TABLE privacy_state (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    generation bigint  NOT NULL
);
INSERT INTO privacy_state (generation) VALUES (0);

-- A person's rows: the pointers that lead to them, and the merges that
-- name them either way.
CREATE INDEX profiles_merged_into ON profiles (merged_into) WHERE merged_into IS NOT NULL;
CREATE INDEX profile_merges_merged ON profile_merges (merged);
