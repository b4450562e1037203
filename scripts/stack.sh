#!/usr/bin/env bash
# scripts/stack.sh: the local stack without Docker. Installs what is missing and runs PostgreSQL 15,
# Redis 7, a single-node Kafka 4.1.1 (KRaft), the Spark consumer, the replay server, the producer
# and Airflow 3.3.2 as plain local processes. Settings come from .env (created from .env.example);
# data, logs and pid files live under .local/. The Makefile's verbs call this script.
#
#   scripts/stack.sh services   PostgreSQL + Redis + Kafka (+ topics), what the tests need
#   scripts/stack.sh demo       services + consumer + replay server on the bundled recording + producer + Airflow
#   scripts/stack.sh up         same, producer on live Binance (BINANCE_WS_URL overrides)
#   scripts/stack.sh down       stop everything, keep data        scripts/stack.sh clean   also remove data
#   scripts/stack.sh status     what runs, consumer lag, rows today, last price per symbol
#   scripts/stack.sh logs       tail the logs                     scripts/stack.sh install  install only
#   scripts/stack.sh replay FILE SPEED    replay a recording into the running stack
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
random_secret() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

sync_dotenv() {
    # .env is created from .env.example; later .env.example keys are appended to an existing .env
    # (the user's values stay). Placeholder secrets ("change-me...") become random local ones.
    local example="$ROOT/.env.example" dotenv="$ROOT/.env" created=0
    if [[ ! -f "$dotenv" ]]; then
        created=1
        if [[ -f "$example" ]]; then
            log "creating .env from .env.example (placeholder secrets replaced by random ones)"
        else
            log "creating .env with defaults (no .env.example found)"
        fi
        echo "# created by scripts/stack.sh from .env.example; edit freely" >"$dotenv"
    fi
    [[ -f "$example" ]] || { grep -q '^POSTGRES_PASSWORD=' "$dotenv" || echo "POSTGRES_PASSWORD=$(random_secret)" >>"$dotenv"; return 0; }
    local line key value added=0
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
        key="${BASH_REMATCH[1]}" value="${BASH_REMATCH[2]}"
        grep -q "^${key}=" "$dotenv" && continue
        [[ "$value" == change-me* ]] && value="$(random_secret)"
        printf '%s=%s\n' "$key" "$value" >>"$dotenv"
        added=$((added + 1))
    done <"$example"
    ((added == 0 || created)) || log "added $added setting(s) from .env.example to .env"
}

