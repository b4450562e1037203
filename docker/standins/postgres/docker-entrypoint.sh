#!/usr/bin/env bash
# Entrypoint of the postgres stand-in (docker/standins/README.md). As root it prepares the
# data directory and runs itself again as the postgres user; on an empty data directory it
# runs initdb for POSTGRES_USER with POSTGRES_PASSWORD (POSTGRES_INITDB_ARGS appended),
# creates POSTGRES_DB and runs /docker-entrypoint-initdb.d/*.sql and *.sh in name order on a
# server that listens on the socket only; then it execs the command (postgres ...).
set -Eeuo pipefail

if [[ "${1:-}" == -* ]]; then set -- postgres "$@"; fi
[[ "${1:-}" == postgres ]] || exec "$@"

if [[ "$(id -u)" == 0 ]]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
        echo "postgres: POSTGRES_PASSWORD is not set; the database is not initialised" >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of options
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" ${POSTGRES_INITDB_ARGS:-}
    rm -f "$pwfile"
    # Inside the container: local and loopback connections trusted (initdb's default), every
    # other address with a password; the server listens on all the container's addresses.
    printf '\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
    psql=(psql -v ON_ERROR_STOP=1 -X -q --username "$POSTGRES_USER" --no-password)
    if [[ "$POSTGRES_DB" != postgres ]]; then
        "${psql[@]}" --dbname postgres -v db="$POSTGRES_DB" <<<'create database :"db";'
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sql) echo "postgres: running $script"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$script" ;;
            *.sh) echo "postgres: running $script"; bash "$script" ;;
            *) [[ -e "$script" ]] && echo "postgres: ignoring $script" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "postgres: init process complete; ready for start up"
fi

exec "$@"
