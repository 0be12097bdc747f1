#!/usr/bin/env bash
# Measures PulseHub end to end on this machine, all in one run (a benchmark,
# not a test), the workloads of issue 11:
#  - raw: the broker's raw consume rate on each topic (a bare librdkafka
#    consumer doing nothing with the messages), beside the pipeline figures;
#  - W1: 2,000,000 events of 20,000 users, each event's user drawn uniformly
#    at random, on 4 partitions: events/s from the topic to committed
#    profiles (enrich role: the plugins, the PostgreSQL commit with the
#    offsets, the Redis write-through), timed from the first commit to the
#    last offset, each run on a fresh database, consumer group and Redis
#    prefix over the same pre-produced topic;
#  - GET: profile reads (`GET /api/v1/profiles/{id}`, the API role) paced at
#    5,000 requests/s with wrk (scripts/wrk-profiles.lua), p99: idle, over
#    the last W1 run's profiles once it drained, and busy, during further W1
#    runs (whose throughput under that load is reported too);
#  - W1id (issue 13): W1 with identities: every tenth event carries an
#    anonymous id of its user, alone (half of them) or linking it to the
#    user id (`identify`, the other half), so profiles merge;
#  - W2: 3,000,000 events of 1,000,000 users: events/s, and the enrich
#    process's peak RSS;
#  - embedded: `pulsehub run` with no services, 1,000,000 events of 20,000
#    users POSTed to /api/v1/events in arrays of 10,000 (the fastest way in:
#    see EMBEDDED_CHUNK), timed from the first POST until the last event
#    shows in its user's profile.
# Also per event: CPU µs of the PulseHub process, of all PostgreSQL processes
# and of Redis, from /proc, over each whole run (start-up included).
# Medians of 3 runs (BENCH_RUNS). Prints each run, then a Markdown report,
# also written to target/bench/report.md (every process's log beside it).
#
# Sizes and choices, from the environment (defaults: issue 11's):
#   BENCH_W1_EVENTS=2000000 BENCH_W1_USERS=20000 BENCH_PARTITIONS=4
#   BENCH_W2_EVENTS=3000000 BENCH_W2_USERS=1000000
#   BENCH_EMBEDDED_EVENTS=1000000 BENCH_EMBEDDED_USERS=20000
#   BENCH_RUNS=3 BENCH_GET_RATE=5000 BENCH_GET_SECS=10
#   BENCH_WORKLOADS="w1 get w2 embedded" (a subset runs only those; get
#   needs w1; w1id runs only when named, and with w1 the two run in
#   alternating pairs, their ratio per pair reported)
#   BENCH_SEGMENTS=0 (that many segments defined in every run's database
#   before PulseHub starts: the definitions of benches/segments.rs)
# A smoke run, under a minute once built (about 2 minutes with 3 runs):
#   BENCH_RUNS=1 BENCH_W1_EVENTS=20000 BENCH_W1_USERS=2000 \
#   BENCH_W2_EVENTS=20000 BENCH_W2_USERS=10000 BENCH_EMBEDDED_EVENTS=20000 \
#   BENCH_GET_SECS=2 scripts/bench-pipeline.sh
# PulseHub runs with its configured defaults; export PULSEHUB_* variables
# (PULSEHUB_BATCH_MAX_EVENTS, PULSEHUB_BATCH_MAX_WAIT_MS, ...) to change
# them: every process gets them, and the report's header lists what ran.
# Needs the services (scripts/services.sh starts them), wrk (apt-get install
# wrk), python3 and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/pipeline-bench.sh
source scripts/lib/pipeline-bench.sh

RUNS=${BENCH_RUNS:-3}
PARTITIONS=${BENCH_PARTITIONS:-4}
W1_EVENTS=${BENCH_W1_EVENTS:-2000000}
W1_USERS=${BENCH_W1_USERS:-20000}
W2_EVENTS=${BENCH_W2_EVENTS:-3000000}
W2_USERS=${BENCH_W2_USERS:-1000000}
EMBEDDED_EVENTS=${BENCH_EMBEDDED_EVENTS:-1000000}
EMBEDDED_USERS=${BENCH_EMBEDDED_USERS:-20000}
GET_RATE=${BENCH_GET_RATE:-5000}
GET_SECS=${BENCH_GET_SECS:-10}
WORKLOADS=${BENCH_WORKLOADS:-w1 get w2 embedded}
SEGMENTS=${BENCH_SEGMENTS:-0}
# Events per POST in the embedded mode: the route's cap (10,000 events),
# one durable inbox write each. The other way in, `pulsehub run --events
# FILE`, publishes in chunks of 1,000 (ten times the fsyncs) before the API
# answers, so start-up falls inside the timing: 100,000 events took 6.0 s
# to go in that way, 1.3 s by POST (2 busy cores; the pipeline behind both).
EMBEDDED_CHUNK=10000
# wrk: two threads (one per core here) and enough connections that the
# paced rate is reached even when a request takes 10 ms.
GET_THREADS=2
GET_CONNECTIONS=50
RUN_ID=bench_$$_$(date +%s)
OUT=target/bench