load_env() {
    sync_dotenv
    # Keep values already in the environment: a user's export wins over .env.
    local line key
    while IFS= read -r line || [[ -n "$line" ]]; do
        line="${line%$'\r'}"
        [[ "$line" =~ ^[[:space:]]*# || ! "$line" =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)= ]] && continue
        key="${BASH_REMATCH[1]}"
        if [[ -z "${!key+x}" ]]; then
            local value="${line#*=}"
            value="${value%%[[:space:]]#*}"                       # trailing comment
            value="${value#\"}"; value="${value%\"}"; value="${value#\'}"; value="${value%\'}"
            export "$key=$value"
        fi
    done <"$ROOT/.env"

    export POSTGRES_HOST="${POSTGRES_HOST:-127.0.0.1}" POSTGRES_PORT="${POSTGRES_PORT:-5432}"
    export POSTGRES_DB="${POSTGRES_DB:-crypto}" POSTGRES_USER="${POSTGRES_USER:-pipeline}"
    if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
        die "POSTGRES_PASSWORD is empty; set it in $ROOT/.env (any non-empty value)"
    fi
    export REDIS_HOST="${REDIS_HOST:-127.0.0.1}" REDIS_PORT="${REDIS_PORT:-6379}" REDIS_DB="${REDIS_DB:-0}"
    export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
    KAFKA_PORT="${KAFKA_PORT:-${KAFKA_BOOTSTRAP_SERVERS##*:}}"
    KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
    export KAFKA_TOPIC_PRICES="${KAFKA_TOPIC_PRICES:-binance.prices}"
    export KAFKA_TOPIC_DLQ="${KAFKA_TOPIC_DLQ:-binance.prices.dlq}"
    export KAFKA_TOPIC_GAPS="${KAFKA_TOPIC_GAPS:-binance.gaps}"
    export KAFKA_TOPIC_PARTITIONS="${KAFKA_TOPIC_PARTITIONS:-6}"
    export BINANCE_SYMBOLS="${BINANCE_SYMBOLS:-BTCUSDT,ETHUSDT,BNBUSDT}"
    export SPARK_MASTER="${SPARK_MASTER:-local[*]}"
    export SPARK_CHECKPOINT_DIR="${SPARK_CHECKPOINT_DIR:-$LOCAL/checkpoints/consumer}"
    export REPLAY_HOST="${REPLAY_HOST:-127.0.0.1}" REPLAY_PORT="${REPLAY_PORT:-9443}"
    export PRODUCER_METRICS_PORT="${PRODUCER_METRICS_PORT:-9108}"
    export CONSUMER_METRICS_PORT="${CONSUMER_METRICS_PORT:-9109}"
    export AIRFLOW_PORT="${AIRFLOW_PORT:-8080}"
    export AIRFLOW_ADMIN_USER="${AIRFLOW_ADMIN_USER:-admin}"
    export AIRFLOW_ADMIN_PASSWORD="${AIRFLOW_ADMIN_PASSWORD:-$POSTGRES_PASSWORD}"
    export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PY}"
    DEMO_RECORDING="${DEMO_RECORDING:-recordings/btcusdt-trade-2020-01-01.jsonl.gz}"
    DEMO_SPEED="${DEMO_SPEED:-60}"
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
    # find_spec, not import: importing airflow and pyspark would cost seconds on every start.
    if [[ -x "$PY" ]] && "$PY" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("confluent_kafka", "psycopg", "redis", "pyspark", "airflow")))' 2>/dev/null; then
        return 0
    fi
    log "installing .venv from requirements/requirements.lock"
    mkdir -p "$LOGS"
    ensure_uv
    command -v python3.11 >/dev/null 2>&1 || apt_install python3.11
    [[ -x "$PY" ]] || "$UV" venv -q --python python3.11 "$VENV" >"$LOGS/pip.log" 2>&1 ||
        die "could not create $VENV with python3.11; see $LOGS/pip.log"
    "$UV" pip install -q --python "$PY" -r "$ROOT/requirements/requirements.lock" >>"$LOGS/pip.log" 2>&1 ||
        die "could not install the Python packages from PyPI (registry unreachable?); see $LOGS/pip.log"
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
pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
group_alive() { [[ -n "${1:-}" ]] && kill -0 -- "-$1" 2>/dev/null; }
proc_start_time() { # field 22 of /proc/PID/stat; the command name before it may contain spaces
    sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20 || true
}

pidfile_pid() {
    # "pid start-time": the start time guards against a recycled pid that is no longer ours.
    [[ -f "$1" ]] || return 0
    local pid started
    read -r pid started <"$1" || true
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    if [[ -n "${started:-}" && -e "/proc/$pid" && "$(proc_start_time "$pid")" != "$started" ]]; then return 0; fi
    echo "$pid"
}

port_open() { # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

port_owner() { # port -> "name (pid N)" of a listener, or empty
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\("[^"]*"\),pid=\([0-9]*\).*/\1 (pid \2)/p' | head -1
}

require_port_free() { # port service setting
    local port="$1" service="$2" setting="$3"
    if port_open 127.0.0.1 "$port"; then
        local owner; owner="$(port_owner "$port")"
        die "port $port for $service is taken by ${owner:-another process}, not by this stack; stop it or set $setting in .env to a free port"
    fi
}

start_bg() { # name logfile cmd... : runs in its own session (process group) with a pid file
    local name="$1" logfile="$2"; shift 2
    mkdir -p "$RUN" "$LOGS"
    local pidfile="$RUN/$name.pid" i
    rm -f "$pidfile"
    # The child writes its own pid (setsid may fork when the caller runs with job control),
    # then execs the command, so the pid file names the session and process group leader.
    # shellcheck disable=SC2016
    setsid nohup bash -c 'echo "$$ $(sed "s/.*) //" /proc/$$/stat | cut -d" " -f20)" >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' \
        "$pidfile" "$@" >>"$logfile" 2>&1 </dev/null &
    for ((i = 0; i < 100; i++)); do [[ -s "$pidfile" ]] && return 0; sleep 0.05; done
    die "$name did not start (no pid file after 5 s); see $logfile"
}

stop_pidfile() { # name [signal-timeout-seconds]
    local name="$1" timeout="${2:-20}" pid
    pid="$(pidfile_pid "$RUN/$name.pid")"
    if pid_alive "$pid" || group_alive "$pid"; then
        log "stopping $name (pid $pid)"
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < timeout * 10; i++)); do group_alive "$pid" || pid_alive "$pid" || break; sleep 0.1; done
        if group_alive "$pid" || pid_alive "$pid"; then
            log "$name did not stop in ${timeout}s, killing it"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$RUN/$name.pid"
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

