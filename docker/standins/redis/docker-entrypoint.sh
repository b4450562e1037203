#!/usr/bin/env bash
# Entrypoint of the redis stand-in (docker/standins/README.md): options or a config file as
# the first argument mean redis-server; as root it hands /data to the redis user and runs
# itself again as that user; without a config file, protected mode is off (the container's
# network is the boundary, as in the official image).
set -Eeuo pipefail

if [[ "${1:-}" == -* || "${1:-}" == *.conf ]]; then set -- redis-server "$@"; fi
[[ "${1:-}" == redis-server ]] || exec "$@"

if [[ "$(id -u)" == 0 ]]; then
    find /data \! -user redis -exec chown redis:redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [[ "${2:-}" != *.conf ]]; then
    shift
    set -- redis-server --protected-mode no "$@"
fi
umask 0077
exec "$@"