want() { [[ " $WORKLOADS " == *" $1 "* ]]; }

# define_segments DB_URL: BENCH_SEGMENTS segments stored in a run's
# database before PulseHub starts, each of one to three comparisons over
# the built-in plugins' attributes (the definitions of benches/segments.rs).
define_segments() {
    python3 - "$SEGMENTS" <<'PY' | psql -q -v ON_ERROR_STOP=1 "$1" >/dev/null
import json, sys
devices = ["mobile", "desktop", "tablet"]
for i in range(int(sys.argv[1])):
    condition = [
        f"page_views >= {i}",
        f"device_type == '{devices[i % 3]}' && page_views >= {i % 20}",
        f"last_active_at > now - duration('{i % 30 + 1}d')",
        f"os_family in ['Windows', 'iOS'] && browser_family != 'Chrome' && first_seen_at < now - duration('{i}h')",
        f"page_views >= {i % 10} && last_active_at > now - duration('{i % 30 + 1}d') && device_type == 'mobile'",
    ][i % 5]
    text = json.dumps(condition).replace("'", "''")
    print(f"INSERT INTO segments (name, condition, created_at, updated_at) VALUES ('bench-{i}', '{text}', now(), now());")
PY
}
if ((SEGMENTS > 0)); then PB_AFTER_MIGRATE=define_segments; fi

# 1234567 -> 1,234,567
commas() { awk '{ n = $1; s = ""; while (n >= 1000) { s = sprintf(",%03d", n % 1000) s; n = int(n / 1000) } print n s }'; }

# joined SEP WORDS...: the words with SEP between them.
joined() {
    local sep=$1 out=$2 word
    shift 2
    for word in "$@"; do out+="$sep$word"; done
    echo "$out"
}

# Markdown rows of the report, added as each workload ends.
THROUGHPUT_ROWS=()
GET_ROWS=()

