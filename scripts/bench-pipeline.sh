#!/usr/bin/env bash
# Measures PulseHub end to end on this machine, in one run (not a test):
#  1. the broker's raw consume rate (a bare librdkafka consumer, nothing done
#     with the messages), three times;
#  2. events/s from the topic to committed profiles (enrich role: three
#     plugins, PostgreSQL commit, Redis write-through), three times, each on
#     a fresh database and consumer group over the same pre-produced topic,
#     timed from the first commit to the last offset committed;
#  3. profile GET latency under a paced load with wrk (about 5,000
#     requests/s), three times.
# Prints each run and the medians. Needs the services (scripts/services.sh)
# and wrk (apt-get install wrk). Sizes: BENCH_EVENTS, BENCH_USERS,
# BENCH_PARTITIONS.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${BENCH_EVENTS:-300000}
USERS=${BENCH_USERS:-20000}
PARTITIONS=${BENCH_PARTITIONS:-4}
BROKERS=${PULSEHUB_TEST_KAFKA:-127.0.0.1:9092}
PGADMIN=${PULSEHUB_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS=${PULSEHUB_TEST_REDIS_URL:-redis://127.0.0.1:6379}
PGBASE=${PGADMIN%/*}
RUN_ID=bench_$$_$(date +%s)
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }

scripts/services.sh >/dev/null
cargo xtask plugins >/dev/null
cargo build --release -p pulsehub --bin pulsehub --example kafka_load 2>&1 | tail -n 1
BIN=target/release/pulsehub
LOAD=target/release/examples/kafka_load
LOGDIR=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

TOPIC="${RUN_ID}_events"
echo "bench: $EVENTS events, $USERS users, $PARTITIONS partitions, topic $TOPIC"
nisshi topic create "$TOPIC" --partitions "$PARTITIONS" >/dev/null 2>&1 || true
nisshi topic create "$TOPIC.dlq" --partitions 1 >/dev/null 2>&1 || true
$LOAD produce "$BROKERS" "$TOPIC" "$EVENTS" "$USERS"

RAW=()
for run in 1 2 3; do
    line=$($LOAD consume "$BROKERS" "$TOPIC" "$EVENTS")
    echo "raw consume $run: $line"
    RAW+=("$(echo "$line" | sed -E 's/.*: ([0-9]+) events\/s/\1/')")
done

PIPE=()
for run in 1 2 3; do
    db="${RUN_ID}_$run"
    psql -q "$PGADMIN" -c "CREATE DATABASE $db" >/dev/null
    url="$PGBASE/$db"
    PULSEHUB_DATABASE_URL="$url" PULSEHUB_LOG=warn $BIN migrate
    env -i PATH="$PATH" HOME="$HOME" \
        PULSEHUB_KAFKA_BROKERS="$BROKERS" PULSEHUB_KAFKA_TOPIC="$TOPIC" \
        PULSEHUB_KAFKA_GROUP="${db}_enrich" PULSEHUB_DATABASE_URL="$url" \
        PULSEHUB_REDIS_URL="$REDIS" PULSEHUB_REDIS_KEY_PREFIX="$db:" \
        PULSEHUB_LOG=warn \
        $BIN run --role enrich 2>"$LOGDIR/enrich-$run.log" &
    pid=$!; PIDS+=("$pid")
    first=""; last=""
    deadline=$(( $(date +%s) + 600 ))
    while :; do
        done_count=$(psql -qtA "$url" -c "SELECT coalesce(sum(next_offset),0) FROM consumer_offsets" 2>/dev/null || echo 0)
        now=$(date +%s.%N)
        if [[ -z "$first" && "$done_count" -gt 0 ]]; then first=$now; first_count=$done_count; fi
        if [[ "$done_count" -ge "$EVENTS" ]]; then last=$now; break; fi
        if (( $(date +%s) > deadline )); then echo "bench: pipeline run $run timed out at $done_count" >&2; exit 1; fi
        sleep 0.05
    done
    rate=$(awk -v n="$((EVENTS - first_count))" -v a="$first" -v b="$last" 'BEGIN { printf "%.0f", n / (b - a) }')
    echo "pipeline $run: $((EVENTS - first_count)) events after the first commit in $(awk -v a="$first" -v b="$last" 'BEGIN{printf "%.2f", b-a}') s: $rate events/s"
    PIPE+=("$rate")
    kill "$pid"; wait "$pid" 2>/dev/null || true
done

# GET latency: the API role over the last run's profiles, Redis warm or not.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -i PATH="$PATH" HOME="$HOME" \
    PULSEHUB_KAFKA_BROKERS="$BROKERS" PULSEHUB_KAFKA_TOPIC="$TOPIC" \
    PULSEHUB_DATABASE_URL="$url" PULSEHUB_REDIS_URL="$REDIS" \
    PULSEHUB_REDIS_KEY_PREFIX="$db:" PULSEHUB_HTTP_ADDR="127.0.0.1:$port" PULSEHUB_LOG=warn \
    $BIN run --role api 2>"$LOGDIR/api.log" &
PIDS+=("$!")
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
P50=(); P99=(); RATE=()
for run in 1 2 3; do
    line=$(BENCH_USERS=$USERS BENCH_DELAY_MS=10 wrk -t2 -c50 -d15s -s scripts/wrk-profiles.lua "http://127.0.0.1:$port" | grep '^BENCH')
    echo "GET $run: $line"
    RATE+=("$(echo "$line" | sed -E 's/.* rate=([0-9.]+).*/\1/')")
    P50+=("$(echo "$line" | sed -E 's/.* p50_ms=([0-9.]+).*/\1/')")
    P99+=("$(echo "$line" | sed -E 's/.* p99_ms=([0-9.]+).*/\1/')")
done

raw=$(printf '%s\n' "${RAW[@]}" | median)
pipe=$(printf '%s\n' "${PIPE[@]}" | median)
echo
echo "== medians of 3 =="
echo "raw consume:        $raw events/s"
echo "pipeline:           $pipe events/s ($(awk -v a="$pipe" -v b="$raw" 'BEGIN{printf "%.2f", a/b}') x raw consume)"
echo "GET rate:           $(printf '%s\n' "${RATE[@]}" | median) requests/s"
echo "GET latency p50:    $(printf '%s\n' "${P50[@]}" | median) ms"
echo "GET latency p99:    $(printf '%s\n' "${P99[@]}" | median) ms"
cleanup
sleep 1
for run in 1 2 3; do psql -q "$PGADMIN" -c "DROP DATABASE IF EXISTS ${RUN_ID}_$run" >/dev/null 2>&1 || true; done
