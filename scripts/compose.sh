#!/usr/bin/env bash
# scripts/compose.sh: the compose verbs of the Makefile, thin wrappers over `docker compose`.
#
#   scripts/compose.sh demo     the stack on the bundled recording (docker-compose.yaml +
#                               docker-compose.demo.yaml), healthy or a non-zero exit
#   scripts/compose.sh up       the stack on live Binance (docker-compose.yaml)
#   scripts/compose.sh down     stop and remove the containers, keep the volumes (the data)
#   scripts/compose.sh clean    also remove the volumes
#   scripts/compose.sh status   the engine, each service's state and health, then the
#                               warehouse counts of scripts/stack.sh status
#
# On a machine with Docker and a registry this is `docker compose ... up -d --build --wait`
# with the official images. Without a registry, docker/standins/build.sh first builds a
# same-tag local image for every image whose pull fails; without an engine (root, Debian),
# scripts/docker-engine.sh starts one under .local/docker (stopped by `down` and `clean`).
# Settings come from .env (scripts/stack.sh dotenv creates it and generates the secrets).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WAIT_SECONDS="${COMPOSE_WAIT_SECONDS:-900}"
LIVE_FILES=(-f docker-compose.yaml)
DEMO_FILES=(-f docker-compose.yaml -f docker-compose.demo.yaml)
# The host ports the stack publishes on 127.0.0.1: setting, what listens there.
PUBLISHED=(POSTGRES_PORT:PostgreSQL REDIS_PORT:Redis KAFKA_PORT:Kafka AIRFLOW_PORT:"Airflow API server"
    PRODUCER_METRICS_PORT:"producer metrics" CONSUMER_METRICS_PORT:"consumer metrics"
    SPARK_MASTER_UI_PORT:"Spark master UI" DASHBOARD_PORT:dashboard PROMETHEUS_PORT:Prometheus)

