# shellcheck shell=bash
# What scripts/bench-pipeline.sh and scripts/diagnose-pipeline.sh share:
# the services and the build, a pre-produced topic, one measured run of the
# enrich role on a scratch database (fresh consumer group, fresh Redis
# prefix) up to its last committed offset, CPU and memory read from /proc,
# the effective settings, and cleanup on exit.
#
# Sourced from the repository's root, after `set -euo pipefail`. Sourcing
# only sets the variables below (each overridable from the environment) and
# defines functions; pb_setup starts things.

# The services, as the integration tests find them.
BROKERS=${PULSEHUB_TEST_KAFKA:-127.0.0.1:9092}
PGADMIN=${PULSEHUB_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS=${PULSEHUB_TEST_REDIS_URL:-redis://127.0.0.1:6379}
PGBASE=${PGADMIN%/*}
BIN=target/release/pulsehub
LOAD=target/release/examples/kafka_load
# A run fails when its committed offsets have not moved for this long.
STALL_SECS=${BENCH_STALL_SECS:-120}
CLK_TCK=$(getconf CLK_TCK)

# What pb_cleanup removes: processes, databases, Redis prefixes, topics,
# folders.
PB_PIDS=()
PB_DBS=()
PB_PREFIXES=()
PB_TOPICS=()
PB_DIRS=()

# Services up, plugins and binaries built (release, this checkout's target
# dir), everything this script makes removed on any exit.
pb_setup() {
    trap pb_cleanup EXIT
    # Without these the EXIT trap does not run on Ctrl-C or kill.
    trap 'exit 130' INT
    trap 'exit 143' TERM
    scripts/services.sh >/dev/null
    cargo xtask plugins >/dev/null
    cargo build --release -p pulsehub --bin pulsehub --example kafka_load 2>&1 | tail -n 1
}

pb_cleanup() {
    local pid name
    for pid in "${PB_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PB_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for name in "${PB_DBS[@]}"; do pb_drop_db "$name"; done
    for name in "${PB_PREFIXES[@]}"; do pb_drop_prefix "$name"; done
    for name in "${PB_TOPICS[@]}"; do
        # The broker keeps topics in memory: gigabytes after a full run.
        nisshi topic delete "$name" >/dev/null 2>&1 || true
    done
    for name in "${PB_DIRS[@]}"; do rm -rf "$name"; done
}

# pb_topic TOPIC PARTITIONS EVENTS USERS [SPREAD]: a topic (and its
# dead-letter topic) holding EVENTS events whose users are drawn uniformly at
# random from USERS, as real traffic spreads (not in turns); SPREAD
# `uniform-identify` mixes in anonymous ids and their links (kafka_load).
pb_topic() {
    local topic=$1 partitions=$2 events=$3 users=$4 spread=${5:-uniform}
    PB_TOPICS+=("$topic" "$topic.dlq")
    nisshi topic create "$topic" --partitions "$partitions" >/dev/null 2>&1 || true
    nisshi topic create "$topic.dlq" --partitions 1 >/dev/null 2>&1 || true
    "$LOAD" produce "$BROKERS" "$topic" "$events" "$users" "$spread"
}

# pb_scratch_db NAME: a new, migrated database NAME; sets DB_URL.
pb_scratch_db() {
    PB_DBS+=("$1")
    psql -q "$PGADMIN" -c "CREATE DATABASE $1" >/dev/null
    DB_URL="$PGBASE/$1"
    # A clean environment, as for pb_start: PulseHub refuses PULSEHUB_TEST_*.
    env -i PATH="$PATH" HOME="$HOME" PULSEHUB_DATABASE_URL="$DB_URL" PULSEHUB_LOG=warn "$BIN" migrate
    # What the caller stores in every run's database before PulseHub starts.
    if [[ -n ${PB_AFTER_MIGRATE:-} ]]; then "$PB_AFTER_MIGRATE" "$DB_URL"; fi
}

pb_drop_db() {
    psql -q "$PGADMIN" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1 || true
}

# Deletes the Redis keys under PREFIX: a run leaves one key per profile (a
# million at 1 M users) that would otherwise stay until their TTL.
pb_drop_prefix() {
    redis-cli -u "$REDIS" --scan --pattern "$1*" 2>/dev/null \
        | xargs -r -n 500 redis-cli -u "$REDIS" unlink >/dev/null 2>&1 || true
}

# The caller's PULSEHUB_* variables (batch bounds and any other setting),
# passed on to every PulseHub process. Not passed: what says where things
# are, which each run sets (the backends, topic, group, Redis prefix, HTTP
# address, data dir), and PULSEHUB_TEST_*, which name the services for the
# tests and which PulseHub refuses.
pb_passthrough() {
    local name owned='^PULSEHUB_(TEST_.*|KAFKA_(BROKERS|TOPIC|GROUP)|DATABASE_URL|REDIS_(URL|KEY_PREFIX)|HTTP_ADDR|DATA_DIR)$'
    for name in $(compgen -e); do
        if [[ $name == PULSEHUB_* && ! $name =~ $owned ]]; then
            printf '%s=%s\n' "$name" "${!name}"
        fi
    done
}

# pb_start ROLE LOG VAR=VALUE...: PulseHub in the background with a clean
# environment: the caller's settings, then the given ones (which win).
# Sets PB_PID.
pb_start() {
    local role=$1 log=$2
    shift 2
    local settings
    mapfile -t settings < <(pb_passthrough)
    env -i PATH="$PATH" HOME="$HOME" "${settings[@]}" PULSEHUB_LOG=warn "$@" \
        "$BIN" run --role "$role" 2>"$log" &
    PB_PID=$!
    PB_PIDS+=("$PB_PID")
}

# pb_stop PID: stops it (SIGTERM, a clean shutdown) and waits for it.
pb_stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    pb_forget "$1"
}

# pb_forget PID: a process waited for leaves the cleanup list, so that
# pb_cleanup never signals its pid once the system hands it out again.
pb_forget() {
    local pid left=()
    for pid in "${PB_PIDS[@]}"; do [[ $pid == "$1" ]] || left+=("$pid"); done
    PB_PIDS=("${left[@]}")
}

# pb_start_api DB_URL PREFIX LOG: the API role over a run's database and
# Redis prefix, on a free port, answering /healthz. Sets PB_PID, API_URL.
pb_start_api() {
    local port
    port=$(pb_free_port)
    pb_start api "$3" PULSEHUB_KAFKA_BROKERS="$BROKERS" PULSEHUB_DATABASE_URL="$1" \
        PULSEHUB_REDIS_URL="$REDIS" PULSEHUB_REDIS_KEY_PREFIX="$2" \
        PULSEHUB_HTTP_ADDR="127.0.0.1:$port"
    API_URL="http://127.0.0.1:$port"
    pb_wait_http "$API_URL/healthz" "$PB_PID" "$3"
}

# A TCP port nothing listens on now.
pb_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pb_wait_http URL PID LOG: waits until URL answers, failing when PID exits.
pb_wait_http() {
    until curl -fs -o /dev/null "$1"; do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "bench: PulseHub exited before $1 answered; last lines of $3:" >&2
            tail -n 20 "$3" >&2
            return 1
        fi
        sleep 0.1
    done
}

# CPU seconds (user + system) used so far by the given processes, with the
# children they have reaped: a PostgreSQL backend that exits moves into the
# postmaster's count, so the difference of two readings is what was used in
# between even when backends come and go.
pb_cpu_secs() {
    local pid ticks=0
    for pid in "$@"; do
        ticks=$((ticks + $(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    awk -v t="$ticks" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }'
}

# cpu_of PGREP_ARGS...: pb_cpu_secs of the processes pgrep finds.
cpu_of() {
    # shellcheck disable=SC2046 # one word per pid
    pb_cpu_secs $(pgrep "$@" || true)
}

# CPU µs per event of each thread name of process PID (threads of one name,
# the lanes' workers for one, summed), for EVENTS events, busiest first:
# "enrich-lane 6.8, enrich-committe 4.7, ...". Threads that ended are not
# counted.
pb_thread_us() {
    local stat
    for stat in /proc/"$1"/task/*/stat; do
        # The name is in parentheses and may hold spaces.
        sed -E 's/^[0-9]+ \((.*)\) [A-Z] (.*)$/\1\t\2/' "$stat" 2>/dev/null
    done | awk -F '\t' -v hz="$CLK_TCK" -v n="$2" '
        { split($2, f, " "); name = $1; sub(/-[0-9]+$/, "", name)
          ticks[name] += f[11] + f[12] }
        END { for (t in ticks) { shown = t; gsub(/ /, "_", shown)
                                 printf "%s %.1f\n", shown, ticks[t] / hz * 1e6 / n } }' |
        sort -k2 -rn | awk '$2 > 0 { printf "%s%s %s", sep, $1, $2; sep = ", " } END { print "" }'
}

# Peak resident memory (VmHWM) of PID, in MiB.
pb_peak_rss_mib() {
    awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"
}

# µs per event from two CPU readings (seconds) and an event count.
pb_us_per_event() {
    awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }'
}

# pb_wait_committed PID DB_URL EVENTS [AT HOOK]: waits until the enrich
# process PID has committed all EVENTS offsets in DB_URL (the topic is
# fresh, so the sum of the next offsets counts the events); runs the
# function HOOK once when AT are committed. Sets FIRST_TIME and FIRST_COUNT
# (the first commit seen) and LAST_TIME.
pb_wait_committed() {
    local pid=$1 url=$2 events=$3 at=${4:-0} hook=${5:-} count=0 moved=-1 moved_at=$SECONDS
    FIRST_TIME=""
    FIRST_COUNT=0
    # One connection for the whole wait: a psql per poll would be a
    # PostgreSQL backend started 20 times a second, counted in its CPU.
    coproc PB_PSQL { exec psql -qtAX "$url" 2>/dev/null; }
    local to=${PB_PSQL[1]} from=${PB_PSQL[0]} psql_pid=$PB_PSQL_PID
    while :; do
        echo "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets;" >&"$to"
        read -r -t 10 count <&"$from" || { echo "bench: psql did not answer" >&2; return 1; }
        if [[ -z $FIRST_TIME && $count -gt 0 ]]; then
            FIRST_TIME=$EPOCHREALTIME
            FIRST_COUNT=$count
        fi
        if [[ -n $hook && $count -ge $at ]]; then
            "$hook"
            hook=""
        fi
        if [[ $count -ge $events ]]; then
            LAST_TIME=$EPOCHREALTIME
            break
        fi
        if [[ $count != "$moved" ]]; then
            moved=$count
            moved_at=$SECONDS
        elif ((SECONDS - moved_at > STALL_SECS)); then
            echo "bench: no commit for ${STALL_SECS} s at $count of $events events" >&2
            return 1
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "bench: the enrich process exited at $count of $events events" >&2
            return 1
        fi
        sleep 0.05
    done
    exec {to}>&-
    wait "$psql_pid" 2>/dev/null || true
}

# pb_enrich_run NAME TOPIC EVENTS LOG [PREPARE [AT HOOK]]
# One measured run of the enrich role over the pre-produced TOPIC of EVENTS
# events, on a fresh database NAME, consumer group NAME_enrich and Redis
# prefix NAME:, until every offset is committed; the process is then
# stopped. PREPARE (a function, given the database URL) runs after the
# migrations and before the start; HOOK runs once when AT events are
# committed ("" for none). The database and prefix stay until pb_cleanup,
# or pb_drop_run NAME. Its metrics at the end are written beside LOG
# (LOG with .metrics for .log).
# Sets RUN_URL, RUN_PREFIX, RUN_EVENTS and RUN_SECS (from the first commit
# to the last, as the rate is taken: group joining left out), RUN_RATE
# (events/s), RUN_HOST_US, RUN_PG_US, RUN_REDIS_US (CPU µs per event of the
# enrich process, all PostgreSQL processes and Redis over the whole run),
# RUN_THREADS (the enrich process's CPU µs per event by thread, see
# pb_thread_us), RUN_FAULTS (its minor page faults: first touches of
# memory, each zeroed by the kernel) and RUN_RSS_MIB (the enrich process's peak RSS).
# shellcheck disable=SC2034 # the RUN_* variables are for the caller
pb_enrich_run() {
    local name=$1 topic=$2 events=$3 log=$4 prepare=${5:-} at=${6:-0} hook=${7:-}
    pb_scratch_db "$name"
    RUN_URL=$DB_URL
    RUN_PREFIX="$name:"
    PB_PREFIXES+=("$RUN_PREFIX")
    if [[ -n $prepare ]]; then "$prepare" "$RUN_URL"; fi
    local pg_before redis_before pg_after redis_after host pid port
    port=$(pb_free_port)
    pg_before=$(cpu_of -x postgres)
    redis_before=$(cpu_of -x redis-server)
    # Every role serves HTTP: a free port, not the default one another
    # PulseHub on this machine may hold.
    pb_start enrich "$log" \
        PULSEHUB_KAFKA_BROKERS="$BROKERS" PULSEHUB_KAFKA_TOPIC="$topic" \
        PULSEHUB_KAFKA_GROUP="${name}_enrich" PULSEHUB_DATABASE_URL="$RUN_URL" \
        PULSEHUB_REDIS_URL="$REDIS" PULSEHUB_REDIS_KEY_PREFIX="$RUN_PREFIX" \
        PULSEHUB_HTTP_ADDR="127.0.0.1:$port"
    pid=$PB_PID
    pb_wait_committed "$pid" "$RUN_URL" "$events" "$at" "$hook" || {
        echo "bench: last lines of $log:" >&2
        tail -n 20 "$log" >&2
        return 1
    }
    # Read before the process stops: its backends go with it.
    pg_after=$(cpu_of -x postgres)
    redis_after=$(cpu_of -x redis-server)
    host=$(pb_cpu_secs "$pid")
    RUN_THREADS=$(pb_thread_us "$pid" "$events")
    RUN_FAULTS=$(awk '{ print $10 }' "/proc/$pid/stat")
    RUN_RSS_MIB=$(pb_peak_rss_mib "$pid")
    # The process's own counts (commits, their durations, batch sizes),
    # beside its log.
    curl -fs "http://127.0.0.1:$port/metrics" >"${log%.log}.metrics" || true
    pb_stop "$pid"
    RUN_EVENTS=$((events - FIRST_COUNT))
    RUN_SECS=$(awk -v a="$FIRST_TIME" -v b="$LAST_TIME" 'BEGIN { printf "%.2f", b - a }')
    RUN_RATE=$(awk -v n="$RUN_EVENTS" -v s="$RUN_SECS" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
    RUN_HOST_US=$(pb_us_per_event 0 "$host" "$events")
    RUN_PG_US=$(pb_us_per_event "$pg_before" "$pg_after" "$events")
    RUN_REDIS_US=$(pb_us_per_event "$redis_before" "$redis_after" "$events")
}

# pb_drop_run NAME: frees what pb_enrich_run NAME left (database, Redis
# keys) before the next run, so runs do not pile up memory.
pb_drop_run() {
    pb_drop_db "$1"
    pb_drop_prefix "$1:"
}

# The settings the enrich processes run with: each pipeline tuning variable
# (host/src/config/env.rs: the pipeline.* keys, the connection pool, the
# Redis TTL) with the caller's value or the default from the README's
# configuration table, then any other PULSEHUB_* the caller exported.
pb_settings() {
    local var key shown=" " value
    while read -r var key; do
        [[ $key =~ ^(pipeline\.|database\.max_connections$|redis\.ttl_secs$) ]] || continue
        shown+="$var "
        if [[ -n ${!var:-} ]]; then
            value="${!var} (set by the caller)"
        else
            value="$(awk -F'|' -v v="\`$var\`" '$2 ~ v { gsub(/^ +| +$/, "", $4); print $4 }' README.md | tr -d '`')"
            value="${value:-?} (default)"
        fi
        echo "$var=$value"
    done < <(tr -d ' \n' <host/src/config/env.rs | grep -oE '\("PULSEHUB_[A-Z_]+","[a-z_.]+"' | tr -d '("' | tr ',' ' ')
    pb_passthrough | while IFS= read -r line; do
        [[ $shown == *" ${line%%=*} "* ]] || echo "$line (set by the caller)"
    done
    if [[ -n ${PULSEHUB_CONFIG:-} ]]; then
        echo "(PULSEHUB_CONFIG=$PULSEHUB_CONFIG: its keys replace the defaults above)"
    fi
}

# median: of the numbers on stdin, one a line (the middle one; of an even
# count, the lower middle).
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