# ----------------------------------------------------------------------------- PostgreSQL
PGDATA_DIR="$LOCAL/postgres/data"
PGSOCK="$RUN/postgres"
PGLOG="$LOGS/postgres.log"
PG_EXTERNAL=""

pg_locate() {
    # PostgreSQL runs as the `postgres` OS user, which must reach its data directory. When the
    # checkout sits where that user cannot go (a clone under /root, a mode-700 temp dir), the
    # data, socket and log live in /var/lib/postgresql/pipeline-stack-<hash of the checkout
    # path> instead, linked from .local/postgres, .local/run/postgres and .local/logs/postgres.log.
    if [[ -L "$LOCAL/postgres" ]]; then
        PG_EXTERNAL="$(readlink -f "$LOCAL/postgres")"
    elif is_root && ! runuser -u postgres -- test -x "$LOCAL" 2>/dev/null; then
        PG_EXTERNAL="/var/lib/postgresql/pipeline-stack-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
    fi
    if [[ -n "$PG_EXTERNAL" ]]; then
        PGDATA_DIR="$PG_EXTERNAL/data" PGSOCK="$PG_EXTERNAL/run" PGLOG="$PG_EXTERNAL/postgres.log"
    fi
}

pg_link_external() {
    [[ -n "$PG_EXTERNAL" ]] || return 0
    mkdir -p "$PG_EXTERNAL/run" "$LOCAL" "$RUN" "$LOGS"
    chown postgres: "$PG_EXTERNAL" "$PG_EXTERNAL/run"
    [[ -L "$LOCAL/postgres" ]] || { rmdir "$LOCAL/postgres" 2>/dev/null || true; ln -sfn "$PG_EXTERNAL" "$LOCAL/postgres"; }
    ln -sfn "$PG_EXTERNAL/run" "$RUN/postgres"
    ln -sfn "$PGLOG" "$LOGS/postgres.log"
}

pg_running() { [[ -f "$PGDATA_DIR/postmaster.pid" ]] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; }

psql_admin() { # db args... : superuser over the private unix socket
    local db="$1"; shift
    PGOPTIONS="-c client_min_messages=warning" as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGSOCK" -p "$POSTGRES_PORT" -U postgres -d "$db" "$@"
}

start_postgres() {
    local logfile="$PGLOG"
    pg_link_external
    mkdir -p "$(dirname "$PGDATA_DIR")" "$PGSOCK" "$LOGS"
    if is_root; then
        chown postgres: "$(dirname "$PGDATA_DIR")" "$PGSOCK"
        touch "$logfile"; chown postgres: "$logfile"
    fi
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
        require_port_free "$POSTGRES_PORT" PostgreSQL POSTGRES_PORT
        rm -f "$PGDATA_DIR/postmaster.pid"
        log "starting PostgreSQL on 127.0.0.1:$POSTGRES_PORT"
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$logfile" -o "-p $POSTGRES_PORT -k $PGSOCK" \
            -w -t "$WAIT_SECONDS" start >/dev/null ||
            die "PostgreSQL did not start; see $logfile; fix the error there (or run: make clean && make services)"
    fi
    wait_for PostgreSQL "$logfile" "start it with: make services" \
        "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$POSTGRES_PORT"
    setup_postgres
}

