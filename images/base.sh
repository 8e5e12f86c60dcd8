#!/usr/bin/env bash
# Build the local base image every images/ Dockerfile starts FROM.
#
# 1. If the tag already exists: nothing to do (seconds).
# 2. Try `docker pull debian:bookworm-slim` and install the packages in a Dockerfile (needs a registry
#    and network inside the build: works on an ordinary machine).
# 3. Otherwise (no registry, as on CI here): debootstrap a minbase bookworm root file system on the host
#    with the packages included, tar it (cached under images/.cache/, keyed by the package list) and
#    `docker import` it under the tag.
# 4. Either way, last: one layer with the host's package-index trust (see host_trust), so that pip inside
#    `docker build` (images/Dockerfile builds the project there) trusts the index as the host does.
#
# Environment: BASE_IMAGE (tag, default connlib-relays/base:bookworm), DEBIAN_MIRROR (default: the first
# Debian mirror of the host's own apt configuration that serves the suite), BASE_FORCE=1 to rebuild,
# BASE_NO_PULL=1 to skip the registry attempt, BASE_CACHE (default images/.cache) for the tarball,
# BASE_CHECK_ONLY=1 to change nothing: exit 0 when the tag is up to date, 3 otherwise (harness/images.py
# asks that before it waits for the host's build lock).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${BASE_CACHE:-$here/.cache}"
tag="${BASE_IMAGE:-connlib-relays/base:bookworm}"
suite=bookworm

# The Debian mirror this host's apt uses for $suite: deb822 stanzas (*.sources: URIs/Suites/Types,
# Enabled: no skipped) and one-line entries (*.list, sources.list). This script names no host itself.
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r "$f" ]] || continue
    awk -v suite="$suite" '
      function flush() { if (deb && on && uri != "" && (" " suites " ") ~ (" " suite " ")) { print uri; found = 1; exit } }
      /^[[:space:]]*$/ { flush(); deb = 0; on = 1; uri = ""; suites = ""; next }
      /^[[:space:]]*#/ { next }
      tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" { suites = ""; for (i = 2; i <= NF; i++) suites = suites " " $i }
      tolower($1) == "enabled:" { on = (tolower($2) != "no") }
      BEGIN { on = 1 }
      END { if (!found) flush() }
    ' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r "$f" ]] || continue
    # deb [options] URI suite components...
    sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2 }'
  done
}
mirror="${DEBIAN_MIRROR:-$(host_mirror | head -n1)}"

# The host's own pip settings that decide how the package index is reached: its CA bundle (a host behind
# a TLS-inspecting proxy trusts that proxy's CA; the debootstrapped system bundle does not) and index
# URLs, from `pip config` (PIP_* environment variables first). This script names no host itself.
pip_setting() {
  local env_name="$1" key="$2" value="${!1:-}"
  [[ -n "$value" ]] || value="$(python3 -m pip config get "global.$key" 2>/dev/null || true)"
  printf '%s' "$value"
}
ca_bundle="$(pip_setting PIP_CERT cert)"; ca_bundle="${ca_bundle:-/etc/ssl/certs/ca-certificates.crt}"
index_url="$(pip_setting PIP_INDEX_URL index-url)"
extra_index_url="$(pip_setting PIP_EXTRA_INDEX_URL extra-index-url)"
trusted_host="$(pip_setting PIP_TRUSTED_HOST trusted-host)"
trust_key="$( { [[ -r "$ca_bundle" ]] && cat "$ca_bundle"; printf '|%s|%s|%s' "$index_url" "$extra_index_url" "$trusted_host"; } \
  | sha256sum | cut -c1-12)"
# Everything the images need at run time; no apt inside any Docker build.
packages=(
  ca-certificates coturn python3 python3-venv iptables iproute2 tini procps iputils-ping
)
pkglist="$(printf '%s,' "${packages[@]}")"; pkglist="${pkglist%,}"
rootfs_key="$(printf '%s|%s|%s' "$suite" "$pkglist" "v1" | sha256sum | cut -c1-12)"
tarball="$cache/base-$suite-$rootfs_key.tar"
key="$rootfs_key-$trust_key"  # the image's: a new host CA or index rebuilds only the last layer
label="org.connlib-relays.project=connlib-relays"

log() { printf 'base.sh: %s\n' "$*" >&2; }

