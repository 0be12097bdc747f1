#!/usr/bin/env bash
# Gives this machine's PostgreSQL cluster the settings the pipeline figures in
# docs/scaling.md were measured with, and restarts it. docker-compose.yml
# starts its PostgreSQL with the same settings.
#
#   shared_buffers = 2GB       the profiles of 1,000,000 users (about 1 GiB
#                              with their index) stay in PostgreSQL's own
#                              cache instead of going through the kernel's
#   max_wal_size = 8GB         checkpoints come from the timer, not from WAL
#   checkpoint_timeout = 15min volume, so each page's first change after one
#                              (a full-page image in the WAL) is rare
#   wal_compression = lz4      the full-page images that remain are smaller
#
# None of them trades durability: fsync, synchronous_commit and
# full_page_writes stay on. With PostgreSQL's defaults the write path at
# 1,000,000 users wrote a full-page image for one update in three and ran
# about 11% slower (docs/scaling.md).
#
# Needs root (or the postgres user) on a Debian-style cluster
# (pg_ctlcluster); PGADMIN (default: the postgres user over the local socket)
# says how to connect as a superuser.
set -euo pipefail

version="$(ls /etc/postgresql | head -n1)"
admin=(psql -qtA -v ON_ERROR_STOP=1)
if [[ -n "${PGADMIN:-}" ]]; then
    admin+=("$PGADMIN")
elif [[ "$(id -un)" != postgres ]]; then
    admin=(runuser -u postgres -- "${admin[@]}")
fi

"${admin[@]}" <<'SQL'
ALTER SYSTEM SET shared_buffers = '2GB';
ALTER SYSTEM SET max_wal_size = '8GB';
ALTER SYSTEM SET checkpoint_timeout = '15min';
ALTER SYSTEM SET wal_compression = 'lz4';
SQL
# shared_buffers takes a restart.
pg_ctlcluster --skip-systemctl-redirect "$version" main restart
"${admin[@]}" -c "SELECT name || ' = ' || current_setting(name) FROM pg_settings \
    WHERE name IN ('shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'wal_compression') ORDER BY name"
