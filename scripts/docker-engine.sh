#!/usr/bin/env bash
# scripts/docker-engine.sh: the Docker engine and the Compose v2 CLI the compose verbs
# (scripts/compose.sh) and the compose test use.
#
#   scripts/docker-engine.sh start    use the engine the user already runs (never started, stopped
#                                     or reconfigured here); else, as root on Debian, install what
#                                     is missing from Debian's packages (docker.io, iptables) and
#                                     start dockerd with everything under .local/docker
#   scripts/docker-engine.sh engine   the same, without the Compose CLI (.ci/run builds that
#                                     while the images build)
#   scripts/docker-engine.sh stop     stop the engine this script started; nothing else
#   scripts/docker-engine.sh status   which engine answers, whose it is, and the compose CLI
#   scripts/docker-engine.sh env      shell lines for eval: DOCKER_HOST of the engine in use and
#                                     DOCKER_COMPOSE (the compose command to run; once `start`
#                                     has made it available)
#
# The engine started here owns only paths under .local/docker: data root, exec root (and the
# containerd it starts), pid file, socket and daemon.json; its log is .local/logs/dockerd.log.
# Compose v2 is the CLI plugin when `docker compose` answers; else it is built once with
# `go install` from the Go module proxy into .local/docker/bin/docker-compose (Debian ships
# only Compose v1, which lacks what the compose file uses).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENGINE_DIR="$ROOT/.local/docker"
ENGINE_SOCKET="$ENGINE_DIR/run/docker.sock"
ENGINE_PIDFILE="$ENGINE_DIR/run/dockerd.pid"
ENGINE_LOG="$ROOT/.local/logs/dockerd.log"
COMPOSE_VERSION=v2.29.7
# Oldest Compose the file works with (depends_on `required`, `--wait`): docs/docker.md.
COMPOSE_MIN_VERSION=2.20.0
# The Go toolchain fetched from the Go module proxy when no go >= 1.21 is installed.
GO_TOOLCHAIN=go1.22.12
ENGINE_WAIT_SECONDS="${DOCKER_ENGINE_WAIT_SECONDS:-60}"