log() { printf '[compose %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'compose: ERROR: %s\n' "$*" >&2; exit 1; }

dotenv_value() { # key -> its value in .env (empty when absent)
    sed -n "s/^$1=//p" "$ROOT/.env" | tail -1
}

engine() { # the engine (the user's, or one started here) and the compose command
    scripts/docker-engine.sh start
    eval "$(scripts/docker-engine.sh env)"
    read -r -a COMPOSE <<<"$DOCKER_COMPOSE"
}

compose() { "${COMPOSE[@]}" "$@"; }

own_ports() { # host ports the running containers of this project publish
    compose "${DEMO_FILES[@]}" ps --format '{{.Ports}}' 2>/dev/null |
        { grep -o '127\.0\.0\.1:[0-9]*->' || true; } | sed 's/127\.0\.0\.1:\([0-9]*\)->/\1/' | sort -u
}

check_ports() { # every published port is free, or already this stack's
    local own entry setting service port checks=()
    own=" $(own_ports | paste -sd' ' -) "
    for entry in "${PUBLISHED[@]}"; do
        setting="${entry%%:*}" service="${entry#*:}"
        port="${!setting:-$(dotenv_value "$setting")}"
        [[ -n "$port" && "$own" != *" $port "* ]] && checks+=("$port:$service:$setting")
    done
    ((${#checks[@]} == 0)) || scripts/stack.sh require-ports-free "${checks[@]}"
}

images() { # everything the files name, official when pullable, same-tag stand-ins otherwise
    docker/standins/build.sh
    log "building the project's images (producer, consumer, Airflow)"
    local logfile="$ROOT/.local/logs/compose-build.log"
    mkdir -p "$ROOT/.local/logs"
    if ! compose "${DEMO_FILES[@]}" build >"$logfile" 2>&1; then
        tail -n 40 "$logfile" >&2
        die "docker compose build failed (above: the last lines of .local/logs/compose-build.log)"
    fi
}

report_unhealthy() { # files... : each service that failed, with its last log lines
    local name state health exit_code
    while read -r name state health exit_code; do
        case "$state/$health/$exit_code" in
            running/healthy/* | running/-/* | exited/*/0) continue ;;
            running/starting/*) echo "--- $name: still starting (health check not passed yet)" >&2; continue ;;
            created/*) echo "--- $name: not started (waits for a dependency)" >&2; continue ;;
        esac
        echo "--- $name: $state (health $health, exit $exit_code); its last log lines:" >&2
        compose "$@" logs --no-color --tail 30 "$name" >&2 || true
    done < <(compose "$@" ps -a --format '{{.Service}} {{.State}} {{if .Health}}{{.Health}}{{else}}-{{end}} {{.ExitCode}}')
}

demo_trigger() { # as `make demo`: unpause the DAG and trigger the run of the recording's day
    local day
    # Both inside the containers: the replay service has the recording, the API server the
    # login file airflow-init wrote (no secret crosses the host's command line).
    day="$(compose "${DEMO_FILES[@]}" exec -T replay python -c '
import datetime, gzip, json, os
path = "/app/" + os.environ["DEMO_RECORDING"]
with (gzip.open if path.endswith(".gz") else open)(path, "rt") as frames:
    data = json.loads(next(frames))["data"]
t = int(data.get("T") or data["E"])  # ms, or us in recordings of the newer streams
print(datetime.datetime.fromtimestamp(t / (1e6 if t >= 10**14 else 1e3), datetime.UTC).date())
')" || { log "WARNING: could not read the recording's day; trigger get_daily_summary from the Airflow UI"; return 0; }
    compose "${DEMO_FILES[@]}" exec -T airflow-api-server python - "$day" <<'PY' ||
import datetime, json, sys, time, urllib.error, urllib.request
day = datetime.date.fromisoformat(sys.argv[1])
base, dag = "http://127.0.0.1:8080", "/api/v2/dags/get_daily_summary"
def call(method, path, body, token=None):
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)
with open("/opt/airflow/auth/passwords.json") as logins:
    username, password = next(iter(json.load(logins).items()))
token = call("POST", "/auth/token", {"username": username, "password": password})["access_token"]
for _ in range(120):  # the DAG processor may not have parsed it yet
    try:
        call("PATCH", dag, {"is_paused": False}, token)
        break
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise
        time.sleep(2)
else:
    sys.exit("get_daily_summary not loaded within 240 s (docker compose logs airflow-dag-processor)")
start, end = f"{day}T00:00:00Z", f"{day + datetime.timedelta(days=1)}T00:00:00Z"
try:
    call("POST", f"{dag}/dagRuns", {"dag_run_id": f"demo__{day}", "logical_date": start,
         "data_interval_start": start, "data_interval_end": end,
         "note": "make compose-demo: the recording's day"}, token)
    print(f"Airflow run demo__{day} of get_daily_summary triggered: it waits until the consumer has the whole day, then summarises and reconciles it")
except urllib.error.HTTPError as err:
    if err.code != 409:
        raise
    print(f"Airflow run demo__{day} of get_daily_summary exists already (a previous compose-demo)")
PY
        log "WARNING: triggering get_daily_summary for $day failed (above); trigger it from the Airflow UI"
}

cmd_start() { # demo|up
    local mode="$1" files=() t0=$SECONDS
    if [[ "$mode" == demo ]]; then files=("${DEMO_FILES[@]}"); else files=("${LIVE_FILES[@]}"); fi
    scripts/stack.sh dotenv
    engine
    check_ports
    images
    log "docker compose ${files[*]} up -d --wait (up to ${WAIT_SECONDS}s for every health check)"
    if ! compose "${files[@]}" up -d --remove-orphans --wait --wait-timeout "$WAIT_SECONDS"; then
        report_unhealthy "${files[@]}"
        die "the compose stack did not become healthy; stop it with: make compose-down"
    fi
    log "$mode up and healthy in $((SECONDS - t0))s"
    [[ "$mode" == demo ]] && demo_trigger
    cat <<EOF

The compose stack runs. Where to look:
  Airflow UI   http://127.0.0.1:$(dotenv_value AIRFLOW_PORT)   login: $(dotenv_value AIRFLOW_ADMIN_USER) / (AIRFLOW_ADMIN_PASSWORD in .env)
  psql         psql -h 127.0.0.1 -p $(dotenv_value POSTGRES_PORT) -U pipeline_analyst $(dotenv_value POSTGRES_DB)   (password: PIPELINE_ANALYST_PASSWORD in .env)
  dashboard    http://127.0.0.1:$(dotenv_value DASHBOARD_PORT)   Prometheus http://127.0.0.1:$(dotenv_value PROMETHEUS_PORT)
  Spark        http://127.0.0.1:$(dotenv_value SPARK_MASTER_UI_PORT)
  more         make compose-status | make status | make compose-down (stops, keeps data)
EOF
}

cmd_stop() { # down|clean
    local extra=()
    [[ "$1" == clean ]] && extra=(-v)
    scripts/stack.sh dotenv
    if scripts/docker-engine.sh status >/dev/null 2>&1; then
        eval "$(scripts/docker-engine.sh env)"
        read -r -a COMPOSE <<<"$DOCKER_COMPOSE"
        compose "${DEMO_FILES[@]}" down --remove-orphans "${extra[@]}"
        [[ "$1" == clean ]] && log "containers, network and volumes of the compose stack removed"
    else
        log "no Docker engine answers: nothing of the compose stack runs"
    fi
    scripts/docker-engine.sh stop
}

cmd_status() {
    scripts/stack.sh dotenv
    scripts/docker-engine.sh status || return 0
    eval "$(scripts/docker-engine.sh env)"
    read -r -a COMPOSE <<<"$DOCKER_COMPOSE"
    echo "compose services:"
    compose "${DEMO_FILES[@]}" ps -a --format 'table {{.Service}}\t{{.State}}\t{{.Status}}' | sed 's/^/  /'
    scripts/stack.sh status
}

case "${1:-}" in
    demo) cmd_start demo ;;
    up) cmd_start up ;;
    down) cmd_stop down ;;
    clean) cmd_stop clean ;;
    status) cmd_status ;;
    *) die "unknown verb '${1:-}'; use one of: demo up down clean status" ;;
esac