setup_postgres() {
    # Role $POSTGRES_USER (no superuser) owns $POSTGRES_DB and the airflow metadata database;
    # the password is reset every start so it always matches .env.
    psql_admin postgres -v user="$POSTGRES_USER" -v pass="$POSTGRES_PASSWORD" <<'SQL'
select format('create role %I login', :'user') where not exists (select 1 from pg_roles where rolname = :'user') \gexec
alter role :"user" with login nosuperuser nocreaterole password :'pass';
select 'create role pipeline_writer nologin' where not exists (select 1 from pg_roles where rolname = 'pipeline_writer') \gexec
select 'create role pipeline_analyst nologin' where not exists (select 1 from pg_roles where rolname = 'pipeline_analyst') \gexec
grant pipeline_writer, pipeline_analyst to :"user";
SQL
    local db
    for db in "$POSTGRES_DB" airflow; do
        psql_admin postgres -v db="$db" -v user="$POSTGRES_USER" <<'SQL'
select format('create database %I owner %I', :'db', :'user') where not exists (select 1 from pg_database where datname = :'db') \gexec
SQL
    done
    apply_init_sql "$POSTGRES_DB"
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

stop_postgres() {
    if pg_running; then
        log "stopping PostgreSQL"
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null || true
    fi
}

# ----------------------------------------------------------------------------- Redis
redis_ping() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

start_redis() {
    local logfile="$LOGS/redis.log" pid
    mkdir -p "$LOCAL/redis"
    pid="$(pidfile_pid "$RUN/redis.pid")"
    if pid_alive "$pid" && redis_ping; then log "Redis already running on $REDIS_PORT"; return 0; fi
    require_port_free "$REDIS_PORT" Redis REDIS_PORT
    cat >"$LOCAL/redis/redis.conf" <<EOF
# written by scripts/stack.sh on every start; edit the script, not this file
bind 127.0.0.1
protected-mode yes
port $REDIS_PORT
dir $LOCAL/redis
daemonize no
appendonly yes
appendfsync everysec
save 60 1000
maxmemory-policy noeviction
EOF
    log "starting Redis on 127.0.0.1:$REDIS_PORT"
    start_bg redis "$logfile" redis-server "$LOCAL/redis/redis.conf"
    wait_for Redis "$logfile" "start it with: make services" redis_ping
}

# ----------------------------------------------------------------------------- Kafka
KAFKA_DIR="$LOCAL/kafka"

kafka_java() { # main-class args... : the JVM command line shared by the broker and its tools
    local heap
    read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}"
    printf '%s\0' java "${heap[@]}" -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -cp "$JARS/kafka/*" "$@"
}

kafka_run() { local cmd; mapfile -d '' cmd < <(kafka_java "$@"); "${cmd[@]}"; }

kafka_ready() { "$PY" "$ROOT/scripts/kafka_admin.py" ping --timeout 3; }

start_kafka() {
    local logfile="$LOGS/kafka.log" pid
    mkdir -p "$KAFKA_DIR/data"
    pid="$(pidfile_pid "$RUN/kafka.pid")"
    if pid_alive "$pid" && kafka_ready >/dev/null 2>&1; then
        log "Kafka already running on $KAFKA_PORT"
    else
        pid_alive "$pid" && stop_pidfile kafka
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
        log "starting Kafka 4.1.1 on 127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT)"
        local cmd; mapfile -d '' cmd < <(kafka_java kafka.Kafka "$KAFKA_DIR/server.properties")
        start_bg kafka "$logfile" "${cmd[@]}"
        wait_for Kafka "$logfile" "start it with: make services" kafka_ready
    fi
    "$PY" "$ROOT/scripts/kafka_admin.py" ensure-topics \
        "$KAFKA_TOPIC_PRICES:$KAFKA_TOPIC_PARTITIONS" "$KAFKA_TOPIC_DLQ:1" "$KAFKA_TOPIC_GAPS:1" ||
        die "could not create the Kafka topics; see $logfile"
}

# ----------------------------------------------------------------------------- pipeline apps

app_running() { local pid; pid="$(pidfile_pid "$RUN/$1.pid")"; pid_alive "$pid"; }