# The median of the arguments, or "–" when there are none.
median_of() { if [[ $# -gt 0 ]]; then printf '%s\n' "$@" | median; else echo "–"; fi; }

# throughput_row LABEL: a row from the figures of the runs just done (RATES,
# HOST_US, PG_US, REDIS_US, RSS_MIB; empty where a figure does not apply).
throughput_row() {
    local runs cpu rss="–"
    # shellcheck disable=SC2046 # one word per run
    runs=$(joined " / " $(for rate in "${RATES[@]}"; do commas <<<"$rate"; done))
    cpu="$(median_of "${HOST_US[@]}") | $(median_of "${PG_US[@]}") | $(median_of "${REDIS_US[@]}")"
    if [[ ${#RSS_MIB[@]} -gt 0 ]]; then
        rss="$(printf '%s\n' "${RSS_MIB[@]}" | sort -n | tail -n 1) MiB"
    fi
    THROUGHPUT_ROWS+=("| $1 | **$(median_of "${RATES[@]}" | commas)** | $runs | $cpu | $rss |")
}

# wrk_get URL SECS OUT: paced GETs of the W1 users' profiles for SECS
# seconds, wrk's BENCH line into OUT.
wrk_get() {
    BENCH_USERS=$W1_USERS BENCH_RATE=$GET_RATE BENCH_THREADS=$GET_THREADS \
        wrk -t"$GET_THREADS" -c"$GET_CONNECTIONS" -d"$2"s -s scripts/wrk-profiles.lua "$1" \
        | grep '^BENCH' >"$3"
}

# Field NAME (p99_ms, rate, ...) of a wrk BENCH line.
wrk_field() { sed -E "s/.* $1=([0-9.]+).*/\1/" "$2"; }

# get_row LABEL FILES...: a GET row from the wrk results of the runs.
get_row() {
    local label=$1 file p99=() p50=() rate=() errors=0
    shift
    for file in "$@"; do
        p99+=("$(wrk_field p99_ms "$file")")
        p50+=("$(wrk_field p50_ms "$file")")
        rate+=("$(wrk_field rate "$file")")
        errors=$((errors + $(wrk_field errors "$file")))
    done
    GET_ROWS+=("| $label | **$(median_of "${p99[@]}") ms** | $(joined " / " "${p99[@]}") | $(median_of "${p50[@]}") ms | $(median_of "${rate[@]}" | commas)/s | $errors |")
}

# raw_consume LABEL TOPIC EVENTS
raw_consume() {
    local run line
    RATES=() HOST_US=() PG_US=() REDIS_US=() RSS_MIB=()
    for run in $(seq 1 "$RUNS"); do
        line=$("$LOAD" consume "$BROKERS" "$2" "$3")
        echo "raw consume $1 $run: $line"
        RATES+=("$(sed -E 's/.*: ([0-9]+) events\/s/\1/' <<<"$line")")
    done
    throughput_row "raw consume, $1 topic (librdkafka, no work)"
}

# enrich_one LABEL KEY TOPIC EVENTS RUN [PREPARE AT HOOK [AFTER]]: one
# measured run of the enrich role (pb_enrich_run; PREPARE, AT and HOOK
# passed on), printed and added to RATES, HOST_US, PG_US, REDIS_US and
# RSS_MIB. AFTER, a function, runs after the run with the run's number,
# before its database and Redis keys are dropped.
enrich_one() {
    local label=$1 key=$2 topic=$3 events=$4 run=$5 prepare=${6:-} at=${7:-0} hook=${8:-} after=${9:-}
    local name="${RUN_ID}_${key}_$run"
    pb_enrich_run "$name" "$topic" "$events" "$OUT/$key-$run.log" "$prepare" "$at" "$hook"
    echo "$label, run $run: $(commas <<<"$RUN_EVENTS") events after the first commit in $RUN_SECS s:" \
        "$(commas <<<"$RUN_RATE") events/s; CPU µs/event: PulseHub $RUN_HOST_US," \
        "PostgreSQL $RUN_PG_US, Redis $RUN_REDIS_US; enrich peak RSS $RUN_RSS_MIB MiB"
    RATES+=("$RUN_RATE") HOST_US+=("$RUN_HOST_US") PG_US+=("$RUN_PG_US")
    REDIS_US+=("$RUN_REDIS_US") RSS_MIB+=("$RUN_RSS_MIB")
    if [[ -n $after ]]; then "$after" "$run"; fi
    pb_drop_run "$name"
}

# enrich_runs LABEL KEY TOPIC EVENTS [PREPARE AT HOOK [AFTER]]: RUNS runs
# of enrich_one, then a row.
enrich_runs() {
    local run
    RATES=() HOST_US=() PG_US=() REDIS_US=() RSS_MIB=()
    for run in $(seq 1 "$RUNS"); do
        enrich_one "$1" "$2" "$3" "$4" "$run" "${@:5}"
    done
    throughput_row "$1"
}

# paired_runs W1_LABEL W1ID_LABEL: W1 and W1id runs in pairs, W1id first in
# odd pairs and W1 first in even ones, so that a drift of the machine's
# speed lands on both sides of their ratio; a row each, and the ratio of
# W1id to W1 in each pair (events/s, and CPU µs per event of PulseHub,
# PostgreSQL and Redis together) with its median.
PAIR_ROWS=()

# saved_row LABEL RUN...: a row of runs saved as "rate host pg redis rss".
saved_row() {
    local label=$1 line fields
    shift
    RATES=() HOST_US=() PG_US=() REDIS_US=() RSS_MIB=()
    for line in "$@"; do
        read -ra fields <<<"$line"
        RATES+=("${fields[0]}") HOST_US+=("${fields[1]}") PG_US+=("${fields[2]}")
        REDIS_US+=("${fields[3]}") RSS_MIB+=("${fields[4]}")
    done
    throughput_row "$label"
}

paired_runs() {
    local run key order w1_rates=() w1_cpu=() id_rates=() id_cpu=() rate_ratios=() cpu_ratios=()
    local saved_w1=() saved_id=()
    for run in $(seq 1 "$RUNS"); do
        if ((run % 2)); then order="w1id w1"; else order="w1 w1id"; fi
        for key in $order; do
            RATES=() HOST_US=() PG_US=() REDIS_US=() RSS_MIB=()
            if [[ $key == w1 ]]; then
                enrich_one "$1" w1 "${RUN_ID}_w1" "$W1_EVENTS" "$run" "" 0 "" idle_get
                w1_rates+=("$RUN_RATE")
                w1_cpu+=("$(awk -v a="$RUN_HOST_US" -v b="$RUN_PG_US" -v c="$RUN_REDIS_US" 'BEGIN { print a + b + c }')")
                saved_w1+=("$RUN_RATE $RUN_HOST_US $RUN_PG_US $RUN_REDIS_US $RUN_RSS_MIB")
            else
                enrich_one "$2" w1id "${RUN_ID}_w1id" "$W1_EVENTS" "$run"
                id_rates+=("$RUN_RATE")
                id_cpu+=("$(awk -v a="$RUN_HOST_US" -v b="$RUN_PG_US" -v c="$RUN_REDIS_US" 'BEGIN { print a + b + c }')")
                saved_id+=("$RUN_RATE $RUN_HOST_US $RUN_PG_US $RUN_REDIS_US $RUN_RSS_MIB")
            fi
        done
        rate_ratios+=("$(awk -v a="${id_rates[-1]}" -v b="${w1_rates[-1]}" 'BEGIN { printf "%.2f", a / b }')")
        cpu_ratios+=("$(awk -v a="${id_cpu[-1]}" -v b="${w1_cpu[-1]}" 'BEGIN { printf "%.2f", a / b }')")
        echo "pair $run: W1id/W1 events/s ${rate_ratios[-1]}, CPU µs/event ${cpu_ratios[-1]}"
    done
    saved_row "$1" "${saved_w1[@]}"
    saved_row "$2" "${saved_id[@]}"
    PAIR_ROWS+=("| W1id / W1, events/s | **$(median_of "${rate_ratios[@]}")** | $(joined " / " "${rate_ratios[@]}") |")
    PAIR_ROWS+=("| W1id / W1, CPU µs per event (PulseHub + PostgreSQL + Redis) | **$(median_of "${cpu_ratios[@]}")** | $(joined " / " "${cpu_ratios[@]}") |")
}

# GET idle: after the last W1 run drained, over its profiles (Redis warm).
idle_get() {
    if [[ $1 != "$RUNS" ]] || ! want get; then return 0; fi
    local run files=()
    pb_start_api "$RUN_URL" "$RUN_PREFIX" "$OUT/api-idle.log"
    for run in $(seq 1 "$RUNS"); do
        wrk_get "$API_URL" "$GET_SECS" "$OUT/get-idle-$run.txt"
        echo "GET idle, run $run: $(cat "$OUT/get-idle-$run.txt")"
        files+=("$OUT/get-idle-$run.txt")
    done
    pb_stop "$PB_PID"
    get_row "idle (after W1 drained)" "${files[@]}"
}

# GET busy: an API process over the run's database before the enrich
# process starts; wrk once a tenth of the events are committed (so nearly
# every user it asks for has a profile), for GET_SECS.
BUSY_FILES=()
busy_prepare() {
    pb_start_api "$1" "$RUN_PREFIX" "$OUT/api-busy.log"
    BUSY_API_PID=$PB_PID
}
busy_hook() {
    BUSY_FILE="$OUT/get-busy-$((${#BUSY_FILES[@]} + 1)).txt"
    wrk_get "$API_URL" "$GET_SECS" "$BUSY_FILE" &
    BUSY_WRK_PID=$!
    PB_PIDS+=("$BUSY_WRK_PID")
    BUSY_WRK_END=$(awk -v t="$EPOCHREALTIME" -v s="$GET_SECS" 'BEGIN { printf "%.3f", t + s }')
}
busy_after() {
    wait "$BUSY_WRK_PID"
    pb_forget "$BUSY_WRK_PID"
    pb_stop "$BUSY_API_PID"
    echo "GET while W1 runs, run $1: $(cat "$BUSY_FILE")"
    if awk -v a="$LAST_TIME" -v b="$BUSY_WRK_END" 'BEGIN { exit !(a < b) }'; then
        echo "  (the pipeline drained $(awk -v a="$LAST_TIME" -v b="$BUSY_WRK_END" 'BEGIN { printf "%.1f", b - a }') s before wrk ended: part of this run was idle)"
        BUSY_PARTLY_IDLE=1
    fi
    BUSY_FILES+=("$BUSY_FILE")
}

# embedded_run RUN: PulseHub with no services on a fresh data dir; the
# events POSTed once it is ready, then its last event waited for in its
# user's profile. Sets RUN_RATE, RUN_HOST_US (CPU of the whole process,
# which also archives every event, from the first POST on) and RUN_RSS_MIB.
embedded_run() {
    local log="$OUT/embedded-$1.log" url pid started cpu ended moved_at progress seen=""
    url="http://127.0.0.1:$(pb_free_port)"
    pb_start all "$log" PULSEHUB_DATA_DIR="$WORK/embedded-$1" PULSEHUB_HTTP_ADDR="${url#http://}" \
        PULSEHUB_HTTP_MAX_BODY_BYTES=$((16 << 20))
    pid=$PB_PID
    pb_wait_http "$url/readyz" "$pid" "$log"
    started=$EPOCHREALTIME
    cpu=$(pb_cpu_secs "$pid")
    # Two requests in flight: one is checked while the other is written.
    printf '%s\n' "$WORK"/chunks/*.json | xargs -P 2 -I{} curl -fsS -o /dev/null \
        -H 'content-type: application/json' --data-binary @{} "$url/api/v1/events"
    moved_at=$SECONDS
    until curl -fs "$url/api/v1/profiles/$LAST_USER" | grep -qF "\"$LAST_EVENT\""; do
        # Progress: the enrich pipeline's count of handled records moves.
        progress=$(curl -fs "$url/metrics" | grep '^pulsehub_events_consumed_total{role="enrich"' || true)
        if [[ $progress != "$seen" ]]; then
            seen=$progress
            moved_at=$SECONDS
        fi
        if ((SECONDS - moved_at > STALL_SECS)) || ! kill -0 "$pid" 2>/dev/null; then
            echo "bench: the embedded run stopped short of $LAST_EVENT ($seen); last lines of $log:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        sleep 0.05
    done
    ended=$EPOCHREALTIME
    RUN_HOST_US=$(pb_us_per_event "$cpu" "$(pb_cpu_secs "$pid")" "$EMBEDDED_EVENTS")
    RUN_RSS_MIB=$(pb_peak_rss_mib "$pid")
    pb_stop "$pid"
    rm -rf "$WORK/embedded-$1"
    RUN_RATE=$(awk -v n="$EMBEDDED_EVENTS" -v a="$started" -v b="$ended" 'BEGIN { printf "%.0f", n / (b - a) }')
    echo "embedded, run $1: $(commas <<<"$EMBEDDED_EVENTS") events in $(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.2f", b - a }') s:" \
        "$(commas <<<"$RUN_RATE") events/s; CPU µs/event: PulseHub $RUN_HOST_US; peak RSS $RUN_RSS_MIB MiB"
}

embedded_runs() {
    local run last
    last=$(python3 scripts/lib/bench-events.py chunks "$EMBEDDED_EVENTS" "$EMBEDDED_USERS" "$WORK/chunks" "$EMBEDDED_CHUNK")
    LAST_EVENT=${last% *} LAST_USER=${last#* }
    RATES=() HOST_US=() PG_US=() REDIS_US=() RSS_MIB=()
    for run in $(seq 1 "$RUNS"); do
        embedded_run "$run"
        RATES+=("$RUN_RATE") HOST_US+=("$RUN_HOST_US") RSS_MIB+=("$RUN_RSS_MIB")
    done
    throughput_row "embedded: $(commas <<<"$EMBEDDED_EVENTS") events, $(commas <<<"$EMBEDDED_USERS") users, POST → profiles"
}

# The report's header: what ran, where, with which settings.
header() {
    local vars
    vars=$({ compgen -e | grep '^BENCH_' | while read -r v; do echo "$v=${!v}"; done; pb_passthrough; } | tr '\n' ' ')
    echo "## Pipeline benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "- command: \`${vars}scripts/bench-pipeline.sh\`"
    echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- host plugins Cargo.toml Cargo.lock || echo ' (with uncommitted changes)')"
    echo "- machine: $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); broker, PostgreSQL, Redis, PulseHub and the load tools share it"
    want w1 && echo "- W1: $(commas <<<"$W1_EVENTS") events of $(commas <<<"$W1_USERS") users, $PARTITIONS partitions"
    want w1id && echo "- W1id: W1 with every tenth event carrying an anonymous id, half of those linking it to the user id"
    want w2 && echo "- W2: $(commas <<<"$W2_EVENTS") events of $(commas <<<"$W2_USERS") users, $PARTITIONS partitions"
    want embedded && echo "- embedded: $(commas <<<"$EMBEDDED_EVENTS") events of $(commas <<<"$EMBEDDED_USERS") users"
    echo "- each event's user drawn uniformly at random; $RUNS runs a workload, medians"
    echo "- PostgreSQL $(psql -qtA "$PGADMIN" -c "SHOW server_version" | cut -d' ' -f1): $(psql -qtA "$PGADMIN" -c "SELECT string_agg(name || ' = ' || current_setting(name), ', ' ORDER BY name) FROM pg_settings WHERE name IN ('shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'wal_compression', 'synchronous_commit', 'fsync', 'full_page_writes')")"
    echo "- PulseHub settings:"
    pb_settings | sed 's/^/  - /'
}

mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/*.txt
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
pb_setup
WORK=$(mktemp -d)
PB_DIRS+=("$WORK")
header
echo

W1_LABEL="W1: topic → PostgreSQL + Redis"
W1ID_LABEL="W1id: W1 with 10 % anonymous ids and links"
if want w1id; then
    pb_topic "${RUN_ID}_w1id" "$PARTITIONS" "$W1_EVENTS" "$W1_USERS" uniform-identify
fi
if want w1; then
    pb_topic "${RUN_ID}_w1" "$PARTITIONS" "$W1_EVENTS" "$W1_USERS"
    raw_consume W1 "${RUN_ID}_w1" "$W1_EVENTS"
    if want w1id; then
        paired_runs "$W1_LABEL" "$W1ID_LABEL"
    else
        enrich_runs "$W1_LABEL" w1 "${RUN_ID}_w1" "$W1_EVENTS" "" 0 "" idle_get
    fi
    if want get; then
        BUSY_PARTLY_IDLE=""
        enrich_runs "W1 while serving GET at $(commas <<<"$GET_RATE")/s" w1get "${RUN_ID}_w1" "$W1_EVENTS" \
            busy_prepare $((W1_EVENTS / 10 > 0 ? W1_EVENTS / 10 : 1)) busy_hook busy_after
        get_row "while W1 runs flat out${BUSY_PARTLY_IDLE:+ (partly idle: the pipeline drained first)}" "${BUSY_FILES[@]}"
    fi
elif want w1id; then
    enrich_runs "$W1ID_LABEL" w1id "${RUN_ID}_w1id" "$W1_EVENTS"
fi
if want w2; then
    pb_topic "${RUN_ID}_w2" "$PARTITIONS" "$W2_EVENTS" "$W2_USERS"
    raw_consume W2 "${RUN_ID}_w2" "$W2_EVENTS"
    enrich_runs "W2: topic → PostgreSQL + Redis" w2 "${RUN_ID}_w2" "$W2_EVENTS"
fi
if want embedded; then
    embedded_runs
fi

{
    header
    echo
    echo "| workload | median events/s | runs | CPU µs/event PulseHub | PostgreSQL | Redis | peak RSS |"
    echo "|---|---:|---|---:|---:|---:|---:|"
    printf '%s\n' "${THROUGHPUT_ROWS[@]}"
    if [[ ${#PAIR_ROWS[@]} -gt 0 ]]; then
        echo
        echo "| W1 and W1id run in pairs, alternating which goes first | median ratio | pairs |"
        echo "|---|---:|---|"
        printf '%s\n' "${PAIR_ROWS[@]}"
    fi
    if [[ ${#GET_ROWS[@]} -gt 0 ]]; then
        echo
        echo "| GET \`/api/v1/profiles/{id}\` at $(commas <<<"$GET_RATE")/s (wrk, paced) | median p99 | p99 runs | median p50 | rate reached | errors (status ≥ 400, socket) |"
        echo "|---|---:|---|---:|---:|---:|"
        printf '%s\n' "${GET_ROWS[@]}"
    fi
    echo
    echo "Events/s from the first commit to the last committed offset (group joining left out); embedded: from the first POST until the last event is in its profile."
    echo "CPU per event over each whole run, start-up included, from /proc (utime + stime): the enrich process (embedded: the whole process, from the first POST); every PostgreSQL process, exited backends included; redis-server."
    echo "PostgreSQL and Redis CPU counts every client they serve: figures are only clean on an otherwise quiet machine."
    echo "Peak RSS: the enrich process's VmHWM (embedded: the whole process), the highest of the runs."
    [[ ${#GET_ROWS[@]} -eq 0 ]] || echo "GET: wrk, $GET_THREADS threads, $GET_CONNECTIONS connections, ${GET_SECS} s a run, users drawn at random from the W1 users; idle over the last W1 run's profiles (Redis written through), busy from a tenth of a W1 run on."
} | tee "$OUT/report.md.new"
mv "$OUT/report.md.new" "$OUT/report.md"
