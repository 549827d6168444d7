#!/usr/bin/env bash
# Debian packages for headless MuJoCo rendering (Meta-World): EGL through Mesa (llvmpipe on CPU),
# with OSMesa as the fallback. Installs only what is missing.
set -euo pipefail
pkgs=(libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libosmesa6)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "all present: ${pkgs[*]}"
fi