start_app() { # name port(0 = none) setting wait-seconds cmd... : starts unless already running
    local name="$1" port="$2" setting="$3" wait_s="$4"; shift 4
    local logfile="$LOGS/$name.log"
    if app_running "$name"; then log "$name already running (pid $(pidfile_pid "$RUN/$name.pid"))"; return 0; fi
    if [[ "$port" != 0 ]]; then require_port_free "$port" "$name" "$setting"; fi
    log "starting $name: $*"
    (cd "$ROOT" && start_bg "$name" "$logfile" "$@")
    local pid deadline=$((SECONDS + wait_s))
    pid="$(pidfile_pid "$RUN/$name.pid")"
    while ((SECONDS < deadline)); do
        pid_alive "$pid" || die "$name exited during start; see $logfile (last line: $(tail -1 "$logfile" 2>/dev/null))"
        if [[ "$port" != 0 ]] && port_open 127.0.0.1 "$port"; then return 0; fi
        sleep 0.5
    done
    if [[ "$port" != 0 ]]; then
        die "$name did not open port $port within ${wait_s}s; see $logfile; run 'make down' and retry"
    fi
}

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
    start_app consumer "$CONSUMER_METRICS_PORT" CONSUMER_METRICS_PORT "${CONSUMER_START_SECONDS:-180}" "$PY" -m consumer_app
}

start_replay_server() {
    [[ -f "$ROOT/producer_app/replay_server.py" ]] || { log "WARNING: producer_app/replay_server.py not there yet; replay server not started"; return 0; }
    [[ -f "$ROOT/$DEMO_RECORDING" ]] || die "demo recording $DEMO_RECORDING not found; set DEMO_RECORDING to a file in recordings/"
    start_app replay-server "$REPLAY_PORT" REPLAY_PORT 60 "$PY" -m producer_app.replay_server \
        --recording "$DEMO_RECORDING" --speed "$DEMO_SPEED" --host "$REPLAY_HOST" --port "$REPLAY_PORT"
}

start_producer() {
    [[ -f "$ROOT/producer_app/__main__.py" ]] || { log "WARNING: producer_app/__main__.py not there yet; producer not started"; return 0; }
    start_app producer "$PRODUCER_METRICS_PORT" PRODUCER_METRICS_PORT 60 "$PY" -m producer_app
}

# ----------------------------------------------------------------------------- Airflow
airflow_env() {
    local dir="$LOCAL/airflow"
    mkdir -p "$dir"
    # Secrets shared by the API server, scheduler and DAG processor; made once, kept in .local.
    if [[ ! -s "$dir/secrets.env" ]]; then
        printf 'AIRFLOW_JWT_SECRET_LOCAL=%s\nAIRFLOW_API_SECRET_LOCAL=%s\n' "$(random_secret)" "$(random_secret)" >"$dir/secrets.env"
        chmod 600 "$dir/secrets.env"
    fi
    local jwt api_secret
    jwt="$(sed -n 's/^AIRFLOW_JWT_SECRET_LOCAL=//p' "$dir/secrets.env")"
    api_secret="$(sed -n 's/^AIRFLOW_API_SECRET_LOCAL=//p' "$dir/secrets.env")"
    if [[ -n "${AIRFLOW_JWT_SECRET:-}" && "${AIRFLOW_JWT_SECRET}" != change-me* ]]; then jwt="$AIRFLOW_JWT_SECRET"; fi
    export AIRFLOW_HOME="$dir"
    export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/airflow/dags"
    export AIRFLOW__CORE__LOAD_EXAMPLES=False
    export AIRFLOW__CORE__EXECUTOR=LocalExecutor
    export AIRFLOW__CORE__PARALLELISM=4
    export AIRFLOW__CORE__DEFAULT_TIMEZONE=utc
    export AIRFLOW__CORE__FERNET_KEY="${AIRFLOW_FERNET_KEY:-}"
    export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:${AIRFLOW_PORT}/execution/"
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW_ADMIN_USER}:admin"
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$dir/simple_auth_manager_passwords.json"
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://${POSTGRES_USER}:${POSTGRES_PASSWORD}@${POSTGRES_HOST}:${POSTGRES_PORT}/airflow"
    export AIRFLOW__API__HOST=127.0.0.1
    export AIRFLOW__API__PORT="$AIRFLOW_PORT"
    export AIRFLOW__API__BASE_URL="http://127.0.0.1:${AIRFLOW_PORT}"
    export AIRFLOW__API__SECRET_KEY="$api_secret"
    export AIRFLOW__API__WORKERS=1
    export AIRFLOW__API_AUTH__JWT_SECRET="$jwt"
    export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$LOGS/airflow"
    export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
    export AIRFLOW_CONN_PIPELINE_POSTGRES="${AIRFLOW_CONN_PIPELINE_POSTGRES:-postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@${POSTGRES_HOST}:${POSTGRES_PORT}/${POSTGRES_DB}}"
    export RAW_RETENTION_DAYS="${RAW_RETENTION_DAYS:-7}"
    # The simple auth manager reads passwords from this file; we write the one from .env.
    printf '{"%s": "%s"}\n' "$AIRFLOW_ADMIN_USER" "$AIRFLOW_ADMIN_PASSWORD" >"$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
    chmod 600 "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
}

