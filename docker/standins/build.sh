#!/usr/bin/env bash
# docker/standins/build.sh: makes every image the compose stack names available to the engine.
#
#   docker/standins/build.sh          every image of docker-compose*.yaml and of the project's
#                                     Dockerfiles (FROM), plus the bases those stand-ins need;
#                                     those of one depth side by side
#   docker/standins/build.sh TAG...   only these
#
# For each image: already there -> nothing; `docker pull` works -> the official image; the
# pull fails (no registry reachable) -> a local stand-in with the SAME tag is built from the
# folder of this directory named after the image (README.md says what each one implements).
# The version a stand-in installs comes from its tag, so it follows the compose file's pin,
# and its build fails when the package registries cannot provide that version.
# The engine comes from the environment (DOCKER_HOST, as scripts/docker-engine.sh env sets it).
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LOGS="$ROOT/.local/logs/standins"
# Images the project builds itself (docker compose build): never pulled, never stood in for.
OWN_IMAGES='^crypto-pipeline-'

log() { printf '[standins %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'standins: ERROR: %s\n' "$*" >&2; exit 1; }

named_images() { # every image the compose files run and the project's Dockerfiles start FROM
    {
        sed -n 's/^[[:space:]]*image:[[:space:]]*["'\'']\{0,1\}\([^"'\'' #]*\).*/\1/p' "$ROOT"/docker-compose*.yaml
        sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "$ROOT"/*/Dockerfile "$ROOT"/*/*.Dockerfile
    } | grep -Ev "$OWN_IMAGES" | sort -u
}

standin_dir() { # tag -> folder of its stand-in (repository name without the namespace)
    local repository="${1%:*}"
    echo "$HERE/${repository##*/}"
}

tag_version() { # tag -> its version part: postgres:15.18-bookworm -> 15.18
    local tag="${1##*:}"
    echo "${tag%%-*}"
}

present() { docker image inspect "$1" >/dev/null 2>&1; }

ensure_image() { # tag
    local tag="$1" dir base
    present "$tag" && return 0
    if timeout 120 docker pull -q "$tag" >/dev/null 2>&1; then
        log "$tag: pulled (the official image)"
        return 0
    fi
    dir="$(standin_dir "$tag")"
    [[ -d "$dir" ]] || die "$tag cannot be pulled and has no stand-in in ${dir#"$ROOT"/}; pull it on a machine with a registry (docker save | docker load)"
    if [[ -f "$dir/Dockerfile" ]]; then
        # Its own bases first (same rule: pull, else stand-in).
        for base in $(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "$dir/Dockerfile" | sort -u); do
            [[ "$base" == *'$'* ]] && die "${dir#"$ROOT"/}/Dockerfile: FROM must name a tag, not $base"
            ensure_image "$base"
        done
    fi
    build_standin "$tag" "$dir"
}

build_standin() { # tag dir
    local tag="$1" dir="$2" name logfile t0=$SECONDS
    name="$(basename "$dir")"
    logfile="$LOGS/$name.log"
    mkdir -p "$LOGS"
    log "$tag: pull failed (no registry); building the stand-in ${dir#"$ROOT"/} (log ${logfile#"$ROOT"/})"
    if [[ -x "$dir/build.sh" ]]; then
        "$dir/build.sh" "$tag" >"$logfile" 2>&1 || { tail -n 30 "$logfile" >&2; die "building the stand-in for $tag failed; see ${logfile#"$ROOT"/}"; }
    else
        # The legacy builder (no BuildKit needed), context = the repository, so a stand-in can
        # use the project's pom.xml and requirements.lock like the project's own Dockerfiles.
        DOCKER_BUILDKIT=0 docker build --tag "$tag" --label "org.opencontainers.image.description=same-tag stand-in, see docker/standins/README.md" \
            --build-arg "VERSION=$(tag_version "$tag")" -f "$dir/Dockerfile" "$ROOT" >"$logfile" 2>&1 ||
            { tail -n 30 "$logfile" >&2; die "building the stand-in for $tag failed; see ${logfile#"$ROOT"/}"; }
    fi
    present "$tag" || die "the stand-in build for $tag made no image $tag; see ${logfile#"$ROOT"/}"
    log "$tag: stand-in built in $((SECONDS - t0))s"
}

standin_bases() { # tag -> the images its stand-in starts FROM (none for a build.sh one)
    local dockerfile
    dockerfile="$(standin_dir "$1")/Dockerfile"
    [[ -f "$dockerfile" ]] || return 0
    sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "$dockerfile" | sort -u
}

depth() { # tag -> 0 for a base of its own, else 1 + the deepest of its stand-in's bases
    local base deepest=-1 d
    for base in $(standin_bases "$1"); do
        d="$(depth "$base")"
        ((d > deepest)) && deepest=$d
    done
    echo $((deepest + 1))
}

ensure_all() { # tags... : in waves by depth, the images of one wave side by side
    local tag base closure=() pids=() level max=0 rc=0 pid
    local -A depth_of=()
    closure=("$@")
    for ((level = 0; level < ${#closure[@]}; level++)); do  # the bases of bases, too
        for base in $(standin_bases "${closure[level]}"); do closure+=("$base"); done
    done
    for tag in $(printf '%s\n' "${closure[@]}" | sort -u); do
        depth_of[$tag]="$(depth "$tag")"
        ((depth_of[$tag] > max)) && max=${depth_of[$tag]}
    done
    for ((level = 0; level <= max; level++)); do
        pids=()
        for tag in "${!depth_of[@]}"; do
            ((depth_of[$tag] == level)) || continue
            (ensure_image "$tag") &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
        ((rc == 0)) || die "a stand-in build failed (above); nothing after it was built"
    done
}

command -v docker >/dev/null 2>&1 || die "no docker CLI; start the engine first: scripts/docker-engine.sh start"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-default}); start one: scripts/docker-engine.sh start, then eval \"\$(scripts/docker-engine.sh env)\""
if (($#)); then
    for tag in "$@"; do ensure_image "$tag"; done
else
    # Stand-ins of one depth (python, maven, postgres, redis on the Debian base; then airflow
    # and kafka) build at the same time: mostly downloads and unpacking.
    mapfile -t tags < <(named_images)
    ensure_all "${tags[@]}"
fi
