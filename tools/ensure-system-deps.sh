#!/usr/bin/env bash
# Install the named Debian packages that are missing (as root, with apt-get), or say what is missing.
set -euo pipefail
missing=()
for pkg in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
# node/npm may come from elsewhere than Debian (nodesource, nvm): a working binary is enough.
if command -v node >/dev/null && command -v npm >/dev/null; then
    filtered=()
    for pkg in "${missing[@]:-}"; do
        [[ -z "$pkg" || "$pkg" == nodejs || "$pkg" == npm ]] || filtered+=("$pkg")
    done
    missing=("${filtered[@]:-}")
fi
[[ -z "${missing[*]:-}" ]] && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "sendguard: missing system packages: ${missing[*]}" >&2
    echo "sendguard: install them with: sudo apt-get install ${missing[*]}" >&2
    exit 0
fi
echo "sendguard: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
