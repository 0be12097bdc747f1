-- The timeline of plugin versions: from which offset of each partition each
-- plugin version applied, and until which.
--
-- Written in the same transaction as the commit of the first batch that ran
-- a different plugin set over a partition: the versions that left the set
-- are closed at the batch's start, the versions that joined it open there.
-- With the archive keeping each event's topic, partition and offset, the
-- profiles are then a function of the archive and this table: backfill,
-- reconcile and rebuild replay the archive through it.
CREATE TABLE plugin_timeline (
    group_id     text NOT NULL,
    topic        text NOT NULL,
    partition    integer NOT NULL,
    plugin       text NOT NULL,
    version      text NOT NULL,
    from_offset  bigint NOT NULL,
    until_offset bigint,
    opened_at    timestamptz NOT NULL,
    closed_at    timestamptz,
    PRIMARY KEY (group_id, topic, partition, plugin, version, from_offset),
    CHECK (until_offset IS NULL OR until_offset >= from_offset)
);

-- What each commit looks up: the stretches still open on its partitions.
CREATE INDEX plugin_timeline_open ON plugin_timeline (group_id, topic, partition)
    WHERE until_offset IS NULL;

COMMENT ON TABLE plugin_timeline IS
    'Which plugin versions the enrich group ran over which offsets of each partition: a version saw every record with from_offset <= offset < until_offset (no end while open) that decoded and that it subscribes to; its failures went to the dead-letter topic.';
COMMENT ON COLUMN plugin_timeline.from_offset IS
    'The first offset the version applied to: the partition''s stored next offset when the batch that first ran it committed (0 when the group had none).';
COMMENT ON COLUMN plugin_timeline.until_offset IS
    'The first offset it no longer applied to; NULL while it still runs.';
