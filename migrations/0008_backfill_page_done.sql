-- The users of a backfill's current page already written, beyond
-- `after_user`: a page goes round again for the users the live pipeline
-- changed under it, and the users written in an earlier round hold the
-- backfilled values from that round's commit on. Reconcile and rebuild must
-- then replay them as done, or they would find (and a repair would undo)
-- the backfill's own work. Emptied when the page is done and `after_user`
-- moves past them.
ALTER TABLE plugin_backfills
    ADD COLUMN page_done text[] NOT NULL DEFAULT '{}';

COMMENT ON COLUMN plugin_backfills.page_done IS
    'Users of the current page written by an earlier round, beyond after_user; empty between pages.';
