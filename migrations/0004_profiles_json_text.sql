-- `profiles.profile` as `json`, the text PulseHub wrote, instead of `jsonb`.
--
-- Nothing in PostgreSQL looks inside a profile: every commit reads whole
-- documents, decodes them in Rust, and writes whole documents back. `jsonb`
-- made PostgreSQL parse each written document into its binary form and
-- print each read one back to text. With 40,000 profiles of three
-- attributes (about 800 bytes each), the revision-checked upsert took 22 µs
-- per row as `jsonb` and 13.5 µs as `json`, and the read by key 13.5 µs and
-- 7.7 µs (issue 11's measurements, 1,000,000 rows). `json` still checks that
-- what is written is JSON, and it also accepts a text value holding U+0000
-- (`\u0000`), which `jsonb` refused, failing the batch.
--
-- The change rewrites the table, under an exclusive lock, in one pass.
ALTER TABLE profiles ALTER COLUMN profile TYPE json USING profile::json;

COMMENT ON COLUMN profiles.profile IS
    'The serde JSON of pulsehub::profile::Profile, as written: attributes with value and provenance (plugin, plugin version, event id, event time).';
