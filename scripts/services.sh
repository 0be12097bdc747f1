#!/usr/bin/env bash
# Makes sure the services the integration tests talk to are up:
# PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are started with the
# machine's own commands when they do not answer, and the Kafka-protocol
# broker (nisshi) is installed and started by scripts/broker.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! listening 5432; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
if ! listening 6379; then
    echo "services: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for port in 5432 6379; do
    for _ in $(seq 1 50); do listening "$port" && break; sleep 0.2; done
    listening "$port" || { echo "services: nothing answers on 127.0.0.1:$port" >&2; exit 1; }
done
scripts/broker.sh start
