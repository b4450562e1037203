#!/usr/bin/env bash
# scripts/bench_stack.sh: times `scripts/stack.sh services` cold and warm, a restart with data,
# and `down`, on a scratch copy of the stack (its own .local/ in a temp dir, free ports in
# 25000-25999), so the running shared services are never touched. Prints the machine and the
# figures; `make bench` runs it. Usage: scripts/bench_stack.sh [rounds]
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${1:-1}"
SCRATCH="$(mktemp -d /tmp/bench-stack.XXXXXX)"
BASE=$((25000 + RANDOM % 900))
export POSTGRES_PORT=$((BASE + 1)) REDIS_PORT=$((BASE + 2)) KAFKA_PORT=$((BASE + 3))
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$((BASE + 3))" KAFKA_CONTROLLER_PORT=$((BASE + 4))
unset SPARK_JARS

cp -r "$ROOT/scripts" "$ROOT/pom.xml" "$ROOT/init.sql" "$SCRATCH/"
ln -s "$ROOT/.venv" "$SCRATCH/.venv"
STACK="$SCRATCH/scripts/stack.sh"
cleanup() { "$STACK" clean >/dev/null 2>&1 || true; rm -rf "$SCRATCH"; }
trap cleanup EXIT

timed() { # label verb : prints "label  seconds" for scripts/stack.sh <verb>
    local label="$1" verb="$2" t0 t1
    t0=$(date +%s%3N)
    "$STACK" "$verb" >/dev/null 2>&1 || { echo "bench_stack: stack.sh $verb failed" >&2; exit 1; }
    t1=$(date +%s%3N)
    printf '  %-44s %3d.%01d s\n' "$label" $(((t1 - t0) / 1000)) $((((t1 - t0) % 1000) / 100))
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB RAM, $(. /etc/os-release && echo "$PRETTY_NAME"), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); scratch: $SCRATCH; ports $POSTGRES_PORT/$REDIS_PORT/$KAFKA_PORT"
for ((round = 1; round <= ROUNDS; round++)); do
    echo "round $round:"
    "$STACK" clean >/dev/null 2>&1 || true
    rm -rf "$SCRATCH/.local/jars"
    timed "services, cold (no data, no jars; ~/.m2 as is)" services
    timed "services, warm (all running)" services
    timed "down" down
    timed "services, restart with data kept" services
    "$STACK" clean >/dev/null 2>&1
    timed "services, cold data, jars present" services
    timed "down" down
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
