#!/usr/bin/env bash
# Where the enrich pipeline's time goes (not a test, not the benchmark):
# one run of the enrich role over a pre-produced topic (users drawn uniformly
# at random), on a fresh database, with
#  - CPU seconds of the enrich process, the PostgreSQL backends and Redis,
#    from /proc, per event;
#  - pg_stat_statements (needs shared_preload_libraries = pg_stat_statements):
#    the statements by total time;
#  - pg_stat_user_tables for `profiles`: updates, HOT updates, dead tuples;
#  - the collation of profiles.user_id;
#  - a perf profile of the enrich process (when perf is there), top symbols.
# Sizes: DIAG_EVENTS, DIAG_USERS, DIAG_PARTITIONS; batch bounds of the enrich
# role: DIAG_BATCH_EVENTS, DIAG_BATCH_WAIT_MS (the configuration's defaults
# when unset); DIAG_FILLFACTOR sets `profiles`' fillfactor before the run
# (an experiment; the migrations leave PostgreSQL's default, 100);
# DIAG_PERF=0 skips perf. Output: target/diagnose/.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${DIAG_EVENTS:-300000}
USERS=${DIAG_USERS:-20000}
PARTITIONS=${DIAG_PARTITIONS:-4}
BROKERS=${PULSEHUB_TEST_KAFKA:-127.0.0.1:9092}
PGADMIN=${PULSEHUB_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS=${PULSEHUB_TEST_REDIS_URL:-redis://127.0.0.1:6379}
PGBASE=${PGADMIN%/*}
BATCH_EVENTS=${DIAG_BATCH_EVENTS:-2000}
BATCH_WAIT_MS=${DIAG_BATCH_WAIT_MS:-50}
RUN_ID=diag_$$_$(date +%s)
OUT=target/diagnose
mkdir -p "$OUT"

scripts/services.sh >/dev/null
cargo xtask plugins >/dev/null
cargo build --release -p pulsehub --bin pulsehub --example kafka_load 2>&1 | tail -n 1
BIN=target/release/pulsehub
LOAD=target/release/examples/kafka_load
PID=""
db="${RUN_ID}"
cleanup() {
    if [[ -n "$PID" ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    psql -q "$PGADMIN" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# utime + stime of the processes whose command matches $1, in seconds.
cpu_of() {
    local ticks=0 pid
    for pid in $(pgrep -f "$1" || true); do
        [[ -r /proc/$pid/stat ]] || continue
        ticks=$(( ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0) ))
    done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

TOPIC="${RUN_ID}_events"
nisshi topic create "$TOPIC" --partitions "$PARTITIONS" >/dev/null 2>&1 || true
nisshi topic create "$TOPIC.dlq" --partitions 1 >/dev/null 2>&1 || true
$LOAD produce "$BROKERS" "$TOPIC" "$EVENTS" "$USERS" uniform

psql -q "$PGADMIN" -c "CREATE DATABASE $db" >/dev/null
url="$PGBASE/$db"
PULSEHUB_DATABASE_URL="$url" PULSEHUB_LOG=warn $BIN migrate
if [[ -n "${DIAG_FILLFACTOR:-}" ]]; then
    psql -qtA "$url" -c "ALTER TABLE profiles SET (fillfactor = $DIAG_FILLFACTOR)" >/dev/null
fi
psql -qtA "$url" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
psql -qtA "$url" -c "SELECT pg_stat_statements_reset()" >/dev/null

pg_before=$(cpu_of "postgres: .* $db ")
redis_before=$(cpu_of "redis-server")
env -i PATH="$PATH" HOME="$HOME" \
    PULSEHUB_KAFKA_BROKERS="$BROKERS" PULSEHUB_KAFKA_TOPIC="$TOPIC" \
    PULSEHUB_KAFKA_GROUP="${db}_enrich" PULSEHUB_DATABASE_URL="$url" \
    PULSEHUB_REDIS_URL="$REDIS" PULSEHUB_REDIS_KEY_PREFIX="$db:" \
    PULSEHUB_BATCH_MAX_EVENTS="$BATCH_EVENTS" \
    PULSEHUB_BATCH_MAX_WAIT_MS="$BATCH_WAIT_MS" \
    PULSEHUB_LOG=warn \
    $BIN run --role enrich 2>"$OUT/enrich.log" &
PID=$!
first=""
perf_pid=""
while :; do
    done_count=$(psql -qtA "$url" -c "SELECT coalesce(sum(next_offset),0) FROM consumer_offsets" 2>/dev/null || echo 0)
    now=$(date +%s.%N)
    if [[ -z "$first" && "$done_count" -gt 0 ]]; then
        first=$now; first_count=$done_count
        if [[ "${DIAG_PERF:-1}" != 0 ]] && command -v perf >/dev/null; then
            perf record -F 199 --call-graph dwarf,16384 -p "$PID" -o "$OUT/perf.data" -- sleep 8 >/dev/null 2>&1 &
            perf_pid=$!
        fi
    fi
    if [[ "$done_count" -ge "$EVENTS" ]]; then last=$now; break; fi
    sleep 0.05
done
# Sampled before the process stops: the backends go with it.
pg_after=$(cpu_of "postgres: .* $db ")
redis_after=$(cpu_of "redis-server")
host_cpu=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$PID/stat")
rss=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
[[ -n "$perf_pid" ]] && wait "$perf_pid" || true
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""

n=$((EVENTS - first_count))
secs=$(awk -v a="$first" -v b="$last" 'BEGIN{printf "%.2f", b-a}')
{
echo "== $EVENTS events, $USERS users (uniform), $PARTITIONS partitions, batches of up to $BATCH_EVENTS events or $BATCH_WAIT_MS ms, fillfactor ${DIAG_FILLFACTOR:-100}"
echo "throughput: $n events after the first commit in $secs s: $(awk -v n="$n" -v s="$secs" 'BEGIN{printf "%.0f", n/s}') events/s"
echo "CPU per event over the whole run (µs): enrich $(awk -v c="$host_cpu" -v n="$EVENTS" 'BEGIN{printf "%.1f", c*1e6/n}'), postgres $(awk -v a="$pg_before" -v b="$pg_after" -v n="$EVENTS" 'BEGIN{printf "%.1f", (b-a)*1e6/n}'), redis $(awk -v a="$redis_before" -v b="$redis_after" -v n="$EVENTS" 'BEGIN{printf "%.1f", (b-a)*1e6/n}')"
echo "enrich peak RSS: $((rss / 1024)) MiB"
echo
echo "== pg_stat_statements by total time"
psql -qP pager=off "$url" -c "SELECT calls, round(total_exec_time::numeric, 0) AS total_ms, round(mean_exec_time::numeric, 3) AS mean_ms, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8"
echo "== profiles table"
psql -qP pager=off "$url" -c "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup, n_live_tup, pg_size_pretty(pg_total_relation_size('profiles')) AS size FROM pg_stat_user_tables WHERE relname = 'profiles'"
psql -qP pager=off "$url" -c "SELECT a.attname, coalesce(c.collname, '(database default: ' || (SELECT datcollate FROM pg_database WHERE datname = current_database()) || ')') AS collation FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation AND a.attcollation <> 100 WHERE a.attrelid = 'profiles'::regclass AND a.attname = 'user_id'"
if [[ -f "$OUT/perf.data" ]]; then
    echo "== perf: top symbols of the enrich process (self time)"
    perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -30
fi
} | tee "$OUT/report.txt"