log() { printf '[docker-engine %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'docker-engine: ERROR: %s\n' "$*" >&2; exit 1; }
is_root() { [[ "$(id -u)" == 0 ]]; }

# ----------------------------------------------------------------------------- engines
our_pid() { # pid of the dockerd this script started, when it still runs
    local pid
    [[ -s "$ENGINE_PIDFILE" ]] || return 1
    pid="$(cat "$ENGINE_PIDFILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--pidfile $ENGINE_PIDFILE" &&
        echo "$pid"
}

answers() { # docker-host ("" = the user's own setting) : the engine answers a version request
    command -v docker >/dev/null 2>&1 || return 1
    if [[ -n "$1" ]]; then
        DOCKER_HOST="$1" timeout 15 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
    else
        timeout 15 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
    fi
}

ours_answers() { our_pid >/dev/null && answers "unix://$ENGINE_SOCKET"; }

users_engine() { # the user's engine answers (DOCKER_HOST / docker context), and it is not ours
    [[ "${DOCKER_HOST:-}" == "unix://$ENGINE_SOCKET" ]] && return 1
    answers ""
}

engine_host() { # DOCKER_HOST to use: "" for the user's own engine, our socket, or fail
    if ours_answers; then
        echo "unix://$ENGINE_SOCKET"
    elif users_engine; then
        echo ""
    else
        return 1
    fi
}

apt_install() {
    is_root || die "missing Debian packages: $*; install them with: sudo apt-get install -y --no-install-recommends $*"
    [[ -r /etc/debian_version ]] || die "no Docker engine and not Debian: install Docker Engine (https://docs.docker.com/engine/install/)"
    mkdir -p "$ROOT/.local/logs"
    log "apt-get install $*"
    # No package's maintainer script may start a service (docker.io's would start dockerd
    # with the host's default paths): policy-rc.d refuses every start during the install.
    local policy=/usr/sbin/policy-rc.d created=0 rc=0
    if [[ ! -e "$policy" ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created=1; fi
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq &&
            apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
                -o Dpkg::Options::=--force-confold "$@"
    } >"$ROOT/.local/logs/apt-docker.log" 2>&1 || rc=$?
    ((created)) && rm -f "$policy"
    ((rc == 0)) || die "apt-get could not install $* (Debian mirror unreachable?); see .local/logs/apt-docker.log"
}

start_engine() {
    mkdir -p "$ENGINE_DIR/run" "$ENGINE_DIR/data" "$ENGINE_DIR/exec" "$ROOT/.local/logs"
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    if ((${#missing[@]})); then
        is_root || die "no Docker engine answers and dockerd is not installed; install Docker Engine (https://docs.docker.com/engine/install/), or run as root on Debian so this script installs: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    is_root || die "no Docker engine answers and starting dockerd needs root; start your Docker engine (e.g. sudo systemctl start docker) or run as root"
    # Its own daemon.json, so a host /etc/docker/daemon.json changes nothing here.
    [[ -f "$ENGINE_DIR/daemon.json" ]] || echo '{}' >"$ENGINE_DIR/daemon.json"
    rm -f "$ENGINE_SOCKET" "$ENGINE_PIDFILE"
    log "starting dockerd (data, exec root, socket under .local/docker; log .local/logs/dockerd.log)"
    setsid dockerd --config-file "$ENGINE_DIR/daemon.json" --data-root "$ENGINE_DIR/data" \
        --exec-root "$ENGINE_DIR/exec" --pidfile "$ENGINE_PIDFILE" --host "unix://$ENGINE_SOCKET" \
        --storage-driver overlay2 >>"$ENGINE_LOG" 2>&1 </dev/null &
    local deadline=$((SECONDS + ENGINE_WAIT_SECONDS))
    until answers "unix://$ENGINE_SOCKET"; do
        if ! kill -0 $! 2>/dev/null || ((SECONDS > deadline)); then
            tail -n 20 "$ENGINE_LOG" >&2 || true
            die "dockerd did not answer on $ENGINE_SOCKET within ${ENGINE_WAIT_SECONDS}s; see .local/logs/dockerd.log (above)"
        fi
        sleep 0.5
    done
    log "dockerd $(DOCKER_HOST="unix://$ENGINE_SOCKET" docker version --format '{{.Server.Version}}') up (pid $(our_pid))"
}

cmd_engine() {
    if ours_answers; then
        log "the engine this project started answers (pid $(our_pid), $ENGINE_SOCKET)"
    elif users_engine; then
        log "using your Docker engine (${DOCKER_HOST:-default context}); this project never starts or stops it"
    else
        start_engine
    fi
}

cmd_start() {
    cmd_engine
    ensure_compose >/dev/null
}

cmd_stop() {
    local pid i
    if ! pid="$(our_pid)"; then
        rm -f "$ENGINE_PIDFILE"
        log "no engine started by this project runs (a Docker engine of your own is never stopped here)"
        return 0
    fi
    log "stopping dockerd (pid $pid): its containers stop with it"
    kill -TERM "$pid"
    for ((i = 0; i < 600; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "dockerd did not stop in 60 s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$ENGINE_PIDFILE" "$ENGINE_SOCKET"
    log "dockerd stopped"
}

# ----------------------------------------------------------------------------- compose CLI
version_ok() { # version minimum : version >= minimum (dotted numbers, a leading v ignored)
    [[ "$(printf '%s\n%s\n' "${1#v}" "${2#v}" | sort -V | head -1)" == "${2#v}" ]]
}

plugin_compose_version() { docker compose version --short 2>/dev/null; }

go_binary() { # a go >= 1.21 (it fetches the toolchain compose needs from the Go module proxy)
    local go version
    for go in "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go /usr/lib/go/bin/go "$ENGINE_DIR/go/bin/go"; do
        [[ -n "$go" && -x "$go" ]] || continue
        version="$("$go" env GOVERSION 2>/dev/null || true)"
        version="${version#go}"
        if [[ -n "$version" ]] && version_ok "$version" 1.21; then echo "$go"; return 0; fi
    done
    # Debian 12's golang-go is 1.19: use it only to fetch a newer toolchain, which the Go
    # module proxy serves as the module golang.org/toolchain.
    command -v go >/dev/null 2>&1 || apt_install golang-go ca-certificates
    local module="golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$(dpkg --print-architecture)" dir
    log "fetching the Go toolchain $GO_TOOLCHAIN from the Go module proxy ($module)"
    dir="$(GOPATH="$ENGINE_DIR/gopath" GOFLAGS=-modcacherw go mod download -json "$module" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [[ -n "$dir" && -f "$dir/bin/go" ]] || die "could not fetch $module from the Go module proxy"
    rm -rf "$ENGINE_DIR/go"; cp -r "$dir" "$ENGINE_DIR/go"
    chmod -R u+w "$ENGINE_DIR/go"
    find "$ENGINE_DIR/go/bin" "$ENGINE_DIR/go/pkg/tool" -type f -exec chmod +x {} +
    echo "$ENGINE_DIR/go/bin/go"
}

build_compose() { # go install of Compose v2 into .local/docker/bin/docker-compose
    local go target="$ENGINE_DIR/bin/docker-compose"
    go="$(go_binary)"
    log "building Docker Compose $COMPOSE_VERSION with $("$go" version | cut -d' ' -f3) (go install from the Go module proxy, a few minutes)"
    mkdir -p "$ENGINE_DIR/bin" "$ROOT/.local/logs"
    GOPATH="$ENGINE_DIR/gopath" GOCACHE="$ENGINE_DIR/gocache" GOFLAGS="-modcacherw -trimpath" \
        GOBIN="$ENGINE_DIR/gobin" CGO_ENABLED=0 \
        "$go" install -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
        "github.com/docker/compose/v2/cmd@$COMPOSE_VERSION" >"$ROOT/.local/logs/compose-build.log" 2>&1 ||
        { tail -n 20 "$ROOT/.local/logs/compose-build.log" >&2; die "building Docker Compose failed; see .local/logs/compose-build.log"; }
    mv "$ENGINE_DIR/gobin/cmd" "$target"
    # The module and build caches are only needed for a rebuild.
    rm -rf "$ENGINE_DIR/gopath" "$ENGINE_DIR/gocache" "$ENGINE_DIR/gobin"
}

ensure_compose() { # prints the compose command: "docker compose" or the built binary
    local version target="$ENGINE_DIR/bin/docker-compose"
    version="$(plugin_compose_version || true)"
    if [[ -n "$version" ]] && version_ok "$version" "$COMPOSE_MIN_VERSION"; then
        echo "docker compose"; return 0
    fi
    if [[ ! -x "$target" ]] || [[ "$("$target" version --short 2>/dev/null)" != "${COMPOSE_VERSION#v}" ]]; then
        [[ -n "$version" ]] && log "docker compose $version is older than $COMPOSE_MIN_VERSION"
        build_compose
    fi
    echo "$target"
}

compose_available() { # the compose command when it is there already (never builds it)
    local version
    version="$(plugin_compose_version || true)"
    if [[ -n "$version" ]] && version_ok "$version" "$COMPOSE_MIN_VERSION"; then echo "docker compose"
    elif [[ -x "$ENGINE_DIR/bin/docker-compose" ]]; then echo "$ENGINE_DIR/bin/docker-compose"
    else return 1
    fi
}

cmd_env() {
    local host compose
    host="$(engine_host)" || die "no Docker engine answers; start one with: scripts/docker-engine.sh start"
    if [[ -n "$host" ]]; then printf 'export DOCKER_HOST=%q\n' "$host"; fi
    if compose="$(compose_available)"; then printf 'export DOCKER_COMPOSE=%q\n' "$compose"; fi
}

cmd_status() {
    local pid
    if pid="$(our_pid)" && answers "unix://$ENGINE_SOCKET"; then
        echo "engine: started by this project, pid $pid, DOCKER_HOST=unix://$ENGINE_SOCKET," \
            "server $(DOCKER_HOST="unix://$ENGINE_SOCKET" docker version --format '{{.Server.Version}}')"
    elif users_engine; then
        echo "engine: yours (${DOCKER_HOST:-default context}), server $(docker version --format '{{.Server.Version}}');" \
            "never started or stopped here"
    else
        echo "engine: none answers (start one with: scripts/docker-engine.sh start)"
        return 1
    fi
    local version
    version="$(plugin_compose_version || true)"
    if [[ -n "$version" ]]; then echo "compose: docker compose $version (CLI plugin)"
    elif [[ -x "$ENGINE_DIR/bin/docker-compose" ]]; then echo "compose: $("$ENGINE_DIR/bin/docker-compose" version --short) (.local/docker/bin/docker-compose)"
    else echo "compose: not installed yet (scripts/docker-engine.sh start builds it)"
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    engine) cmd_engine ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) die "unknown verb '${1:-}'; use one of: start engine stop status env" ;;
esac
