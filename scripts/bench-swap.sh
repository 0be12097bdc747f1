#!/usr/bin/env bash
# Measures live plugin swaps on this machine, in one run (not a test):
#  1. upload-to-active time: `PUT /api/v1/plugins/chaos` answered (the new
#     version compiled or loaded from the compiled-code cache, instantiated,
#     init-ed, tried on the sample events and swapped in);
#  2. events/s from the topic to committed profiles (enrich role: the three
#     built-in plugins plus the chaos fixture, PostgreSQL, Redis) at steady
#     state, and while the chaos plugin is replaced every 0.5 s, three runs
#     each, alternating, over the same pre-produced topic.
# Prints each run and the medians. Needs the services (scripts/services.sh).
# Sizes: BENCH_EVENTS, BENCH_USERS, BENCH_PARTITIONS.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${BENCH_EVENTS:-200000}
USERS=${BENCH_USERS:-1000}
PARTITIONS=${BENCH_PARTITIONS:-4}
BROKERS=${PULSEHUB_TEST_KAFKA:-127.0.0.1:9092}
PGADMIN=${PULSEHUB_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS=${PULSEHUB_TEST_REDIS_URL:-redis://127.0.0.1:6379}
PGBASE=${PGADMIN%/*}
RUN_ID=swap_$$_$(date +%s)
TOKEN=bench-admin-token-0123456789

scripts/services.sh >/dev/null
cargo xtask plugins >/dev/null
cargo build --release -p pulsehub --bin pulsehub --example kafka_load 2>&1 | tail -n 1
BIN=target/release/pulsehub
LOAD=target/release/examples/kafka_load
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p90() { sort -g | awk '{a[NR]=$1} END {print a[int(NR*0.9+0.5)]}'; }

# Two versions of one component: v1 counts by 1, v2 by 2.
sed 's/^version = .*/version = "1.0.0"/' target/test-plugins/chaos.toml > "$WORK/v1.toml"
{ sed 's/^version = .*/version = "2.0.0"/' target/test-plugins/chaos.toml; printf '\n[config]\ncount-step = "2"\n'; } > "$WORK/v2.toml"
put() { # put VERSION PORT -> seconds
    curl -s -o "$WORK/put.json" -w '%{http_code} %{time_total}\n' -X PUT \
        -H "Authorization: Bearer $TOKEN" \
        -F "manifest=@$WORK/$1.toml" -F "component=@target/test-plugins/chaos.wasm" \
        "http://127.0.0.1:$2/api/v1/plugins/chaos"
}

# The enrich runs start with the built-ins and chaos v1 in their directory.
mkdir -p "$WORK/plugins"
cp target/plugins/*.wasm target/plugins/*.toml "$WORK/plugins/"
cp target/test-plugins/chaos.wasm "$WORK/plugins/chaos.wasm"
cp "$WORK/v1.toml" "$WORK/plugins/chaos.toml"

# Upload-to-active on an idle host (embedded, fresh registry each time): a
# first upload compiles; the next, a new manifest for the same component,
# loads the cached machine code.
COLD=(); WARM=(); START_COLD=(); START_WARM=()
for run in 1 2 3 4 5; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    env -i PATH="$PATH" HOME="$HOME" PULSEHUB_DATA_DIR="$WORK/idle-$run" \
        PULSEHUB_HTTP_ADDR="127.0.0.1:$port" PULSEHUB_ADMIN_TOKEN="$TOKEN" PULSEHUB_LOG=info \
        PULSEHUB_LOG_FORMAT=json $BIN run 2>"$WORK/idle-$run.log" &
    pid=$!; PIDS+=("$pid")
    for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.05; done
    read -r code cold < <(put v1 "$port"); [[ $code == 201 ]] || { echo "bench: PUT v1 $code $(cat "$WORK/put.json")" >&2; exit 1; }
    read -r code warm < <(put v2 "$port"); [[ $code == 200 ]] || { echo "bench: PUT v2 $code $(cat "$WORK/put.json")" >&2; exit 1; }
    echo "idle upload $run: first ${cold}s, second ${warm}s"
    COLD+=("$cold"); WARM+=("$warm")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    # A restart loads the four plugins' machine code from the cache; the
    # first start compiled the three built-ins.
    env -i PATH="$PATH" HOME="$HOME" PULSEHUB_DATA_DIR="$WORK/idle-$run" \
        PULSEHUB_HTTP_ADDR="127.0.0.1:$port" PULSEHUB_LOG=info \
        PULSEHUB_LOG_FORMAT=json $BIN run 2>"$WORK/idle-$run-restart.log" &
    pid=$!; PIDS+=("$pid")
    for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.05; done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    first_ms=$(grep -o 'plugins ready.*elapsed_ms[^0-9]*[0-9]*' "$WORK/idle-$run.log" | grep -o '[0-9]*$' || true)
    again_ms=$(grep -o 'plugins ready.*elapsed_ms[^0-9]*[0-9]*' "$WORK/idle-$run-restart.log" | grep -o '[0-9]*$' || true)
    echo "idle start $run: plugins ready in ${first_ms:-?} ms (3 compiled), restart ${again_ms:-?} ms (4 from the cache)"
    [[ -n "$first_ms" ]] && START_COLD+=("$first_ms")
    [[ -n "$again_ms" ]] && START_WARM+=("$again_ms")
done

TOPIC="${RUN_ID}_events"
echo "bench: $EVENTS events, $USERS users, $PARTITIONS partitions, topic $TOPIC"
nisshi topic create "$TOPIC" --partitions "$PARTITIONS" >/dev/null 2>&1 || true
nisshi topic create "$TOPIC.dlq" --partitions 1 >/dev/null 2>&1 || true
$LOAD produce "$BROKERS" "$TOPIC" "$EVENTS" "$USERS"

STEADY=(); SWAPPING=(); SWAPS=()
for run in 1 2 3 4 5 6; do
    mode=steady; (( run % 2 == 0 )) && mode=swapping
    db="${RUN_ID}_$run"
    psql -q "$PGADMIN" -c "CREATE DATABASE $db" >/dev/null
    url="$PGBASE/$db"
    PULSEHUB_DATABASE_URL="$url" PULSEHUB_LOG=warn $BIN migrate
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    env -i PATH="$PATH" HOME="$HOME" \
        PULSEHUB_KAFKA_BROKERS="$BROKERS" PULSEHUB_KAFKA_TOPIC="$TOPIC" \
        PULSEHUB_KAFKA_GROUP="${db}_enrich" PULSEHUB_DATABASE_URL="$url" \
        PULSEHUB_REDIS_URL="$REDIS" PULSEHUB_REDIS_KEY_PREFIX="$db:" \
        PULSEHUB_HTTP_ADDR="127.0.0.1:$port" PULSEHUB_ADMIN_TOKEN="$TOKEN" \
        PULSEHUB_PLUGIN_DIR="$WORK/plugins" PULSEHUB_PLUGIN_WATCH=false \
        PULSEHUB_PLUGIN_REGISTRY_DIR="$WORK/registry-$run" PULSEHUB_LOG=warn \
        $BIN run --role enrich 2>"$WORK/enrich-$run.log" &
    pid=$!; PIDS+=("$pid")
    for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.05; done
    first=""; last=""; swaps=0; version=v2
    deadline=$(( $(date +%s) + 600 ))
    next_swap=$(date +%s.%N)
    while :; do
        done_count=$(psql -qtA "$url" -c "SELECT coalesce(sum(next_offset),0) FROM consumer_offsets" 2>/dev/null || echo 0)
        now=$(date +%s.%N)
        if [[ -z "$first" && "$done_count" -gt 0 ]]; then first=$now; first_count=$done_count; fi
        if [[ "$done_count" -ge "$EVENTS" ]]; then last=$now; break; fi
        if (( $(date +%s) > deadline )); then echo "bench: run $run timed out at $done_count" >&2; exit 1; fi
        if [[ $mode == swapping && -n "$first" ]] && awk -v a="$now" -v b="$next_swap" 'BEGIN{exit !(a>=b)}'; then
            read -r code took < <(put "$version" "$port")
            [[ $code == 200 ]] || { echo "bench: swap PUT $code $(cat "$WORK/put.json")" >&2; exit 1; }
            SWAPS+=("$took"); swaps=$((swaps + 1))
            [[ $version == v1 ]] && version=v2 || version=v1
            next_swap=$(awk -v a="$now" 'BEGIN{printf "%.3f", a + 0.5}')
        fi
        sleep 0.05
    done
    rate=$(awk -v n="$((EVENTS - first_count))" -v a="$first" -v b="$last" 'BEGIN { printf "%.0f", n / (b - a) }')
    echo "$mode run $run: $((EVENTS - first_count)) events in $(awk -v a="$first" -v b="$last" 'BEGIN{printf "%.2f", b-a}') s: $rate events/s, $swaps swaps"
    if [[ $mode == steady ]]; then STEADY+=("$rate"); else SWAPPING+=("$rate"); fi
    kill "$pid"; wait "$pid" 2>/dev/null || true
done

steady=$(printf '%s\n' "${STEADY[@]}" | median)
swapping=$(printf '%s\n' "${SWAPPING[@]}" | median)
ms() { awk -v s="$1" 'BEGIN{printf "%.1f", s * 1000}'; }
echo
echo "== medians =="
echo "upload to active, first upload (compiles):      $(ms "$(printf '%s\n' "${COLD[@]}" | median)") ms (5 runs)"
echo "upload to active, new manifest (cached code):   $(ms "$(printf '%s\n' "${WARM[@]}" | median)") ms (5 runs)"
echo "start, plugins ready: first (compiles 3):      $(printf '%s\n' "${START_COLD[@]}" | median) ms; restart (4 cached): $(printf '%s\n' "${START_WARM[@]}" | median) ms"
echo "upload to active during load, median / p90:     $(ms "$(printf '%s\n' "${SWAPS[@]}" | median)") / $(ms "$(printf '%s\n' "${SWAPS[@]}" | p90)") ms (${#SWAPS[@]} swaps)"
echo "steady state:                                   $steady events/s"
echo "swapping every 0.5 s:                           $swapping events/s ($(awk -v a="$swapping" -v b="$steady" 'BEGIN{printf "%.2f", a/b}') x steady)"
cleanup
sleep 1
for run in 1 2 3 4 5 6; do psql -q "$PGADMIN" -c "DROP DATABASE IF EXISTS ${RUN_ID}_$run" >/dev/null 2>&1 || true; done
