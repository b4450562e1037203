#!/usr/bin/env bash
# scripts/stack.sh: the local stack without Docker. Installs what is missing and runs PostgreSQL 15,
# Redis 7, a single-node Kafka 4.1.1 (KRaft), the Spark consumer, the replay server, the producer
# and Airflow 3.3.2 as local processes under supervisord (scripts/supervisord.conf: what runs,
# restarts, logs). This script installs, prepares each process (initdb, roles, init.sql, Kafka
# storage, topics, airflow db migrate), writes each its environment and starts them in order.
# Settings come from .env (created from .env.example); data and logs live under .local/. The
# Makefile's verbs call this script.
#
#   scripts/stack.sh services   PostgreSQL + Redis + Kafka (+ topics), what the tests need
#   scripts/stack.sh demo       services + consumer + replay server on the bundled recording + producer + Airflow
#   scripts/stack.sh up         same, producer on live Binance (BINANCE_WS_URL overrides)
#   scripts/stack.sh down       stop everything, keep data        scripts/stack.sh clean   also remove data
#   scripts/stack.sh status     each process (state, restarts), consumer lag, rows today, last prices
#   scripts/stack.sh logs       tail the logs                     scripts/stack.sh install  install only
#   scripts/stack.sh replay FILE SPEED    replay a recording into the running stack
#   scripts/stack.sh dotenv     create/sync .env (random secrets), start nothing
#   scripts/stack.sh ctl ARGS   supervisorctl on the stack's supervisor (ctl restart consumer, ctl tail -f producer)
#   scripts/stack.sh psql       psql as the read-only pipeline_analyst
#   scripts/stack.sh audit      pip-audit over requirements.lock (docs/security.md)
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
RUN="$LOCAL/run"
LOGS="$LOCAL/logs"
JARS="$LOCAL/jars"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
MIN_FREE_MB="${STACK_MIN_FREE_MB:-2048}"
WAIT_SECONDS="${STACK_WAIT_SECONDS:-90}"

