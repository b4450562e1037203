#!/usr/bin/env bash
# docker/standins/debian/build.sh TAG: the Debian 12 base (debian:bookworm-slim) without a
# registry: a minimal root file system made by debootstrap from the host's Debian mirror,
# imported as an image with `docker import`. Every other stand-in starts FROM it.
# Needs root (debootstrap) and Debian's debootstrap package (installed when missing).
set -Eeuo pipefail

TAG="${1:?usage: build.sh TAG (e.g. debian:bookworm-slim)}"
SUITE=bookworm
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
[[ "$(id -u)" == 0 ]] || { echo "debootstrap needs root; or pull $TAG on a machine with a registry" >&2; exit 1; }

if ! command -v debootstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap; }
fi

# The mirror the host's apt uses (a local proxy or mirror keeps working inside the builds).
mirror="$(sed -n 's/^URIs:[[:space:]]*\(http[^[:space:]]*\/debian\)\/\{0,1\}$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
[[ -n "$mirror" ]] || mirror="$(sed -n 's/^deb[[:space:]]\{1,\}\(http[^[:space:]]*\/debian\)\/\{0,1\}[[:space:]].*/\1/p' /etc/apt/sources.list 2>/dev/null | head -1)"
mirror="${mirror:-http://deb.debian.org/debian}"

mkdir -p "$ROOT/.local/docker"
rootfs="$(mktemp -d "$ROOT/.local/docker/rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror"

# apt sources of the image: the release, its updates and its security archive.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# Trust what the host trusts: HTTPS to PyPI and Maven Central inside the builds goes through
# the same network (and any TLS-inspecting proxy) as the host's.
mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/usr/local/share/ca-certificates"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    cp -r /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/"
fi
# Like the official slim image: no apt lists, caches or logs in the image.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "same-tag stand-in for $TAG: debootstrap $SUITE from $mirror (docker/standins/README.md)" \
    - "$TAG"
