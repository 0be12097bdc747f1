#!/usr/bin/env bash
# A Kafka-protocol broker for development and CI: nisshi, in memory, on
# 127.0.0.1:9092. Production runs Apache Kafka or Redpanda; nothing in the
# code depends on nisshi.
#
# Usage:
#   scripts/broker.sh install install nisshi when it is missing (one install at
#                             a time; a second caller waits for the first)
#   scripts/broker.sh start   install nisshi when it is missing, start it when
#                             nothing listens on the port, wait until it answers
#   scripts/broker.sh stop    stop the broker this script started
#   scripts/broker.sh status  say whether the port answers
#
# Safe to run again: `start` does nothing when the broker already answers,
# `stop` does nothing when this script's broker is not running. The broker
# keeps topics in memory, so a restart starts empty.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
host=127.0.0.1
port=9092
nisshi_version=0.8.1
log="$root/target/nisshi.log"
pidfile="$root/target/nisshi.pid"

# `cargo install` puts the binary here; it is not always on PATH (CI shells).
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

answers() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = nisshi ] \
    && echo "$pid"
}

install() {
  mkdir -p "$root/target"
  # One install at a time: CI starts one in the background early, and
  # `start` then waits for it here instead of building nisshi twice.
  exec 9>"$root/target/nisshi-install.lock"
  flock 9
  if ! command -v nisshi >/dev/null 2>&1; then
    # nisshi needs rustc >= 1.96, newer than the project's stable toolchain.
    # Only the object-store engine (which holds memory://): the default
    # features add SQLite (C sources), libSQL and PostgreSQL engines, which
    # the in-memory broker never uses and which cost minutes to build.
    echo "nisshi is not installed: installing nisshi $nisshi_version (several minutes)" >&2
    cargo +nightly install nisshi --version "$nisshi_version" --locked \
      --no-default-features --features dynostore
  fi
  flock -u 9
}

start() {
  if answers; then
    echo "broker: $host:$port already answers"
    return
  fi
  install
  mkdir -p "$root/target"
  echo "broker: starting nisshi on $host:$port (log: $log)"
  nohup nisshi broker \
    --listener-url "tcp://$host:$port" \
    --advertised-listener-url "tcp://$host:$port" \
    --storage-engine memory://nisshi/ >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 300); do
    if answers; then
      echo "broker: ready on $host:$port"
      return
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "broker: nisshi exited during start-up; last lines of $log:" >&2
      tail -n 20 "$log" >&2
      rm -f "$pidfile"
      exit 1
    fi
    sleep 0.1
  done
  echo "broker: nisshi did not answer on $host:$port within 30 s; see $log" >&2
  exit 1
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$pidfile"
    if answers; then
      echo "broker: $host:$port answers but was not started by this script; leaving it running"
    else
      echo "broker: not running"
    fi
    return
  fi
  echo "broker: stopping nisshi (pid $pid)"
  kill "$pid"
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidfile"
      echo "broker: stopped"
      return
    fi
    sleep 0.1
  done
  echo "broker: nisshi (pid $pid) did not stop within 10 s; killing it" >&2
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

status() {
  if answers; then
    echo "broker: $host:$port answers"
  else
    echo "broker: nothing answers on $host:$port"
    exit 1
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    echo "usage: $0 install|start|stop|status" >&2
    exit 2
    ;;
esac