airflow_health() { curl -fsS -m 3 "http://127.0.0.1:${AIRFLOW_PORT}/api/v2/monitor/health" >/dev/null; }

start_airflow() {
    [[ -x "$VENV/bin/airflow" ]] || die "airflow is not installed in .venv; run: make install"
    airflow_env
    local logfile="$LOGS/airflow-db-migrate.log" stamp="$LOCAL/airflow/.migrated" version
    # db migrate is idempotent but slow; redo it only when the Airflow version changed.
    version="$("$PY" -c 'from importlib.metadata import version; print(version("apache-airflow"))' 2>/dev/null)"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$version" ]]; then
        log "airflow db migrate (Airflow $version, metadata in Postgres database 'airflow')"
        "$VENV/bin/airflow" db migrate >"$logfile" 2>&1 || die "airflow db migrate failed; see $logfile"
        echo "$version" >"$stamp"
    fi
    mkdir -p "$LOGS/airflow"
    start_app airflow-api-server "$AIRFLOW_PORT" AIRFLOW_PORT 180 "$VENV/bin/airflow" api-server --host 127.0.0.1 --port "$AIRFLOW_PORT"
    # --skip-serve-logs: LocalExecutor writes logs where the API server reads them; no 0.0.0.0:8793 listener.
    start_app airflow-scheduler 0 - 5 "$VENV/bin/airflow" scheduler --skip-serve-logs
    start_app airflow-dag-processor 0 - 5 "$VENV/bin/airflow" dag-processor
    wait_for "Airflow API server" "$LOGS/airflow-api-server.log" "run 'make down' and retry" airflow_health
}

airflow_token() {
    curl -s -m 10 -H 'Content-Type: application/json' \
        -d "{\"username\": \"$AIRFLOW_ADMIN_USER\", \"password\": \"$AIRFLOW_ADMIN_PASSWORD\"}" \
        "http://127.0.0.1:${AIRFLOW_PORT}/auth/token" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
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
    curl -s -o /dev/null -w '%{http_code}' -m 10 -H 'Content-Type: application/json' \
        -d "{\"username\": \"$AIRFLOW_ADMIN_USER\", \"password\": \"$AIRFLOW_ADMIN_PASSWORD\"}" \
        "http://127.0.0.1:${AIRFLOW_PORT}/auth/token" || true
}

# ----------------------------------------------------------------------------- status
psql_app() { # psql as POSTGRES_USER over TCP
    PGPASSWORD="$POSTGRES_PASSWORD" psql -X -q -v ON_ERROR_STOP=1 -h "$POSTGRES_HOST" -p "$POSTGRES_PORT" \
        -U "$POSTGRES_USER" -d "$POSTGRES_DB" "$@"
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
    keys="$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -n "$REDIS_DB" --scan --pattern "$pattern" 2>/dev/null | head -20)"
    if [[ -z "$keys" ]]; then echo "  Redis: no last prices yet ($pattern)"; return 0; fi
    while IFS= read -r key; do
        type="$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -n "$REDIS_DB" type "$key")"
        case "$type" in
            hash) value="$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -n "$REDIS_DB" hgetall "$key" | paste -sd' ' -)" ;;
            string) value="$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -n "$REDIS_DB" get "$key")" ;;
            *) value="($type)" ;;
        esac
        printf '  Redis %s = %s\n' "$key" "$value"
    done <<<"$keys"
}