# ----------------------------------------------------------------------------- output helpers
log() { printf '[stack %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'stack: ERROR: %s\n' "$*" >&2; exit 1; }

# ----------------------------------------------------------------------------- settings
random_secret() { # [length] : letters and digits only, safe in any URL, shell or config file
    local length="${1:-24}" secret=""
    while ((${#secret} < length)); do secret+="$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"; done
    printf '%s' "${secret:0:length}"
}

fernet_key() { head -c 32 /dev/urandom | base64 | tr '+/' '-_'; } # 32 random bytes, urlsafe base64

# The secrets .env must hold: a placeholder ("change-me...") or an empty value becomes a random
# one (docs/local-stack.md, "Security"). Every other key keeps whatever the user wrote.
GENERATED_SECRETS=(POSTGRES_PASSWORD PIPELINE_WRITER_PASSWORD PIPELINE_DAG_PASSWORD PIPELINE_ANALYST_PASSWORD
    AIRFLOW_DB_PASSWORD REDIS_PASSWORD AIRFLOW_ADMIN_PASSWORD AIRFLOW_JWT_SECRET AIRFLOW_FERNET_KEY)

generated_secret() { # key
    case "$1" in
        AIRFLOW_FERNET_KEY) fernet_key ;;
        AIRFLOW_JWT_SECRET) random_secret 86 ;; # Airflow signs with HS512: >= 64 bytes
        *) random_secret 24 ;;
    esac
}

is_placeholder() { [[ -z "$1" || "$1" == change-me* || "$1" == '"change-me'* || "$1" == "'change-me"* ]]; }

sync_dotenv() {
    # .env is created from .env.example; later .env.example keys are appended to an existing .env
    # (the user's values stay). Placeholder or empty secrets become random local ones, in place.
    local example="$ROOT/.env.example" dotenv="$ROOT/.env" created=0
    if [[ ! -f "$dotenv" ]]; then
        created=1
        if [[ -f "$example" ]]; then
            log "creating .env from .env.example (placeholder secrets replaced by random ones)"
        else
            log "creating .env with defaults (no .env.example found)"
        fi
        (umask 077 && echo "# created by scripts/stack.sh from .env.example; edit freely" >"$dotenv")
    fi
    local line key value added=0 replaced=0 tmp="$dotenv.tmp.$$"
    if [[ -f "$example" ]]; then
        while IFS= read -r line || [[ -n "$line" ]]; do
            [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
            key="${BASH_REMATCH[1]}" value="${BASH_REMATCH[2]}"
            grep -q "^${key}=" "$dotenv" && continue
            printf '%s=%s\n' "$key" "$value" >>"$dotenv"
            added=$((added + 1))
        done <"$example"
    fi
    for key in "${GENERATED_SECRETS[@]}"; do grep -q "^${key}=" "$dotenv" || echo "${key}=" >>"$dotenv"; done
    # Placeholders, appended or copied by hand (cp .env.example .env), become random secrets.
    (umask 077 && : >"$tmp")
    while IFS= read -r line || [[ -n "$line" ]]; do
        if [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] && [[ " ${GENERATED_SECRETS[*]} " == *" ${BASH_REMATCH[1]} "* ]] &&
            is_placeholder "${BASH_REMATCH[2]}"; then
            line="${BASH_REMATCH[1]}=$(generated_secret "${BASH_REMATCH[1]}")"
            replaced=$((replaced + 1))
        fi
        printf '%s\n' "$line" >>"$tmp"
    done <"$dotenv"
    cat "$tmp" >"$dotenv" && rm -f "$tmp"   # keeps the file's inode, owner and mode
    chmod go-rwx "$dotenv" 2>/dev/null || true
    ((created)) && return 0
    ((added == 0)) || log "added $added setting(s) from .env.example to .env"
    ((replaced == 0)) || log "replaced $replaced placeholder secret(s) in .env with random values"
}

dotenv_value() { # raw value -> the value, read as docker compose and python-dotenv read .env:
    # "double quoted" (\" and \\ escaped), 'single quoted' (literal), or bare (a " #" starts a comment)
    local raw="$1"
    raw="${raw%$'\r'}"
    raw="${raw#"${raw%%[![:space:]]*}"}"                     # leading blanks
    if [[ "$raw" =~ ^\"(([^\"\\]|\\.)*)\" ]]; then
        local inner="${BASH_REMATCH[1]}" out="" i c
        for ((i = 0; i < ${#inner}; i++)); do
            c="${inner:i:1}"
            if [[ "$c" == '\' ]]; then
                i=$((i + 1)); c="${inner:i:1}"
                case "$c" in n) c=$'\n' ;; t) c=$'\t' ;; r) c=$'\r' ;; esac
            fi
            out+="$c"
        done
        printf '%s' "$out"
    elif [[ "$raw" =~ ^\'([^\']*)\' ]]; then
        printf '%s' "${BASH_REMATCH[1]}"
    else
        raw="${raw%%[[:space:]]#*}"                           # trailing comment
        printf '%s' "${raw%"${raw##*[![:space:]]}"}"           # trailing blanks
    fi
}

require_secret() { # key : a secret the stack needs, non-empty
    [[ -n "${!1:-}" ]] || die "$1 is empty; set it in $ROOT/.env (or delete the line: the stack then writes a random one)"
}

load_env() {
    sync_dotenv
    # Keep values already in the environment: a user's export wins over .env.
    local line key
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ "$line" =~ ^[[:space:]]*# || ! "$line" =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] && continue
        key="${BASH_REMATCH[1]}"
        if [[ -z "${!key+x}" ]]; then
            export "$key=$(dotenv_value "${BASH_REMATCH[2]}")"
        fi
    done <"$ROOT/.env"

    export POSTGRES_HOST="${POSTGRES_HOST:-127.0.0.1}" POSTGRES_PORT="${POSTGRES_PORT:-5432}"
    export POSTGRES_DB="${POSTGRES_DB:-crypto}" POSTGRES_USER="${POSTGRES_USER:-pipeline}"
    for key in "${GENERATED_SECRETS[@]}"; do require_secret "$key"; done
    export REDIS_HOST="${REDIS_HOST:-127.0.0.1}" REDIS_PORT="${REDIS_PORT:-6379}" REDIS_DB="${REDIS_DB:-0}"
    export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
    KAFKA_PORT="${KAFKA_PORT:-${KAFKA_BOOTSTRAP_SERVERS##*:}}"
    KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
    export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}"
    export KAFKA_TOPIC_PRICES="${KAFKA_TOPIC_PRICES:-binance.prices}"
    export KAFKA_TOPIC_DLQ="${KAFKA_TOPIC_DLQ:-binance.prices.dlq}"
    export KAFKA_TOPIC_GAPS="${KAFKA_TOPIC_GAPS:-binance.gaps}"
    export KAFKA_TOPIC_RESUME="${KAFKA_TOPIC_RESUME:-binance.resume}"
    export KAFKA_TOPIC_PARTITIONS="${KAFKA_TOPIC_PARTITIONS:-6}"
    export BINANCE_SYMBOLS="${BINANCE_SYMBOLS:-BTCUSDT,ETHUSDT,BNBUSDT}"
    export SPARK_MASTER="${SPARK_MASTER:-local[*]}"
    export SPARK_CHECKPOINT_DIR="${SPARK_CHECKPOINT_DIR:-$LOCAL/checkpoints/consumer}"
    export REPLAY_HOST="${REPLAY_HOST:-127.0.0.1}" REPLAY_PORT="${REPLAY_PORT:-9443}"
    export PRODUCER_METRICS_PORT="${PRODUCER_METRICS_PORT:-9108}"
    export CONSUMER_METRICS_PORT="${CONSUMER_METRICS_PORT:-9109}"
    export AIRFLOW_PORT="${AIRFLOW_PORT:-8080}"
    export DASHBOARD_PORT="${DASHBOARD_PORT:-8501}" PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
    export POSTGRES_EXPORTER_PORT="${POSTGRES_EXPORTER_PORT:-9187}" REDIS_EXPORTER_PORT="${REDIS_EXPORTER_PORT:-9121}"
    export PROMETHEUS_URL="${PROMETHEUS_URL:-http://127.0.0.1:${PROMETHEUS_PORT}}"
    export AIRFLOW_ADMIN_USER="${AIRFLOW_ADMIN_USER:-admin}"
    export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PY}"
    export DEMO_RECORDING="${DEMO_RECORDING:-recordings/btcusdt-trade-2020-01-01.jsonl.gz}"
    export DEMO_SPEED="${DEMO_SPEED:-max}"
    # The Kafka connector jars for spark.jars, comma-separated (the consumer reads SPARK_JARS).
    if [[ -d "$JARS/spark" ]]; then
        SPARK_JARS="${SPARK_JARS:-$(find "$JARS/spark" -name '*.jar' | sort | paste -sd, -)}"
        export SPARK_JARS
    fi
}

# ----------------------------------------------------------------------------- prerequisites
is_root() { [[ "$(id -u)" == 0 ]]; }

check_disk() {
    mkdir -p "$LOCAL"
    local free_mb
    free_mb="$(df -Pm "$LOCAL" | awk 'NR==2 {print $4}')"
    if ((free_mb < MIN_FREE_MB)); then
        die "not enough disk: ${free_mb} MB free under $LOCAL, need ${MIN_FREE_MB} MB; free space or set STACK_MIN_FREE_MB"
    fi
}

APT_GET=(apt-get -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

apt_install() {
    # Installs Debian packages without letting their maintainer scripts start services on our ports.
    is_root || die "missing Debian packages: $*; install them with: sudo apt-get install -y $*"
    log "apt-get install $*"
    mkdir -p "$LOGS" /usr/share/man/man1  # slim images lack man1; openjdk's postinst needs it
    local policy=/usr/sbin/policy-rc.d created_policy=0 rc=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1
    fi
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq &&
            if [[ " $* " == *" postgresql-15 "* ]]; then
                # Debian's postgresql would create and start a 'main' cluster on 5432: install
                # postgresql-common first and switch that off (as the official postgres image does).
                "${APT_GET[@]}" install postgresql-common &&
                    sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' /etc/postgresql-common/createcluster.conf &&
                    { grep -q '^create_main_cluster' /etc/postgresql-common/createcluster.conf || echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf; }
            fi &&
            "${APT_GET[@]}" install "$@"
    } >"$LOGS/apt.log" 2>&1 || rc=$?
    ((created_policy)) && rm -f "$policy"
    ((rc == 0)) || die "apt-get could not install $* (Debian mirror unreachable?); see $LOGS/apt.log, check the network/apt proxy and rerun"
}

ensure_java() {
    if ! command -v java >/dev/null 2>&1; then
        if is_root; then apt_install openjdk-17-jdk-headless; else
            die "no Java found; install OpenJDK 17: sudo apt-get install -y openjdk-17-jdk-headless"
        fi
    fi
    command -v java >/dev/null 2>&1 || die "no Java found after install; install OpenJDK 17: apt-get install -y openjdk-17-jdk-headless"
}

ensure_system_packages() {
    mkdir -p "$LOGS" "$RUN"
    local missing=()
    [[ -x "$PGBIN/postgres" ]] || missing+=(postgresql-15)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    # dashboard + monitoring (docs/dashboard.md): Prometheus 2.42 with promtool, the PostgreSQL
    # and Redis exporters, and the Chromium the browser test drives
    command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
    command -v prometheus-postgres-exporter >/dev/null 2>&1 || missing+=(prometheus-postgres-exporter)
    command -v prometheus-redis-exporter >/dev/null 2>&1 || missing+=(prometheus-redis-exporter)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
    ensure_java
}

UV_VERSION=0.13.8

ensure_uv() { # sets UV; uv lives in its own small venv (Debian's python3 refuses pip installs, PEP 668)
    UV="$(command -v uv || true)"
    [[ -n "$UV" && "$("$UV" --version 2>/dev/null | awk '{print $2}')" == "$UV_VERSION" ]] && return 0
    UV="$LOCAL/tools/bin/uv"
    [[ -x "$UV" ]] && return 0
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
    python3 -m venv "$LOCAL/tools" >"$LOGS/pip.log" 2>&1 &&
        "$LOCAL/tools/bin/pip" install -q "uv==$UV_VERSION" >>"$LOGS/pip.log" 2>&1 ||
        die "could not install uv $UV_VERSION from PyPI (registry unreachable?); see $LOGS/pip.log"
}

ensure_venv() {
    # Keyed on the lock's hash (a marker in the venv), like the jars on the pom's: a pulled
    # lock with a new or moved package reinstalls; an unchanged one costs one sha256sum.
    local lock="$ROOT/requirements/requirements.lock" marker lock_hash
    lock_hash="$(sha256sum "$lock" | cut -c1-16)"
    marker="$VENV/.lock-$lock_hash"
    [[ -x "$PY" && -f "$marker" ]] && return 0
    log "installing .venv from requirements/requirements.lock"
    mkdir -p "$LOGS"
    ensure_uv
    command -v python3.11 >/dev/null 2>&1 || apt_install python3.11
    [[ -x "$PY" ]] || "$UV" venv -q --python python3.11 "$VENV" >"$LOGS/pip.log" 2>&1 ||
        die "could not create $VENV with python3.11; see $LOGS/pip.log"
    "$UV" pip install -q --python "$PY" -r "$lock" >>"$LOGS/pip.log" 2>&1 ||
        die "could not install the Python packages from PyPI (registry unreachable?); see $LOGS/pip.log"
    rm -f "$VENV"/.lock-*
    touch "$marker"
}

ensure_jars() {
    # One marker per jar set, keyed on the pom's hash, so a pom change refetches.
    local pom_hash profile dir
    pom_hash="$(sha256sum "$ROOT/pom.xml" | cut -c1-16)"
    for profile in kafka-broker spark-connector; do
        if [[ $profile == kafka-broker ]]; then dir="$JARS/kafka"; else dir="$JARS/spark"; fi
        [[ -f "$dir/.pom-$pom_hash" ]] && continue
        command -v mvn >/dev/null 2>&1 || ensure_system_packages
        log "fetching $profile jars with Maven into ${dir#"$ROOT"/}"
        rm -rf "$dir"; mkdir -p "$dir"
        (cd "$ROOT" && mvn -B -q -P "$profile" dependency:copy-dependencies \
            -DoutputDirectory="$dir" >"$LOGS/maven-$profile.log" 2>&1) ||
            die "Maven could not fetch the $profile jars (Maven Central unreachable?); see $LOGS/maven-$profile.log, check network/proxy (~/.m2/settings.xml) and rerun"
        touch "$dir/.pom-$pom_hash"
    done
    load_env
}

install_all() {
    check_disk
    ensure_system_packages
    ensure_venv
    ensure_jars
}

# ----------------------------------------------------------------------------- process helpers
port_open() { # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

port_owner() { # port -> "name (pid N)" of a listener, or empty
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\("[^"]*"\),pid=\([0-9]*\).*/\1 (pid \2)/p' | head -1
}

require_port_free() { # port service setting
    local port="$1" service="$2" setting="$3"
    if port_open 127.0.0.1 "$port"; then
        local owner hint=""; owner="$(port_owner "$port")"
        # docker-proxy publishes the ports of containers: the compose stack, most likely.
        [[ "$owner" == *docker-proxy* ]] && hint=" (a Docker container: the compose stack? make compose-down)"
        die "port $port for $service is taken by ${owner:-another process}${hint}, not by this stack; stop it or set $setting in .env to a free port"
    fi
}

wait_for() { # service logfile fix check-command...
    local service="$1" logfile="$2" fix="$3"; shift 3
    local deadline=$((SECONDS + WAIT_SECONDS))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            die "$service did not answer within ${WAIT_SECONDS}s; see $logfile; $fix"
        fi
        sleep 0.3
    done
}

as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

# ----------------------------------------------------------------------------- supervisor
# supervisord (scripts/supervisord.conf) runs every long-running process. It gets a clean
# environment with only the values its config file names; each program's settings and secrets
# are in .local/run/env/<program>.env, written below and read by scripts/with-env at every start.
SUPERVISOR_CONF="$ROOT/scripts/supervisord.conf"
PROGRAM_ENV="$RUN/env"
STACK_SUPERVISOR_SOCKET=""

supervisor_locate() { # the control socket: .local/run, or /tmp when that path is too long for a socket
    STACK_SUPERVISOR_SOCKET="$RUN/supervisor.sock"
    if ((${#STACK_SUPERVISOR_SOCKET} > 100)); then
        STACK_SUPERVISOR_SOCKET="/tmp/pipeline-stack-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12).sock"
    fi
    export STACK_SUPERVISOR_SOCKET
}

processes() { "$PY" "$ROOT/scripts/stack_processes.py" --socket "$STACK_SUPERVISOR_SOCKET" "$@"; }

supervisor_running() { [[ -S "$STACK_SUPERVISOR_SOCKET" && -x "$PY" ]] && processes ping >/dev/null 2>&1; }

program_state() { processes state "$1" 2>/dev/null || echo DOWN; }

program_up() { [[ "$(program_state "$1")" == RUNNING ]]; }

# The values scripts/supervisord.conf reads from supervisord's own environment (%(ENV_X)s). A
# running supervisor started with other values (a port or path changed in .env) is restarted.
supervisor_settings() {
    printf 'STACK_SUPERVISOR_SOCKET=%s\nPGBIN=%s\nSTACK_PGDATA=%s\nSTACK_PG_OS_USER=%s\nPOSTGRES_PORT=%s\nSTACK_FATAL_RETRY_SECONDS=%s\n' \
        "$STACK_SUPERVISOR_SOCKET" "$PGBIN" "$PGDATA_DIR" "$(pg_os_user)" "$POSTGRES_PORT" "${STACK_FATAL_RETRY_SECONDS:-60}"
}

start_supervisor() {
    local settings="$RUN/supervisord.settings"
    if supervisor_running; then
        if [[ "$(supervisor_settings)" == "$(cat "$settings" 2>/dev/null)" ]]; then return 0; fi
        log "the supervisor's settings changed ($(diff <(cat "$settings" 2>/dev/null) <(supervisor_settings) | sed -n 's/^> //p' | cut -d= -f1 | paste -sd, -)): restarting it and everything it runs"
        stop_supervisor
    fi
    stop_legacy_processes
    [[ -x "$VENV/bin/supervisord" ]] || die "supervisord is not installed in .venv; run: make install"
    mkdir -p "$RUN" "$LOGS" "$PROGRAM_ENV"
    chmod 755 "$RUN"; chmod 700 "$PROGRAM_ENV"
    rm -f "$RUN/restarts.json"
    supervisor_settings >"$settings"
    log "starting supervisord (scripts/supervisord.conf; log .local/logs/supervisord.log)"
    local -a env_args=()
    mapfile -t env_args <"$settings"
    (cd "$ROOT" && env -i PATH="$PATH" HOME="${HOME:-/root}" LANG="${LANG:-C.UTF-8}" "${env_args[@]}" \
        "$VENV/bin/supervisord" -c "$SUPERVISOR_CONF") >>"$LOGS/supervisord.log" 2>&1 ||
        die "supervisord did not start; see $LOGS/supervisord.log"
    wait_for supervisord "$LOGS/supervisord.log" "run 'make down' and retry" supervisor_running
}

stop_supervisor() { # stops every program (apps first: reverse priority), then supervisord itself
    supervisor_running || return 0
    local pid i
    pid="$(cat "$RUN/supervisord.pid" 2>/dev/null || true)"
    log "stopping supervisord and every process it runs"
    processes shutdown >/dev/null 2>&1 || true
    for ((i = 0; i < 1200; i++)); do
        [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        log "supervisord (pid $pid) did not stop in 120 s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

SECRET_NAMES='(PASSWORD|SECRET|FERNET|_CONN_|SQL_ALCHEMY_CONN|_DSN$)'
# What a process inherits: the pipeline's own settings, plus the basics every program needs.
PASSED_NAMES='^(PATH|HOME|USER|LOGNAME|SHELL|LANG|LANGUAGE|LC_[A-Z]+|TZ|TMPDIR|JAVA_HOME|PYTHON[A-Z_]*|[Hh][Tt][Tt][Pp][Ss]?_[Pp][Rr][Oo][Xx][Yy]|[Nn][Oo]_[Pp][Rr][Oo][Xx][Yy]|ALL_PROXY|SSL_CERT_(FILE|DIR)|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|(AIRFLOW|SPARK|PYSPARK|CONSUMER|PRODUCER|BINANCE|KAFKA|POSTGRES|REDIS|REPLAY|DEMO|PIPELINE|RAW_RETENTION|DAILY_SUMMARY)[A-Za-z0-9_]*)$'

write_program_env() { # program [secret-name...] : .local/run/env/<program>.env for scripts/with-env
    # The exported settings (PASSED_NAMES, and every key of .env), quoted for bash (printf %q:
    # any character survives), without any secret but the ones named. Prints "changed" when the
    # file differs from the one the running process was started with.
    local program="$1" name file tmp; shift
    local keep=" $* " dotenv_keys
    dotenv_keys=" $(sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' "$ROOT/.env" | paste -sd' ' -) "
    mkdir -p "$PROGRAM_ENV"; chmod 700 "$PROGRAM_ENV"
    file="$PROGRAM_ENV/$program.env" tmp="$PROGRAM_ENV/.$program.env.tmp"
    (
        umask 077
        {
            printf '# %s: written by scripts/stack.sh, sourced by scripts/with-env at each start\n' "$program"
            while IFS= read -r name; do
                [[ "$name" =~ $PASSED_NAMES || "$dotenv_keys" == *" $name "* ]] || continue
                if [[ "$name" =~ $SECRET_NAMES && "$keep" != *" $name "* ]]; then continue; fi
                printf 'export %s=%q\n' "$name" "${!name}"
            done < <(compgen -e | sort)
        } >"$tmp"
    )
    if cmp -s "$tmp" "$file"; then rm -f "$tmp"; else mv "$tmp" "$file"; echo changed; fi
}

start_program() { # program port(0 = none) setting wait-seconds env-changed(0|1)
    # Starts a program unless it runs; restarts it when its environment changed since it started.
    local name="$1" port="$2" setting="$3" wait_s="$4" changed="${5:-0}" state pid
    local logfile="$LOGS/$name.log"
    state="$(program_state "$name")"
    case "$state" in
        RUNNING | STARTING | BACKOFF)
            if ((changed)); then
                log "$name: settings changed, restarting it"
                processes stop "$name" >/dev/null || true
            else
                log "$name already running (pid $(processes pid "$name"))"
                return 0
            fi
            ;;
    esac
    if [[ "$port" != 0 ]]; then require_port_free "$port" "$name" "$setting"; fi
    log "starting $name"
    processes start "$name" >/dev/null || die "supervisord could not start $name; see $LOGS/supervisord.log"
    local deadline=$((SECONDS + wait_s))
    while ((SECONDS < deadline)); do
        state="$(program_state "$name")"
        if [[ "$state" == FATAL ]]; then
            die "$name could not start (supervisord gave up after its retries); see $logfile (last line: $(tail -1 "$logfile" 2>/dev/null))"
        fi
        if [[ "$port" != 0 ]]; then
            [[ "$state" == RUNNING || "$state" == STARTING ]] && port_open 127.0.0.1 "$port" && return 0
        elif [[ "$state" == RUNNING ]]; then
            return 0
        fi
        sleep 0.5
    done
    if [[ "$port" != 0 ]]; then
        die "$name did not open port $port within ${wait_s}s (state $state); see $logfile; run 'make down' and retry"
    fi
    die "$name did not reach RUNNING within ${wait_s}s (state $state); see $logfile"
}

stop_legacy_processes() {
    # Stacks started by the scripts/stack.sh before supervisord kept "pid start-time" files in
    # .local/run and PostgreSQL under pg_ctl: stop those once, so the supervisor can take over.
    local pidfile pid started
    for pidfile in "$RUN"/*.pid; do
        [[ -f "$pidfile" && "$pidfile" != "$RUN/supervisord.pid" ]] || continue
        read -r pid started <"$pidfile" || true
        if [[ "$pid" =~ ^[0-9]+$ && -n "${started:-}" && -e "/proc/$pid" &&
            "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f20)" == "$started" ]]; then
            log "stopping $(basename "$pidfile" .pid) (pid $pid), started by an older scripts/stack.sh"
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            local i
            for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    if [[ -f "$PGDATA_DIR/postmaster.pid" ]] && ! supervisor_running &&
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
        log "stopping PostgreSQL started by an older scripts/stack.sh (pg_ctl)"
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null || true
    fi
}

# ----------------------------------------------------------------------------- PostgreSQL
PGDATA_DIR="$LOCAL/postgres/data"
PGSOCK="$RUN/postgres"
PG_EXTERNAL=""

pg_locate() {
    # PostgreSQL runs as the `postgres` OS user, which must reach its data directory. When the
    # checkout sits where that user cannot go (a clone under /root, a mode-700 temp dir), the
    # data and socket live in /var/lib/postgresql/pipeline-stack-<hash of the checkout path>
    # instead, linked from .local/postgres and .local/run/postgres.
    if [[ -L "$LOCAL/postgres" ]]; then
        PG_EXTERNAL="$(readlink -f "$LOCAL/postgres")"
    elif is_root && ! runuser -u postgres -- test -x "$LOCAL" 2>/dev/null; then
        PG_EXTERNAL="/var/lib/postgresql/pipeline-stack-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
    fi
    if [[ -n "$PG_EXTERNAL" ]]; then
        PGDATA_DIR="$PG_EXTERNAL/data" PGSOCK="$PG_EXTERNAL/run"
    fi
}

pg_os_user() { if is_root; then echo postgres; else id -un; fi; }

pg_link_external() {
    [[ -n "$PG_EXTERNAL" ]] || return 0
    mkdir -p "$PG_EXTERNAL/run" "$LOCAL" "$RUN" "$LOGS"
    chown postgres: "$PG_EXTERNAL" "$PG_EXTERNAL/run"
    [[ -L "$LOCAL/postgres" ]] || { rmdir "$LOCAL/postgres" 2>/dev/null || true; ln -sfn "$PG_EXTERNAL" "$LOCAL/postgres"; }
    ln -sfn "$PG_EXTERNAL/run" "$RUN/postgres"
}

pg_ready() { "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$POSTGRES_PORT"; }

pg_running() { program_up postgres; }

psql_admin() { # db args... : superuser over the private unix socket
    local db="$1"; shift
    PGOPTIONS="-c client_min_messages=warning" as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGSOCK" -p "$POSTGRES_PORT" -U postgres -d "$db" "$@"
}

start_postgres() {
    local logfile="$LOGS/postgres.log"
    pg_link_external
    mkdir -p "$(dirname "$PGDATA_DIR")" "$PGSOCK" "$LOGS"
    [[ -L "$logfile" ]] && rm -f "$logfile"   # older stacks linked it to pg_ctl's log
    if is_root; then chown postgres: "$(dirname "$PGDATA_DIR")" "$PGSOCK"; fi
    chmod 700 "$PGSOCK"
    if [[ ! -f "$PGDATA_DIR/PG_VERSION" ]]; then
        log "initdb PostgreSQL 15 in ${PGDATA_DIR#"$ROOT"/}"
        as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 >>"$logfile" 2>&1 ||
            die "initdb failed; see $logfile"
        # The socket directory is mode 700 and owned by postgres, so local trust reaches only
        # root and postgres; everyone else uses TCP with a password.
        cat >>"$PGDATA_DIR/postgresql.conf" <<EOF
# --- local stack (scripts/stack.sh)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGSOCK'
max_connections = 200
shared_buffers = 256MB
timezone = 'UTC'
log_timezone = 'UTC'
EOF
    fi
    if pg_running; then
        log "PostgreSQL already running on $POSTGRES_PORT"
    else
        start_program postgres "$POSTGRES_PORT" POSTGRES_PORT "$WAIT_SECONDS"
    fi
    wait_for PostgreSQL "$logfile" "start it with: make services" pg_ready
    setup_postgres
}

setup_postgres() {
    # Roles: $POSTGRES_USER (no superuser) owns $POSTGRES_DB and runs init.sql; one login role
    # per process (pipeline_writer, pipeline_dag, pipeline_analyst) and `airflow`, owner of
    # Airflow's metadata database. Passwords are psql variables (any character works) and are
    # reset on every start, so .env stays the truth.
    psql_admin postgres -v user="$POSTGRES_USER" -v pass="$POSTGRES_PASSWORD" \
        -v writer_pass="$PIPELINE_WRITER_PASSWORD" -v dag_pass="$PIPELINE_DAG_PASSWORD" \
        -v analyst_pass="$PIPELINE_ANALYST_PASSWORD" -v airflow_pass="$AIRFLOW_DB_PASSWORD" <<'SQL'
select format('create role %I login', :'user') where not exists (select 1 from pg_roles where rolname = :'user') \gexec
alter role :"user" with login nosuperuser nocreaterole password :'pass';
select format('create role %I', r) from unnest(array['pipeline_writer', 'pipeline_dag', 'pipeline_analyst', 'airflow']) as r
where not exists (select 1 from pg_roles where rolname = r) \gexec
alter role pipeline_writer with login nosuperuser nocreatedb nocreaterole password :'writer_pass';
alter role pipeline_dag with login nosuperuser nocreatedb nocreaterole password :'dag_pass';
alter role pipeline_analyst with login nosuperuser nocreatedb nocreaterole password :'analyst_pass';
alter role airflow with login nosuperuser nocreatedb nocreaterole password :'airflow_pass';
-- the owner may `set role` to each pipeline role (tests of the grants do)
grant pipeline_writer, pipeline_dag, pipeline_analyst to :"user";
SQL
    psql_admin postgres -v db="$POSTGRES_DB" -v user="$POSTGRES_USER" <<'SQL'
select format('create database %I owner %I', :'db', :'user') where not exists (select 1 from pg_database where datname = :'db') \gexec
select 'create database airflow owner airflow' where not exists (select 1 from pg_database where datname = 'airflow') \gexec
-- nobody but its owner reaches Airflow's metadata (connections, variables) or the maintenance database
revoke connect, temporary on database airflow from public;
revoke connect, temporary on database postgres from public;
SQL
    migrate_airflow_owner
    apply_init_sql "$POSTGRES_DB"
}

migrate_airflow_owner() { # older stacks: Airflow's metadata database to the role airflow (once)
    psql_admin postgres <"$ROOT/scripts/airflow_owner.sql"
}

apply_init_sql() { # db : init.sql as the owner role, so the pipeline user owns its tables
    [[ -f "$ROOT/init.sql" ]] || { log "no init.sql yet, skipping"; return 0; }
    { printf 'set role %s;\n' "\"$POSTGRES_USER\""; cat "$ROOT/init.sql"; } |
        psql_admin "$1" -f - >"$LOGS/init-sql.log" 2>&1 || {
        # Not fatal: tests use fresh databases; the demo database may just predate a schema change.
        log "WARNING: init.sql failed on database $1 ($(grep -m1 ERROR "$LOGS/init-sql.log" || echo 'see log')); see $LOGS/init-sql.log; if the database predates a schema change, recreate it (drops its data): scripts/stack.sh reset-db"
        return 0
    }
}

cmd_reset_db() { # drop and recreate POSTGRES_DB from init.sql
    pg_running || die "PostgreSQL is not running; start it with: make services"
    log "dropping and recreating database $POSTGRES_DB"
    psql_admin postgres -v db="$POSTGRES_DB" <<'SQL'
select format('drop database if exists %I with (force)', :'db') \gexec
SQL
    setup_postgres
}

# ----------------------------------------------------------------------------- Redis
redis_cli() { REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli --no-auth-warning -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

redis_ping() { redis_cli ping 2>/dev/null | grep -q PONG; }

write_redis_auth() { # the password in Redis's config syntax: double quotes, \ and " escaped
    local value="${REDIS_PASSWORD//\\/\\\\}"
    value="${value//\"/\\\"}"
    (umask 077 && printf '# written by scripts/stack.sh from REDIS_PASSWORD\nrequirepass "%s"\n' "$value" >"$LOCAL/redis/auth.conf")
}

start_redis() {
    local logfile="$LOGS/redis.log"
    mkdir -p "$LOCAL/redis"
    if program_up redis; then
        if redis_ping; then log "Redis already running on $REDIS_PORT"; return 0; fi
        log "Redis runs but refuses REDIS_PASSWORD from .env (changed?): restarting it"
        processes stop redis >/dev/null || true
    fi
    write_redis_auth
    cat >"$LOCAL/redis/redis.conf" <<EOF
# written by scripts/stack.sh on every start; edit the script, not this file
bind 127.0.0.1
protected-mode yes
port $REDIS_PORT
dir $LOCAL/redis
daemonize no
include $LOCAL/redis/auth.conf
appendonly yes
appendfsync everysec
save 60 1000
maxmemory-policy noeviction
EOF
    start_program redis "$REDIS_PORT" REDIS_PORT "$WAIT_SECONDS"
    wait_for Redis "$logfile" "start it with: make services" redis_ping
}

# ----------------------------------------------------------------------------- Kafka
KAFKA_DIR="$LOCAL/kafka"

kafka_java() { # main-class args... : the JVM command line of Kafka's tools (the broker's is in supervisord.conf)
    local heap
    read -r -a heap <<<"$KAFKA_HEAP_OPTS"
    printf '%s\0' java "${heap[@]}" -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -cp "$JARS/kafka/*" "$@"
}

kafka_run() { local cmd; mapfile -d '' cmd < <(kafka_java "$@"); "${cmd[@]}"; }

kafka_ready() { "$PY" "$ROOT/scripts/kafka_admin.py" ping --timeout 3; }

start_kafka() {
    local logfile="$LOGS/kafka.log" state
    mkdir -p "$KAFKA_DIR/data"
    state="$(program_state kafka)"
    if [[ "$state" == RUNNING || "$state" == STARTING || "$state" == BACKOFF ]]; then
        wait_for Kafka "$logfile" "see its log; make down && make services" kafka_ready
        log "Kafka already running on $KAFKA_PORT"
    else
        require_port_free "$KAFKA_PORT" Kafka KAFKA_BOOTSTRAP_SERVERS
        require_port_free "$KAFKA_CONTROLLER_PORT" "the Kafka controller" KAFKA_CONTROLLER_PORT
        cat >"$KAFKA_DIR/server.properties" <<EOF
# written by scripts/stack.sh on every start: single-node KRaft broker + controller
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=$KAFKA_TOPIC_PARTITIONS
default.replication.factor=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
log.retention.hours=168
log.segment.bytes=268435456
EOF
        cat >"$KAFKA_DIR/log4j2.properties" <<'EOF'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{ISO8601}{UTC}] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
        if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
            local cluster_id
            [[ -s "$KAFKA_DIR/cluster.id" ]] || kafka_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1 >"$KAFKA_DIR/cluster.id"
            cluster_id="$(cat "$KAFKA_DIR/cluster.id")"
            log "formatting Kafka storage (cluster $cluster_id)"
            kafka_run kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" \
                >>"$logfile" 2>&1 || die "Kafka storage format failed; see $logfile; fix: make clean && make services"
        fi
        write_program_env kafka >/dev/null
        log "Kafka 4.1.1 on 127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT)"
        start_program kafka "$KAFKA_PORT" KAFKA_BOOTSTRAP_SERVERS "$WAIT_SECONDS"
        wait_for Kafka "$logfile" "start it with: make services" kafka_ready
    fi
    "$PY" "$ROOT/scripts/kafka_admin.py" ensure-topics \
        "$KAFKA_TOPIC_PRICES:$KAFKA_TOPIC_PARTITIONS" "$KAFKA_TOPIC_DLQ:1" "$KAFKA_TOPIC_GAPS:1" \
        "$KAFKA_TOPIC_RESUME:1:compact" ||
        die "could not create the Kafka topics; see $logfile"
}

# ----------------------------------------------------------------------------- pipeline apps
# Each app gets its environment file (write_program_env) right before supervisord starts it:
# the consumer logs in as pipeline_writer, the producer and the replay server get no secret.

symbols_of_recording() { # symbols of the first frames, upper case, comma-separated
    "$PY" - "$1" <<'PYEOF'
import gzip, itertools, json, sys
path = sys.argv[1]
opener = gzip.open if path.endswith(".gz") else open
with opener(path, "rt") as frames:
    symbols = {json.loads(line)["data"]["s"] for line in itertools.islice(frames, 5000) if line.strip()}
print(",".join(sorted(symbols)))
PYEOF
}

start_consumer() {
    [[ -f "$ROOT/consumer_app/__main__.py" ]] || { log "WARNING: consumer_app/__main__.py not there yet; consumer not started"; return 0; }
    mkdir -p "$(cd "$ROOT" && realpath -m "$SPARK_CHECKPOINT_DIR")"
    local changed
    # the feed's settings are the producer's: switching demo <-> up leaves the consumer running
    changed="$(unset BINANCE_WS_URL BINANCE_REST_URL BINANCE_SYMBOLS BINANCE_STREAMS
        POSTGRES_USER=pipeline_writer POSTGRES_PASSWORD="$PIPELINE_WRITER_PASSWORD" \
            write_program_env consumer POSTGRES_PASSWORD REDIS_PASSWORD)"
    start_program consumer "$CONSUMER_METRICS_PORT" CONSUMER_METRICS_PORT "${CONSUMER_START_SECONDS:-180}" "${changed:+1}"
}

start_replay_server() {
    [[ -f "$ROOT/producer_app/replay_server.py" ]] || { log "WARNING: producer_app/replay_server.py not there yet; replay server not started"; return 0; }
    [[ -f "$ROOT/$DEMO_RECORDING" ]] || die "demo recording $DEMO_RECORDING not found; set DEMO_RECORDING to a file in recordings/"
    local changed
    changed="$(write_program_env replay-server)"
    start_program replay-server "$REPLAY_PORT" REPLAY_PORT 60 "${changed:+1}"
}

start_producer() {
    [[ -f "$ROOT/producer_app/__main__.py" ]] || { log "WARNING: producer_app/__main__.py not there yet; producer not started"; return 0; }
    local changed
    # A recording is history: no bound on how far behind now its times are (docs/producer.md,
    # "Out-of-range times"); set for the producer only, so a feed switch restarts nothing else.
    changed="$([[ -z "${STACK_FEED_IS_REPLAY:-}" ]] || export PRODUCER_MAX_EVENT_BEHIND_S=0
        write_program_env producer)"
    start_program producer "$PRODUCER_METRICS_PORT" PRODUCER_METRICS_PORT 60 "${changed:+1}"
}

# ----------------------------------------------------------------------------- monitoring + dashboard
# Prometheus (Debian's 2.42) scrapes the producer, the consumer and the PostgreSQL and Redis
# exporters (Debian's too) and evaluates prometheus/alerts.yml; the dashboard (Streamlit)
# reads the warehouse as the read-only pipeline_analyst and Prometheus over its HTTP API.
# Each is a [program:x] of scripts/supervisord.conf; docs/dashboard.md explains them.
PROM_DIR="$LOCAL/prometheus"

write_prometheus_config() { # .local/prometheus/prometheus.yml from the ports in .env; rules stay in prometheus/
    mkdir -p "$PROM_DIR/data"
    cat >"$PROM_DIR/prometheus.yml" <<EOF
# written by scripts/stack.sh on every start; edit the script (or prometheus/alerts.yml), not this file
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - $ROOT/prometheus/alerts.yml
scrape_configs:
  - job_name: producer
    static_configs: [{targets: ["127.0.0.1:$PRODUCER_METRICS_PORT"]}]
  - job_name: consumer
    static_configs: [{targets: ["127.0.0.1:$CONSUMER_METRICS_PORT"]}]
  - job_name: postgres
    scrape_interval: 30s
    static_configs: [{targets: ["127.0.0.1:$POSTGRES_EXPORTER_PORT"]}]
  - job_name: redis
    scrape_interval: 15s
    static_configs: [{targets: ["127.0.0.1:$REDIS_EXPORTER_PORT"]}]
EOF
}

start_monitoring() {
    command -v prometheus >/dev/null 2>&1 || die "prometheus is not installed; run: make install"
    write_prometheus_config
    promtool check config "$PROM_DIR/prometheus.yml" >"$LOGS/promtool.log" 2>&1 ||
        die "the Prometheus config or prometheus/alerts.yml is invalid; see $LOGS/promtool.log"
    local changed pgpass="$PROGRAM_ENV/postgres-exporter.pgpass" escaped
    # The exporter reads the warehouse as the read-only analyst (CONTRACT 1). Its password goes
    # in a libpq password file: the exporter (0.11) rebuilds a key=value DSN from
    # DATA_SOURCE_PASS and rejects one with quotes or backslashes ("malformed dsn").
    escaped="${PIPELINE_ANALYST_PASSWORD//\\/\\\\}"
    escaped="${escaped//:/\\:}"
    mkdir -p "$PROGRAM_ENV"
    (umask 077; printf '*:*:*:pipeline_analyst:%s\n' "$escaped" >"$pgpass.tmp" && mv "$pgpass.tmp" "$pgpass")
    changed="$(POSTGRES_USER=pipeline_analyst write_program_env postgres-exporter)"
    start_program postgres-exporter "$POSTGRES_EXPORTER_PORT" POSTGRES_EXPORTER_PORT 30 "${changed:+1}"
    changed="$(write_program_env redis-exporter REDIS_PASSWORD)"
    start_program redis-exporter "$REDIS_EXPORTER_PORT" REDIS_EXPORTER_PORT 30 "${changed:+1}"
    changed="$(write_program_env prometheus)"
    start_program prometheus "$PROMETHEUS_PORT" PROMETHEUS_PORT 60 "${changed:+1}"
}

start_dashboard() {
    [[ -f "$ROOT/dashboard/__main__.py" ]] || { log "WARNING: dashboard/__main__.py not there yet; dashboard not started"; return 0; }
    local changed
    changed="$(POSTGRES_USER=pipeline_analyst POSTGRES_PASSWORD="$PIPELINE_ANALYST_PASSWORD" \
        write_program_env dashboard POSTGRES_PASSWORD)"
    start_program dashboard "$DASHBOARD_PORT" DASHBOARD_PORT 90 "${changed:+1}"
}

# ----------------------------------------------------------------------------- Airflow
url_encode() { # percent-encodes every byte but A-Z a-z 0-9 - . _ ~ (RFC 3986 unreserved)
    local LC_ALL=C value="$1" out="" c i
    for ((i = 0; i < ${#value}; i++)); do
        c="${value:i:1}"
        case "$c" in [A-Za-z0-9._~-]) out+="$c" ;; *) out+="$(printf '%%%02X' "'$c")" ;; esac
    done
    printf '%s' "$out"
}

json_string() { # a JSON string literal of $1 (quotes, backslashes and control characters escaped)
    local LC_ALL=C value="$1" out="" c i
    for ((i = 0; i < ${#value}; i++)); do
        c="${value:i:1}"
        case "$c" in
            '"') out+='\"' ;;
            '\') out+='\\' ;;
            [[:cntrl:]]) out+="$(printf '\\u%04x' "'$c")" ;;
            *) out+="$c" ;;
        esac
    done
    printf '"%s"' "$out"
}

airflow_login_json() { printf '{"username": %s, "password": %s}' "$(json_string "$AIRFLOW_ADMIN_USER")" "$(json_string "$AIRFLOW_ADMIN_PASSWORD")"; }

airflow_env() {
    local dir="$LOCAL/airflow"
    mkdir -p "$dir"
    # The API secret shared by the API server, scheduler and DAG processor; made once, kept in .local.
    if [[ ! -s "$dir/secrets.env" ]] || ! grep -q '^AIRFLOW_API_SECRET_LOCAL=' "$dir/secrets.env"; then
        (umask 077 && printf 'AIRFLOW_API_SECRET_LOCAL=%s\n' "$(random_secret 64)" >"$dir/secrets.env")
    fi
    local api_secret
    api_secret="$(sed -n 's/^AIRFLOW_API_SECRET_LOCAL=//p' "$dir/secrets.env")"
    if ((${#AIRFLOW_JWT_SECRET} < 64)); then
        log "WARNING: AIRFLOW_JWT_SECRET in .env has ${#AIRFLOW_JWT_SECRET} characters; Airflow signs with HS512, which wants >= 64 (delete the line: the stack writes a new one)"
    fi
    export AIRFLOW_HOME="$dir"
    export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/airflow/dags"
    export AIRFLOW__CORE__LOAD_EXAMPLES=False
    export AIRFLOW__CORE__EXECUTOR=LocalExecutor
    export AIRFLOW__CORE__PARALLELISM=4
    export AIRFLOW__CORE__DEFAULT_TIMEZONE=utc
    export AIRFLOW__CORE__FERNET_KEY="$AIRFLOW_FERNET_KEY"
    export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:${AIRFLOW_PORT}/execution/"
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW_ADMIN_USER}:admin"
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$dir/simple_auth_manager_passwords.json"
    # Airflow's metadata as the role `airflow`; the URL needs the password percent-encoded.
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://airflow:$(url_encode "$AIRFLOW_DB_PASSWORD")@${POSTGRES_HOST}:${POSTGRES_PORT}/airflow"
    export AIRFLOW__API__HOST=127.0.0.1
    export AIRFLOW__API__PORT="$AIRFLOW_PORT"
    export AIRFLOW__API__BASE_URL="http://127.0.0.1:${AIRFLOW_PORT}"
    export AIRFLOW__API__SECRET_KEY="$api_secret"
    export AIRFLOW__API__WORKERS=1
    export AIRFLOW__API_AUTH__JWT_SECRET="$AIRFLOW_JWT_SECRET"
    export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$LOGS/airflow"
    export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
    # The DAG's connection as pipeline_dag, in Airflow's JSON form (no URL encoding to get wrong).
    if [[ -z "${AIRFLOW_CONN_PIPELINE_POSTGRES:-}" ]]; then
        AIRFLOW_CONN_PIPELINE_POSTGRES="$(printf '{"conn_type": "postgres", "host": %s, "port": %s, "schema": %s, "login": "pipeline_dag", "password": %s}' \
            "$(json_string "$POSTGRES_HOST")" "$POSTGRES_PORT" "$(json_string "$POSTGRES_DB")" "$(json_string "$PIPELINE_DAG_PASSWORD")")"
    fi
    export AIRFLOW_CONN_PIPELINE_POSTGRES
    export RAW_RETENTION_DAYS="${RAW_RETENTION_DAYS:-7}"
    # The simple auth manager reads passwords from this file; we write the one from .env.
    (umask 077 && printf '{%s: %s}\n' "$(json_string "$AIRFLOW_ADMIN_USER")" "$(json_string "$AIRFLOW_ADMIN_PASSWORD")" \
        >"$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
}

# What the Airflow processes keep of what looks like a secret (the passwords file is only its path).
AIRFLOW_SECRETS=(AIRFLOW__DATABASE__SQL_ALCHEMY_CONN AIRFLOW__CORE__FERNET_KEY AIRFLOW__API__SECRET_KEY
    AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW_CONN_PIPELINE_POSTGRES AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE)

airflow_health() { curl -fsS -m 3 "http://127.0.0.1:${AIRFLOW_PORT}/api/v2/monitor/health" >/dev/null; }

start_airflow() {
    [[ -x "$VENV/bin/airflow" ]] || die "airflow is not installed in .venv; run: make install"
    airflow_env
    local logfile="$LOGS/airflow-db-migrate.log" stamp="$LOCAL/airflow/.migrated" version
    # db migrate is idempotent but slow; redo it only when the Airflow version changed.
    version="$("$PY" -c 'from importlib.metadata import version; print(version("apache-airflow"))' 2>/dev/null)"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$version" ]]; then
        log "airflow db migrate (Airflow $version, metadata in Postgres database 'airflow' as role airflow)"
        "$VENV/bin/airflow" db migrate >"$logfile" 2>&1 || die "airflow db migrate failed; see $logfile"
        echo "$version" >"$stamp"
    fi
    mkdir -p "$LOGS/airflow"
    local program changed
    for program in airflow-api-server airflow-scheduler airflow-dag-processor; do
        changed="$(write_program_env "$program" "${AIRFLOW_SECRETS[@]}")"
        if [[ "$program" == airflow-api-server ]]; then
            start_program "$program" "$AIRFLOW_PORT" AIRFLOW_PORT 180 "${changed:+1}"
        else
            start_program "$program" 0 - 60 "${changed:+1}"
        fi
    done
    wait_for "Airflow API server" "$LOGS/airflow-api-server.log" "run 'make down' and retry" airflow_health
}

airflow_token() {
    airflow_login_json | curl -s -m 10 -H 'Content-Type: application/json' --data-binary @- \
        "http://127.0.0.1:${AIRFLOW_PORT}/auth/token" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}

recording_day() { # the UTC day of a recording's first frame (YYYY-MM-DD)
    "$PY" - "$1" <<'PYEOF'
import datetime, gzip, json, sys
path = sys.argv[1]
with (gzip.open if path.endswith(".gz") else open)(path, "rt") as frames:
    data = json.loads(next(frames))["data"]
t = data.get("T") or data["E"]
print(datetime.datetime.fromtimestamp(t / (1e6 if t >= 10**14 else 1e3), datetime.UTC).date())
PYEOF
}

airflow_trigger_day() { # dag_id day : one run for the UTC day (logical date = data interval start)
    local dag="$1" day="$2" token code next
    next="$("$PY" -c 'import datetime, sys; print(datetime.date.fromisoformat(sys.argv[1]) + datetime.timedelta(days=1))' "$day")"
    token="$(airflow_token 2>/dev/null)" || { log "WARNING: no Airflow token; trigger $dag for $day from the UI"; return 0; }
    code="$(curl -s -o "$LOGS/airflow-trigger.json" -w '%{http_code}' -m 20 -X POST \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"dag_run_id\": \"demo__$day\", \"logical_date\": \"${day}T00:00:00Z\", \"data_interval_start\": \"${day}T00:00:00Z\", \"data_interval_end\": \"${next}T00:00:00Z\", \"note\": \"make demo: the recording's day\"}" \
        "http://127.0.0.1:${AIRFLOW_PORT}/api/v2/dags/$dag/dagRuns" || true)"
    case "$code" in
        200 | 201) log "Airflow run demo__$day of $dag triggered: it waits until the consumer has the whole day, then summarises and reconciles it" ;;
        409) log "Airflow run demo__$day of $dag exists already (a previous make demo)" ;;
        *) log "WARNING: triggering $dag for $day answered HTTP $code; see $LOGS/airflow-trigger.json" ;;
    esac
}

airflow_unpause() { # dag_id : new DAGs start paused; the stack's DAG should run on its schedule
    local dag="$1" token i
    token="$(airflow_token 2>/dev/null)" || { log "WARNING: no Airflow token; DAG $dag left as it is"; return 0; }
    for ((i = 0; i < 60; i++)); do
        if curl -fsS -m 5 -o /dev/null -X PATCH -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
            -d '{"is_paused": false}' "http://127.0.0.1:${AIRFLOW_PORT}/api/v2/dags/$dag" 2>/dev/null; then
            log "Airflow DAG $dag loaded and unpaused"
            return 0
        fi
        sleep 1
    done
    log "WARNING: DAG $dag not found by Airflow within 60 s; see $LOGS/airflow-dag-processor.log"
}

wait_for_rows() { # up to N seconds until staging.raw_prices has rows, so the counts printed mean something
    local deadline=$((SECONDS + $1)) rows
    while ((SECONDS < deadline)); do
        rows="$(psql_app -tA -c 'select count(*) from staging.raw_prices' 2>/dev/null || echo 0)"
        ((${rows:-0} > 0)) && return 0
        sleep 2
    done
}

airflow_login_check() { # POST /auth/token with the configured login; prints the HTTP status
    airflow_login_json | curl -s -o /dev/null -w '%{http_code}' -m 10 -H 'Content-Type: application/json' \
        --data-binary @- "http://127.0.0.1:${AIRFLOW_PORT}/auth/token" || true
}

# ----------------------------------------------------------------------------- status
psql_app() { # psql as the read-only pipeline_analyst over TCP (status and counts need no more)
    PGPASSWORD="$PIPELINE_ANALYST_PASSWORD" psql -X -q -v ON_ERROR_STOP=1 -h "$POSTGRES_HOST" -p "$POSTGRES_PORT" \
        -U pipeline_analyst -d "$POSTGRES_DB" "$@"
}

live_counts() {
    if ! "$PGBIN/pg_isready" -q -h "$POSTGRES_HOST" -p "$POSTGRES_PORT"; then echo "  PostgreSQL down: no counts"; return 0; fi
    psql_app -P pager=off -P footer=off 2>&1 <<'SQL' | sed 's/^/  /' || true
select count(*) filter (where event_time >= (now() at time zone 'utc')::date at time zone 'utc') as rows_today,
       count(*) as rows_total,
       max(event_time) as newest_event_time
from staging.raw_prices;
select distinct on (symbol) symbol, price as last_price, event_time
from staging.raw_prices
order by symbol, event_time desc, sequence_id desc;
SQL
}

redis_last_prices() {
    redis_ping || return 0
    local pattern="${CONSUMER_REDIS_PREFIX:-consumer:last_price}*" keys key type value
    keys="$(redis_cli -n "$REDIS_DB" --scan --pattern "$pattern" 2>/dev/null | head -20)"
    if [[ -z "$keys" ]]; then echo "  Redis: no last prices yet ($pattern)"; return 0; fi
    while IFS= read -r key; do
        type="$(redis_cli -n "$REDIS_DB" type "$key")"
        case "$type" in
            hash) value="$(redis_cli -n "$REDIS_DB" hgetall "$key" | paste -sd' ' -)" ;;
            string) value="$(redis_cli -n "$REDIS_DB" get "$key")" ;;
            *) value="($type)" ;;
        esac
        printf '  Redis %s = %s\n' "$key" "$value"
    done <<<"$keys"
}

cmd_status() {
    echo "processes (supervisord; restarts since it started; logs in .local/logs/<name>.log):"
    if supervisor_running; then
        processes status | sed 's/^/  /'
    else
        echo "  supervisord is not running: nothing of the stack runs (make services / make demo)"
    fi
    echo "services:"
    _up() { printf '  %-22s up    %s\n' "$1" "$2"; }
    _down() { printf '  %-22s down  %s\n' "$1" "$2"; }
    if pg_ready 2>/dev/null; then _up PostgreSQL "127.0.0.1:$POSTGRES_PORT"; else _down PostgreSQL "(make services)"; fi
    if redis_ping; then _up Redis "127.0.0.1:$REDIS_PORT (password: REDIS_PASSWORD)"; else _down Redis "(make services)"; fi
    local kafka_up=0
    if [[ -x "$PY" ]] && kafka_ready >/dev/null 2>&1; then kafka_up=1; _up Kafka "$KAFKA_BOOTSTRAP_SERVERS"; else _down Kafka "(make services)"; fi
    echo "kafka:"
    if ((kafka_up)); then
        "$PY" "$ROOT/scripts/kafka_admin.py" lag --topic "$KAFKA_TOPIC_PRICES" \
            --checkpoint "$(cd "$ROOT" && realpath -m "$SPARK_CHECKPOINT_DIR")" 2>&1 | sed 's/^/  /' || true
    else
        echo "  Kafka down: no lag"
    fi
    echo "consumer (status file the job rewrites after every micro-batch):"
    consumer_status
    echo "warehouse ($POSTGRES_DB, as pipeline_analyst):"
    live_counts
    redis_last_prices
}

consumer_status() {
    local file="${CONSUMER_STATUS_FILE:-}"
    [[ -n "$file" ]] || file="$(cd "$ROOT" && realpath -m "$SPARK_CHECKPOINT_DIR")/status.json"
    if [[ ! -f "$file" ]]; then echo "  no status yet ($file)"; return 0; fi
    program_up consumer || echo "  the consumer is not running; its last status was:"
    "$PY" - "$file" <<'PYEOF' || echo "  unreadable: $file"
import json, sys, time
status = json.load(open(sys.argv[1]))
age = time.time() - status.get("updated_at", 0)
print(f"  state {status.get('state')} (updated {age:.0f}s ago), last batch {status.get('last_batch_id')}"
      f" {status.get('last_batch_outcome')}: {status.get('last_batch_rows')} rows in"
      f" {status.get('last_batch_duration_s')}s; rows since start {status.get('rows_total')}")
p50, p99 = status.get("latency_p50_s"), status.get("latency_p99_s")
if p50 is not None:
    print(f"  event-to-commit latency p50 {p50:.3f}s p99 {p99:.3f}s (recent batches)")
PYEOF
}

# ----------------------------------------------------------------------------- verbs
cmd_services() {
    local t0=$SECONDS
    preflight_ports services
    install_all
    start_supervisor
    start_postgres
    start_redis
    start_kafka
    log "services up in $((SECONDS - t0))s: PostgreSQL 127.0.0.1:$POSTGRES_PORT, Redis 127.0.0.1:$REDIS_PORT, Kafka $KAFKA_BOOTSTRAP_SERVERS"
}

print_where_to_look() {
    cat <<EOF

The pipeline runs. Where to look:
  Airflow UI   http://127.0.0.1:${AIRFLOW_PORT}   login: ${AIRFLOW_ADMIN_USER} / $(printf '%q' "$AIRFLOW_ADMIN_PASSWORD")  (from .env)
  psql         scripts/stack.sh psql   (= PGPASSWORD=$(printf '%q' "$PIPELINE_ANALYST_PASSWORD") psql -h ${POSTGRES_HOST} -p ${POSTGRES_PORT} -U pipeline_analyst ${POSTGRES_DB}, read-only)
  dashboard    http://127.0.0.1:${DASHBOARD_PORT}   (prices, candles, pipeline health, alerts)
  Prometheus   http://127.0.0.1:${PROMETHEUS_PORT}   (alerts: http://127.0.0.1:${PROMETHEUS_PORT}/alerts)
  metrics      producer http://127.0.0.1:${PRODUCER_METRICS_PORT}/metrics   consumer http://127.0.0.1:${CONSUMER_METRICS_PORT}/metrics
  more         make status | make logs | make down (stops, keeps data)
EOF
    echo "live counts:"
    live_counts
}

on_failed_start() {
    local rc=$?
    if ((rc != 0)); then
        log "start failed; stopping everything this stack runs (data kept)"
        cmd_down >/dev/null 2>&1 || true
    fi
}

preflight_ports() { # mode : every port the stack will open is ours already or free, before anything starts
    local running=0
    supervisor_running && running=1
    _ours() { ((running)) && program_up "$1"; }
    _ours postgres || require_port_free "$POSTGRES_PORT" PostgreSQL POSTGRES_PORT
    _ours redis || require_port_free "$REDIS_PORT" Redis REDIS_PORT
    if ! _ours kafka; then
        require_port_free "$KAFKA_PORT" Kafka KAFKA_BOOTSTRAP_SERVERS
        require_port_free "$KAFKA_CONTROLLER_PORT" "the Kafka controller" KAFKA_CONTROLLER_PORT
    fi
    [[ "${1:-}" == services ]] && return 0
    _ours consumer || require_port_free "$CONSUMER_METRICS_PORT" consumer CONSUMER_METRICS_PORT
    _ours producer || require_port_free "$PRODUCER_METRICS_PORT" producer PRODUCER_METRICS_PORT
    if [[ "${1:-}" == demo ]] && ! _ours replay-server; then require_port_free "$REPLAY_PORT" "replay server" REPLAY_PORT; fi
    _ours airflow-api-server || require_port_free "$AIRFLOW_PORT" "Airflow API server" AIRFLOW_PORT
    _ours prometheus || require_port_free "$PROMETHEUS_PORT" Prometheus PROMETHEUS_PORT
    _ours postgres-exporter || require_port_free "$POSTGRES_EXPORTER_PORT" "the PostgreSQL exporter" POSTGRES_EXPORTER_PORT
    _ours redis-exporter || require_port_free "$REDIS_EXPORTER_PORT" "the Redis exporter" REDIS_EXPORTER_PORT
    _ours dashboard || require_port_free "$DASHBOARD_PORT" dashboard DASHBOARD_PORT
}

cmd_pipeline() { # demo|up
    local mode="$1" t0=$SECONDS
    check_disk
    stop_legacy_processes
    preflight_ports "$mode"
    # A failed start stops what runs, so nothing is left half-running.
    trap on_failed_start EXIT
    cmd_services
    if [[ "$mode" == demo ]]; then
        [[ -f "$ROOT/$DEMO_RECORDING" ]] || die "demo recording $DEMO_RECORDING not found; set DEMO_RECORDING to a file in recordings/"
        export BINANCE_WS_URL="ws://${REPLAY_HOST}:${REPLAY_PORT}"
        export BINANCE_REST_URL="http://${REPLAY_HOST}:${REPLAY_PORT}"
        BINANCE_SYMBOLS="${DEMO_SYMBOLS:-$(symbols_of_recording "$ROOT/$DEMO_RECORDING")}"
        export BINANCE_SYMBOLS BINANCE_STREAMS=trade   # the DAG's data-quality check expects them too
        # The demo replays a past day: no schedule (no runs for today's empty day); the stack
        # triggers the recording's day itself once Airflow is up, and the sensor waits for it.
        export DAILY_SUMMARY_SCHEDULE="${DAILY_SUMMARY_SCHEDULE:-none}"
        export DAILY_SUMMARY_IDLE_S="${DAILY_SUMMARY_IDLE_S:-30}" DAILY_SUMMARY_POKE_S="${DAILY_SUMMARY_POKE_S:-15}"
        STACK_FEED_IS_REPLAY=1   # the producer's event-time bound: see start_producer
    fi
    # Monitoring first (it sees everything start), Airflow next (its first start migrates its
    # database, the slowest step), then the data path from its sink to its source, so the
    # feed starts once everything can take it; the dashboard last.
    start_monitoring
    start_airflow
    start_consumer
    if [[ "$mode" == demo ]]; then
        start_replay_server
        log "producer -> replay server $BINANCE_WS_URL ($DEMO_RECORDING at speed $DEMO_SPEED), symbols $BINANCE_SYMBOLS"
    else
        if program_up replay-server; then log "stopping the demo's replay server (the live feed needs none)"; processes stop replay-server >/dev/null || true; fi
        log "producer -> ${BINANCE_WS_URL:-wss://data-stream.binance.vision}, symbols $BINANCE_SYMBOLS"
    fi
    start_producer
    local login
    login="$(airflow_login_check)"
    if [[ "$login" != 201 ]]; then
        log "WARNING: Airflow login as $AIRFLOW_ADMIN_USER answered HTTP $login (expected 201); see $LOGS/airflow-api-server.log"
    fi
    [[ -f "$ROOT/airflow/dags/get_daily_summary.py" ]] && airflow_unpause get_daily_summary
    if [[ "$mode" == demo && -f "$ROOT/airflow/dags/get_daily_summary.py" ]]; then
        airflow_trigger_day get_daily_summary "$(recording_day "$ROOT/$DEMO_RECORDING")"
    fi
    start_dashboard
    trap - EXIT
    log "make $mode: everything runs after $((SECONDS - t0))s; waiting up to ${STACK_COUNT_DELAY:-60}s for the first rows"
    wait_for_rows "${STACK_COUNT_DELAY:-60}"
    print_where_to_look
}

APPS=(dashboard producer replay-server consumer airflow-dag-processor airflow-scheduler airflow-api-server
    prometheus postgres-exporter redis-exporter)

cmd_down_apps() { # the apps, producer first (it flushes to Kafka); the services keep running
    supervisor_running || return 0
    log "stopping ${APPS[*]}"
    processes stop "${APPS[@]}" >/dev/null || true
}

cmd_down_services() { # PostgreSQL, Redis and Kafka (and whatever app still needs them)
    supervisor_running || return 0
    cmd_down_apps
    log "stopping kafka redis postgres"
    processes stop kafka redis postgres >/dev/null || true
}

cmd_down() {
    stop_legacy_processes
    stop_supervisor
    log "everything stopped (data kept in .local/)"
}

cmd_clean() {
    cmd_down
    if [[ -n "$PG_EXTERNAL" && -d "$PG_EXTERNAL" ]]; then rm -rf "$PG_EXTERNAL"; fi
    log "removing data: .local/{postgres,redis,kafka,checkpoints,airflow,logs,run}"
    rm -rf "$LOCAL/postgres" "$LOCAL/redis" "$LOCAL/kafka" "$LOCAL/checkpoints" "$LOCAL/airflow" "$LOGS" "$RUN"
    [[ "$STACK_SUPERVISOR_SOCKET" == "$RUN/"* ]] || rm -f "$STACK_SUPERVISOR_SOCKET"
    log "clean (Maven jars kept in .local/jars; remove them with: rm -rf .local/jars)"
}

cmd_logs() {
    mkdir -p "$LOGS"
    local files=("$LOGS"/*.log)
    [[ -e "${files[0]}" ]] || die "no logs yet in $LOGS; start the stack with: make demo"
    if [[ -t 1 && -z "${CI:-}" ]]; then exec tail -n 20 -F "${files[@]}"; else tail -n 50 "${files[@]}"; fi
}

cmd_ctl() { # supervisorctl on the stack's supervisor
    supervisor_running || die "supervisord is not running; start the stack with: make services (or make demo)"
    local -a env_args=()
    mapfile -t env_args <"$RUN/supervisord.settings"
    exec env "${env_args[@]}" "$VENV/bin/supervisorctl" -c "$SUPERVISOR_CONF" "$@"
}

cmd_psql() { # psql as the read-only pipeline_analyst
    pg_ready || die "PostgreSQL is not running on $POSTGRES_PORT; start it with: make services"
    PGPASSWORD="$PIPELINE_ANALYST_PASSWORD" exec psql -h "$POSTGRES_HOST" -p "$POSTGRES_PORT" -U pipeline_analyst "$POSTGRES_DB" "$@"
}

cmd_replay() { # FILE SPEED
    local file="${1:-}" speed="${2:-max}"
    [[ -n "$file" ]] || die "no recording given; use: make replay FILE=recordings/<file> SPEED=<factor|max>"
    [[ -f "$file" || -f "$ROOT/$file" ]] || die "recording $file not found; pick one from recordings/"
    [[ -f "$ROOT/producer_app/replay.py" ]] || die "producer_app/replay.py is not there yet; nothing to run"
    kafka_ready >/dev/null 2>&1 || die "Kafka is not running at $KAFKA_BOOTSTRAP_SERVERS; start the stack with: make services (or make demo)"
    cd "$ROOT" && exec "$PY" -m producer_app.replay --file "$file" --speed "$speed"
}

cmd_bench() {
    local script rc=0 found=0
    for script in "$ROOT"/bench/*; do
        [[ -f "$script" ]] || continue
        case "$script" in
            *.py) found=1; log "bench: ${script#"$ROOT"/}"; (cd "$ROOT" && "$PY" "$script") || rc=$? ;;
            *.sh) found=1; log "bench: ${script#"$ROOT"/}"; (cd "$ROOT" && bash "$script") || rc=$? ;;
        esac
    done
    ((found)) || log "no benchmark scripts in bench/"
    log "bench: scripts/bench_stack.sh (stack start-up on a scratch copy)"
    "$ROOT/scripts/bench_stack.sh" || rc=$?
    return "$rc"
}

PIP_AUDIT_VERSION=2.10.1

cmd_audit() { # pip-audit over requirements.lock; --strict: a package it could not look up fails
    local venv="$LOCAL/audit"
    mkdir -p "$LOGS"
    if [[ "$("$venv/bin/pip-audit" --version 2>/dev/null | awk '{print $2}')" != "$PIP_AUDIT_VERSION" ]]; then
        log "installing pip-audit $PIP_AUDIT_VERSION into .local/audit (its own venv: not part of the lock)"
        { python3 -m venv "$venv" && "$venv/bin/pip" install -q "pip-audit==$PIP_AUDIT_VERSION"; } >"$LOGS/pip-audit-install.log" 2>&1 ||
            die "could not install pip-audit from PyPI; see $LOGS/pip-audit-install.log"
    fi
    local service="${PIP_AUDIT_SERVICE:-pypi}"
    log "pip-audit over requirements/requirements.lock (vulnerability service: $service)"
    "$venv/bin/pip-audit" -r "$ROOT/requirements/requirements.lock" --no-deps --disable-pip --strict \
        --vulnerability-service "$service" --progress-spinner off "$@" ||
        die "pip-audit found vulnerabilities or could not look packages up (\"not found on PyPI\" for every package: no vulnerability database reachable from here, try PIP_AUDIT_SERVICE=osv); docs/security.md"
}

cmd_test() { # pytest over unit, integration and e2e; exit 5 (nothing collected) is a failure
    local rc=0
    "$PY" -m pytest -m "unit or integration or e2e or compose" "$@" || rc=$?
    if ((rc == 5)); then die "pytest collected no tests; check tests/ and the markers"; fi
    return "$rc"
}

main() {
    local verb="${1:-}"; shift || true
    load_env
    pg_locate
    supervisor_locate
    case "$verb" in
        install) install_all ;;
        dotenv) log ".env is in sync with .env.example (secrets generated where they were placeholders)" ;;
        require-ports-free) # port:service:setting... (scripts/compose.sh: the same message as here)
            local spec; for spec in "$@"; do IFS=: read -r port service setting <<<"$spec"; require_port_free "$port" "$service" "$setting"; done ;;
        services) cmd_services ;;
        services-down) cmd_down_services ;;
        apps-down) cmd_down_apps ;;
        test) cmd_test "$@" ;;
        demo) cmd_pipeline demo ;;
        up) cmd_pipeline up ;;
        down) cmd_down ;;
        clean) cmd_clean ;;
        status) cmd_status ;;
        logs) cmd_logs ;;
        ctl) cmd_ctl "$@" ;;
        psql) cmd_psql "$@" ;;
        replay) cmd_replay "$@" ;;
        bench) cmd_bench ;;
        audit) cmd_audit "$@" ;;
        airflow) cmd_services; start_airflow; log "Airflow login check: HTTP $(airflow_login_check)" ;;
        airflow-env)
            airflow_env
            local name
            while IFS= read -r name; do printf 'export %s=%q\n' "$name" "${!name}"; done < <(compgen -e | grep -E '^(AIRFLOW|RAW_RETENTION)' | sort)
            ;;
        reset-db) cmd_reset_db ;;
        prometheus-config) write_prometheus_config; echo "$PROM_DIR/prometheus.yml" ;;
        *) die "unknown verb '${verb}'; use one of: install dotenv services services-down demo up down clean status logs ctl psql replay audit" ;;
    esac
}

main "$@"
