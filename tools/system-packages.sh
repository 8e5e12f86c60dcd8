#!/usr/bin/env bash
# The system packages the test suite needs, installed when missing (Debian/Ubuntu).
#
#   turnserver   (coturn)       the integration tests run real coturn processes
#   debootstrap  (debootstrap)  the Docker base image is bootstrapped locally (no image registry)
#   chromium     (chromium)     the dashboard tests' browser (Playwright drives Debian's build)
#
# Prints what it installs; does nothing when everything is there. Needs root or sudo to install;
# without either it names the missing packages and exits 1. SKIP_SYSTEM_PACKAGES=1 skips the check.
set -euo pipefail
[ "${SKIP_SYSTEM_PACKAGES:-0}" = 1 ] && exit 0

declare -A needs=([turnserver]=coturn [debootstrap]=debootstrap [chromium]=chromium)
missing=()
for command in "${!needs[@]}"; do
  command -v "$command" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$command" >/dev/null 2>&1 \
    || missing+=("${needs[$command]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-packages: missing ${missing[*]}, and this is not a Debian/Ubuntu machine: install them by hand" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "system-packages: missing ${missing[*]}; run as root or with passwordless sudo, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "system-packages: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system-packages: installed ${missing[*]}"