cmd_status() {
    echo "services:"
    _up() { printf '  %-22s up    %s\n' "$1" "$2"; }
    _down() { printf '  %-22s down  %s\n' "$1" "$2"; }
    if pg_running && "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$POSTGRES_PORT"; then _up PostgreSQL "127.0.0.1:$POSTGRES_PORT"; else _down PostgreSQL "(make services)"; fi
    if redis_ping; then _up Redis "127.0.0.1:$REDIS_PORT"; else _down Redis "(make services)"; fi
    local kafka_up=0
    if [[ -x "$PY" ]] && kafka_ready >/dev/null 2>&1; then kafka_up=1; _up Kafka "$KAFKA_BOOTSTRAP_SERVERS"; else _down Kafka "(make services)"; fi
    local app
    for app in consumer replay-server producer airflow-api-server airflow-scheduler airflow-dag-processor; do
        if app_running "$app"; then _up "$app" "pid $(pidfile_pid "$RUN/$app.pid"), log .local/logs/$app.log"; else _down "$app" ""; fi
    done
    echo "kafka:"
    if ((kafka_up)); then
        "$PY" "$ROOT/scripts/kafka_admin.py" lag --topic "$KAFKA_TOPIC_PRICES" \
            --checkpoint "$(cd "$ROOT" && realpath -m "$SPARK_CHECKPOINT_DIR")" 2>&1 | sed 's/^/  /' || true
    else
        echo "  Kafka down: no lag"
    fi
    echo "consumer (status file the job rewrites after every micro-batch):"
    consumer_status
    echo "warehouse ($POSTGRES_DB):"
    live_counts
    redis_last_prices
}

consumer_status() {
    local file="${CONSUMER_STATUS_FILE:-}"
    [[ -n "$file" ]] || file="$(cd "$ROOT" && realpath -m "$SPARK_CHECKPOINT_DIR")/status.json"
    if [[ ! -f "$file" ]]; then echo "  no status yet ($file)"; return 0; fi
    app_running consumer || echo "  the consumer is not running; its last status was:"
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
    start_postgres
    start_redis
    start_kafka
    log "services up in $((SECONDS - t0))s: PostgreSQL 127.0.0.1:$POSTGRES_PORT, Redis 127.0.0.1:$REDIS_PORT, Kafka $KAFKA_BOOTSTRAP_SERVERS"
}

print_where_to_look() {
    cat <<EOF

The pipeline runs. Where to look:
  Airflow UI   http://127.0.0.1:${AIRFLOW_PORT}   login: ${AIRFLOW_ADMIN_USER} / ${AIRFLOW_ADMIN_PASSWORD}  (from .env)
  psql         PGPASSWORD='${POSTGRES_PASSWORD}' psql -h ${POSTGRES_HOST} -p ${POSTGRES_PORT} -U ${POSTGRES_USER} ${POSTGRES_DB}
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
    pg_running || require_port_free "$POSTGRES_PORT" PostgreSQL POSTGRES_PORT
    app_running redis || require_port_free "$REDIS_PORT" Redis REDIS_PORT
    if ! app_running kafka; then
        require_port_free "$KAFKA_PORT" Kafka KAFKA_BOOTSTRAP_SERVERS
        require_port_free "$KAFKA_CONTROLLER_PORT" "the Kafka controller" KAFKA_CONTROLLER_PORT
    fi
    [[ "${1:-}" == services ]] && return 0
    app_running consumer || require_port_free "$CONSUMER_METRICS_PORT" consumer CONSUMER_METRICS_PORT
    app_running producer || require_port_free "$PRODUCER_METRICS_PORT" producer PRODUCER_METRICS_PORT
    if [[ "${1:-}" == demo ]] && ! app_running replay-server; then require_port_free "$REPLAY_PORT" "replay server" REPLAY_PORT; fi
    app_running airflow-api-server || require_port_free "$AIRFLOW_PORT" "Airflow API server" AIRFLOW_PORT
}

