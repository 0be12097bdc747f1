#!/usr/bin/env bash
# Measures `pulsehub backfill` beside the live pipeline on this machine, in
# one run (a benchmark, not a test):
#  1. history: HISTORY events of USERS users through `pulsehub run --role
#     all` (enrich, archive, API) with two of the built-in plugins;
#  2. the third, last-active, is added to the watched plugin directory;
#  3. live alone: LIVE more events produced, events/s from the first to the
#     last committed;
#  4. live with a backfill: `pulsehub backfill --plugin last-active` started
#     as LIVE more events are produced: the live events/s as in 3, and the
#     backfill's own events/s (its JSON summary).
# Sizes: BENCH_HISTORY (400000), BENCH_LIVE (400000), BENCH_USERS (20000),
# BENCH_PARTITIONS (4); BENCH_MAX_RATE caps the backfill (--max-rate).
# Needs the services (scripts/services.sh, started here).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/pipeline-bench.sh

HISTORY=${BENCH_HISTORY:-400000}
LIVE=${BENCH_LIVE:-400000}
USERS=${BENCH_USERS:-20000}
PARTITIONS=${BENCH_PARTITIONS:-4}
NAME=backfill_$$_$(date +%s)

pb_setup
WORK=$(mktemp -d)
PB_DIRS+=("$WORK")
mkdir -p "$WORK/plugins" "$WORK/registry"
cp target/plugins/device-classifier.* target/plugins/page-view-counter.* "$WORK/plugins/"

pb_topic "$NAME" "$PARTITIONS" "$HISTORY" "$USERS"
pb_scratch_db "$NAME"
PB_PREFIXES+=("$NAME:")
PORT=$(pb_free_port)
SETTINGS=(
    PULSEHUB_KAFKA_BROKERS="$BROKERS" PULSEHUB_KAFKA_TOPIC="$NAME"
    PULSEHUB_KAFKA_GROUP="${NAME}_enrich" PULSEHUB_KAFKA_ARCHIVE_GROUP="${NAME}_archive"
    PULSEHUB_DATABASE_URL="$DB_URL" PULSEHUB_REDIS_URL="$REDIS"
    PULSEHUB_REDIS_KEY_PREFIX="$NAME:" PULSEHUB_PLUGIN_DIR="$WORK/plugins"
    PULSEHUB_PLUGIN_REGISTRY_DIR="$WORK/registry"
)
pb_start all "$WORK/run.log" "${SETTINGS[@]}" PULSEHUB_HTTP_ADDR="127.0.0.1:$PORT"
RUN=$PB_PID
pb_wait_http "http://127.0.0.1:$PORT/healthz" "$RUN" "$WORK/run.log"
pb_wait_committed "$RUN" "$DB_URL" "$HISTORY"
echo "history: $HISTORY events of $USERS users committed"

cp target/plugins/last-active.* "$WORK/plugins/"
until curl -fs -o /dev/null "http://127.0.0.1:$PORT/api/v1/plugins/last-active"; do sleep 0.2; done
echo "last-active installed from the plugin directory"

# live_run EVENTS_BEFORE: produces LIVE events and waits until all are
# committed; sets LIVE_RATE (events/s from the produce's start).
live_run() {
    local before=$1 started
    started=$EPOCHREALTIME
    "$LOAD" produce "$BROKERS" "$NAME" "$LIVE" "$USERS" uniform "$before" >/dev/null
    pb_wait_committed "$RUN" "$DB_URL" $((before + LIVE))
    LIVE_RATE=$(awk -v n="$LIVE" -v a="$started" -v b="$LAST_TIME" 'BEGIN { printf "%.0f", n / (b - a) }')
}

live_run "$HISTORY"
ALONE=$LIVE_RATE
echo "live alone: $ALONE events/s"

# The backfill needs the archive to hold what the profiles hold: it waits
# for it page by page.
RATE_ARGS=()
if [[ -n ${BENCH_MAX_RATE:-} ]]; then RATE_ARGS=(--max-rate "$BENCH_MAX_RATE"); fi
env -i PATH="$PATH" HOME="$HOME" USER=bench PULSEHUB_LOG=warn "${SETTINGS[@]}" \
    "$BIN" backfill --plugin last-active "${RATE_ARGS[@]}" >"$WORK/backfill.json" 2>"$WORK/backfill.log" &
BACKFILL=$!
PB_PIDS+=("$BACKFILL")
live_run $((HISTORY + LIVE))
WITH=$LIVE_RATE
echo "live during the backfill: $WITH events/s"
if ! wait "$BACKFILL"; then
    echo "bench: the backfill failed:" >&2
    tail -n 20 "$WORK/backfill.log" >&2
    exit 1
fi
pb_forget "$BACKFILL"
read -r USERS_DONE EVENTS SECONDS_TAKEN RETRIED < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print(s["users"], s["events"], round(s["seconds"], 2), s["retried"])' "$WORK/backfill.json")
BACKFILL_RATE=$(awk -v n="$EVENTS" -v s="$SECONDS_TAKEN" 'BEGIN { printf "%.0f", n / s }')

cat <<EOF

| measure | value |
|---|---:|
| live events/s, alone | $ALONE |
| live events/s, during the backfill | $WITH ($(awk -v a="$WITH" -v b="$ALONE" 'BEGIN { printf "%.0f%%", 100 * a / b }') of alone) |
| backfill: users, archived events replayed | $USERS_DONE, $EVENTS |
| backfill: seconds, events/s | $SECONDS_TAKEN, $BACKFILL_RATE |
| backfill: users computed again (changed by the live pipeline during their page) | $RETRIED |

(HISTORY=$HISTORY, LIVE=$LIVE per phase, USERS=$USERS, PARTITIONS=$PARTITIONS, max rate ${BENCH_MAX_RATE:-none}; one run)
EOF