# The last layer: $tag-os plus the host's CA bundle and index settings as pip's (PIP_* variables of the
# image, so that they hold in every build stage and nowhere else is configured).
add_trust() {
  local ctx envs="PIP_CERT=/etc/connlib-relays/index-ca.crt"
  ctx="$(mktemp -d)"
  if [[ -r "$ca_bundle" ]]; then cp "$ca_bundle" "$ctx/index-ca.crt"; else cp /dev/null "$ctx/index-ca.crt"; envs=""; fi
  [[ -n "$index_url" ]] && envs+=" PIP_INDEX_URL=$index_url"
  [[ -n "$extra_index_url" ]] && envs+=" PIP_EXTRA_INDEX_URL=$extra_index_url"
  [[ -n "$trusted_host" ]] && envs+=" PIP_TRUSTED_HOST=$trusted_host"
  {
    printf 'FROM %s\nCOPY index-ca.crt /etc/connlib-relays/index-ca.crt\n' "$tag-os"
    [[ -n "${envs// /}" ]] && printf 'ENV %s\n' "$envs"
  } >"$ctx/Dockerfile"
  docker build -q -t "$tag" --label "$label" --label "org.connlib-relays.base-key=$key" "$ctx" >/dev/null 2>"$ctx/log" \
    || { cat "$ctx/log" >&2; rm -rf "$ctx"; log "adding the host's index trust to $tag failed"; exit 1; }
  rm -rf "$ctx"
  log "$tag: the host's CA bundle ($ca_bundle)${index_url:+ and index $index_url} for pip"
}

exists=0
if [[ "${BASE_FORCE:-0}" != 1 ]] && docker image inspect "$tag" >/dev/null 2>&1; then
  exists=1
  have="$(docker image inspect -f '{{ index .Config.Labels "org.connlib-relays.base-key" }}' "$tag" 2>/dev/null || true)"
  if [[ "$have" == "$key" ]]; then
    log "$tag is up to date ($key)"; exit 0
  fi
fi
if [[ "${BASE_CHECK_ONLY:-0}" == 1 ]]; then
  exit 3
fi
if [[ "$exists" == 1 ]]; then
  if [[ "${have%-*}" == "$rootfs_key" ]] && docker image inspect "$tag-os" >/dev/null 2>&1; then
    log "$tag: the host's index trust changed"; add_trust; exit 0
  fi
  log "$tag has key '$have', want $key: rebuilding"
fi

start=$(date +%s)
# --- 2. registry path ---------------------------------------------------------------------------------
if [[ "${BASE_NO_PULL:-0}" != 1 ]] && timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
  log "pulled debian:bookworm-slim; installing packages in a build"
  docker build -t "$tag-os" --label "$label" - <<DOCKERFILE
FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${packages[*]} \
 && rm -rf /var/lib/apt/lists/*
DOCKERFILE
  log "built $tag-os from debian:bookworm-slim in $(( $(date +%s) - start ))s"
  add_trust
  exit 0
fi

# --- 3. debootstrap path -------------------------------------------------------------------------------
if [[ ! -s "$tarball" ]]; then
  [[ -n "$mirror" ]] || { log "no Debian mirror for $suite in /etc/apt/sources.list{,.d/*}: set DEBIAN_MIRROR"; exit 1; }
  command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
  [[ "$(id -u)" == 0 ]] || { log "debootstrap needs root"; exit 1; }
  mkdir -p "$cache"
  rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
  trap 'umount -l "$rootfs"/proc "$rootfs"/sys "$rootfs"/dev/pts 2>/dev/null || true; rm -rf "$rootfs"' EXIT
  log "debootstrap $suite (minbase + ${#packages[@]} packages) from $mirror into $rootfs"
  debootstrap --variant=minbase --include="$pkglist" "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -30 "$cache/debootstrap.log" >&2; exit 1; }
  # Slim down: no package caches, docs or man pages; the image never runs apt.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
         "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
  printf 'deb %s %s main\n' "$mirror" "$suite" >"$rootfs/etc/apt/sources.list"
  : >"$rootfs/etc/hostname"; : >"$rootfs/etc/resolv.conf"
  tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  log "debootstrap done in $(( $(date +%s) - start ))s: $(du -h "$tarball" | cut -f1) $tarball"
else
  log "reusing cached root file system $tarball"
fi
t0=$(date +%s)
docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  -c 'CMD ["/bin/bash"]' \
  -c "LABEL $label" \
  "$tarball" "$tag-os" >/dev/null
log "imported $tag-os in $(( $(date +%s) - t0 ))s"
add_trust
log "total $(( $(date +%s) - start ))s"