cmd_pipeline() { # demo|up
    local mode="$1" t0=$SECONDS
    check_disk
    preflight_ports "$mode"
    # A failed start stops what runs, so nothing is left half-running.
    trap on_failed_start EXIT
    cmd_services
    start_consumer
    if [[ "$mode" == demo ]]; then
        start_replay_server
        export BINANCE_WS_URL="ws://${REPLAY_HOST}:${REPLAY_PORT}"
        export BINANCE_REST_URL="http://${REPLAY_HOST}:${REPLAY_PORT}"
        BINANCE_SYMBOLS="${DEMO_SYMBOLS:-$(symbols_of_recording "$ROOT/$DEMO_RECORDING")}"
        export BINANCE_SYMBOLS BINANCE_STREAMS=trade
        log "producer -> replay server $BINANCE_WS_URL ($DEMO_RECORDING at speed $DEMO_SPEED), symbols $BINANCE_SYMBOLS"
    else
        log "producer -> ${BINANCE_WS_URL:-wss://data-stream.binance.vision}, symbols $BINANCE_SYMBOLS"
    fi
    start_producer
    start_airflow
    local login
    login="$(airflow_login_check)"
    if [[ "$login" != 201 ]]; then
        log "WARNING: Airflow login as $AIRFLOW_ADMIN_USER answered HTTP $login (expected 201); see $LOGS/airflow-api-server.log"
    fi
    [[ -f "$ROOT/airflow/dags/get_daily_summary.py" ]] && airflow_unpause get_daily_summary
    trap - EXIT
    log "$mode up in $((SECONDS - t0))s; waiting up to ${STACK_COUNT_DELAY:-60}s for the first rows"
    wait_for_rows "${STACK_COUNT_DELAY:-60}"
    print_where_to_look
}

cmd_down_apps() {
    local app
    for app in producer replay-server consumer airflow-dag-processor airflow-scheduler airflow-api-server; do
        stop_pidfile "$app" 30
    done
}

cmd_down() {
    cmd_down_apps
    cmd_down_services
    log "everything stopped (data kept in .local/)"
}

cmd_clean() {
    cmd_down
    if [[ -n "$PG_EXTERNAL" && -d "$PG_EXTERNAL" ]]; then rm -rf "$PG_EXTERNAL"; fi
    log "removing data: .local/{postgres,redis,kafka,checkpoints,airflow,logs,run}"
    rm -rf "$LOCAL/postgres" "$LOCAL/redis" "$LOCAL/kafka" "$LOCAL/checkpoints" "$LOCAL/airflow" "$LOGS" "$RUN"
    log "clean (Maven jars kept in .local/jars; remove them with: rm -rf .local/jars)"
}

cmd_logs() {
    mkdir -p "$LOGS"
    local files=("$LOGS"/*.log)
    [[ -e "${files[0]}" ]] || die "no logs yet in $LOGS; start the stack with: make demo"
    if [[ -t 1 && -z "${CI:-}" ]]; then exec tail -n 20 -F "${files[@]}"; else tail -n 50 "${files[@]}"; fi
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

cmd_down_services() {
    stop_pidfile kafka 60
    stop_pidfile redis 20
    stop_postgres
}

cmd_test() { # pytest over unit, integration and e2e; exit 5 (nothing collected) is a failure
    local rc=0
    "$PY" -m pytest -m "unit or integration or e2e" "$@" || rc=$?
    if ((rc == 5)); then die "pytest collected no tests; check tests/ and the markers"; fi
    return "$rc"
}

main() {
    local verb="${1:-}"; shift || true
    load_env
    pg_locate
    case "$verb" in
        install) install_all ;;
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
        replay) cmd_replay "$@" ;;
        bench) cmd_bench ;;
        airflow) cmd_services; start_airflow; log "Airflow login check: HTTP $(airflow_login_check)" ;;
        airflow-env) airflow_env; env | grep -E '^(AIRFLOW|RAW_RETENTION)' | sed 's/^/export /' ;;
        reset-db) cmd_reset_db ;;
        *) die "unknown verb '${verb}'; use one of: install services services-down demo up down clean status logs replay" ;;
    esac
}

main "$@"
