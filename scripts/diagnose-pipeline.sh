#!/usr/bin/env bash
# Where the enrich pipeline's time goes (not a test, not the benchmark):
# one run of the enrich role over a pre-produced topic (users drawn uniformly
# at random), on a fresh database, with
#  - CPU seconds of the enrich process, PostgreSQL and Redis, from /proc,
#    per event, and the enrich process's by thread (its committer is the
#    critical path) with its minor page faults;
#  - pg_stat_statements (needs shared_preload_libraries = pg_stat_statements):
#    the statements by total time;
#  - pg_stat_user_tables for `profiles`: updates, HOT updates, dead tuples;
#  - the collation of profiles.user_id;
#  - WAL written during the run (pg_stat_wal: records, full-page images,
#    bytes) and checkpoints, with the server settings that drive them;
#  - a perf profile of the enrich process (when perf is there), top symbols.
# Sizes: DIAG_EVENTS, DIAG_USERS, DIAG_PARTITIONS; DIAG_SPREAD=uniform-identify
# gives every tenth event an anonymous id (kafka_load). PulseHub's settings
# (batch bounds and the rest) are its defaults unless exported
# (PULSEHUB_BATCH_MAX_EVENTS=..., PULSEHUB_BATCH_MAX_WAIT_MS=...); the report
# lists them. DIAG_FILLFACTOR sets `profiles`' fillfactor before the run
# (an experiment; migration 0003 sets 50);
# DIAG_PERF=0 skips perf; DIAG_PERF_SECS (8) is how long it samples, from
# the first commit. Output: target/diagnose/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/pipeline-bench.sh
source scripts/lib/pipeline-bench.sh

EVENTS=${DIAG_EVENTS:-300000}
USERS=${DIAG_USERS:-20000}
PARTITIONS=${DIAG_PARTITIONS:-4}
RUN_ID=diag_$$_$(date +%s)
OUT=target/diagnose
mkdir -p "$OUT"
# A perf.data left by an earlier run would be reported as this one's.
rm -f "$OUT/perf.data" "$OUT/statements.err"

# Before the start: the fillfactor experiment, statement statistics from
# zero (when the server loads pg_stat_statements; the rest of the report
# does not need it).
STATEMENTS=""
prepare() {
    if [[ -n ${DIAG_FILLFACTOR:-} ]]; then
        psql -qtA "$1" -c "ALTER TABLE profiles SET (fillfactor = $DIAG_FILLFACTOR)" >/dev/null
    fi
    # Cluster-wide counters: a quiet server makes them this run's.
    psql -qtA "$1" -c "SELECT pg_stat_reset_shared('wal')" >/dev/null
    CHECKPOINTS_BEFORE=$(psql -qtA "$1" -c "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
    if psql -qtA "$1" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" \
        -c "SELECT pg_stat_statements_reset()" >/dev/null 2>"$OUT/statements.err"; then
        STATEMENTS=1
    fi
}

# At the first commit, DIAG_PERF_SECS (8) of perf samples of the enrich process at its busiest.
PERF_PID=""
start_perf() {
    if [[ ${DIAG_PERF:-1} != 0 ]] && command -v perf >/dev/null; then
        perf record -F 199 --call-graph dwarf,16384 -p "$PB_PID" -o "$OUT/perf.data" -- sleep "${DIAG_PERF_SECS:-8}" >/dev/null 2>&1 &
        PERF_PID=$!
    fi
}

pb_setup
pb_topic "${RUN_ID}_events" "$PARTITIONS" "$EVENTS" "$USERS" "${DIAG_SPREAD:-uniform}"
pb_enrich_run "$RUN_ID" "${RUN_ID}_events" "$EVENTS" "$OUT/enrich.log" prepare 1 start_perf
if [[ -n $PERF_PID ]]; then wait "$PERF_PID" || true; fi
url=$RUN_URL

{
echo "== $EVENTS events, $USERS users (${DIAG_SPREAD:-uniform}), $PARTITIONS partitions, fillfactor ${DIAG_FILLFACTOR:-50}; settings:"
pb_settings | sed 's/^/   /'
echo "throughput: $RUN_EVENTS events after the first commit in $RUN_SECS s: $RUN_RATE events/s"
echo "CPU per event over the whole run (µs): enrich $RUN_HOST_US, postgres $RUN_PG_US, redis $RUN_REDIS_US"
echo "enrich CPU per event by thread (µs): $RUN_THREADS"
echo "enrich peak RSS: $RUN_RSS_MIB MiB; minor page faults: $RUN_FAULTS"
echo
echo "== pg_stat_statements by total time"
if [[ -n $STATEMENTS ]]; then
    psql -qP pager=off "$url" -c "SELECT calls, round(total_exec_time::numeric, 0) AS total_ms, round(mean_exec_time::numeric, 3) AS mean_ms, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8"
else
    echo "(not measured: $(head -n 1 "$OUT/statements.err"); set shared_preload_libraries = pg_stat_statements and restart PostgreSQL)"
fi
echo "== profiles table"
psql -qP pager=off "$url" -c "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup, n_live_tup, pg_size_pretty(pg_total_relation_size('profiles')) AS size FROM pg_stat_user_tables WHERE relname = 'profiles'"
# Rows by kind (profiles, pointers of merged-away keys) and their stored
# document sizes, and the commit attempts a batch took.
psql -qP pager=off "$url" -c "SELECT CASE WHEN merged_into IS NULL THEN 'profile' ELSE 'pointer' END AS row_kind, count(*) AS rows, round(avg(pg_column_size(profile))) AS avg_doc_bytes, max(pg_column_size(profile)) AS max_doc_bytes, max(revision) AS max_revision FROM profiles GROUP BY 1 ORDER BY 1"
psql -qP pager=off "$url" -c "SELECT a.attname, coalesce(c.collname, '(database default: ' || (SELECT datcollate FROM pg_database WHERE datname = current_database()) || ')') AS collation FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation AND a.attcollation <> 100 WHERE a.attrelid = 'profiles'::regclass AND a.attname = 'user_id'"
echo "== WAL during the run (cluster-wide), per event"
psql -qP pager=off "$url" -c "SELECT wal_records, wal_fpi, pg_size_pretty(wal_bytes) AS wal, round(wal_bytes / $EVENTS) AS bytes_per_event, round(wal_fpi::numeric / $EVENTS, 2) AS fpi_per_event, (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter) - $CHECKPOINTS_BEFORE AS checkpoints FROM pg_stat_wal"
psql -qtA "$url" -c "SELECT string_agg(name || ' = ' || current_setting(name), ', ' ORDER BY name) FROM pg_settings WHERE name IN ('shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'wal_compression', 'synchronous_commit', 'full_page_writes')" | sed 's/^/server: /'
if [[ -f "$OUT/perf.data" ]]; then
    echo "== perf: top symbols of the enrich process (self time)"
    perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -30
fi
} | tee "$OUT/report.txt"
