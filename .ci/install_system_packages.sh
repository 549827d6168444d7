#!/usr/bin/env bash
# Debian packages for headless rendering on a CPU, installing only what is missing:
# - MuJoCo (Meta-World, LIBERO): EGL through Mesa (llvmpipe), with OSMesa as the fallback;
# - SAPIEN (ManiSkill3): a Vulkan device, Mesa's lavapipe. SAPIEN 3.0 accepts lavapipe only from Mesa 25 on
#   (Mesa 22.3, Debian 12's own, fails with 'Failed to find a supported physical device "cpu"'), so on
#   Debian 12 every installed Mesa package moves to bookworm-backports' Mesa 25 together (one Mesa for EGL,
#   GL and Vulkan: mixed versions do not load). A system whose own Mesa is already >= 25 is left alone.
set -euo pipefail
MESA_MIN_MAJOR=25
export DEBIAN_FRONTEND=noninteractive

# mesa-vulkan-drivers comes below, from the Mesa that suits SAPIEN (installing Debian 12's first would be a
# download for nothing).
pkgs=(libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libvulkan1)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "all present: ${pkgs[*]}"
fi

# The installed Mesa (libegl-mesa0's version, e.g. 22.3.6-1+deb12u2 -> 22), not the release's name: a newer
# system with a stock Mesa >= 25 needs nothing from backports.
mesa_major() {
    dpkg-query -W -f='${Version}' "$1" 2>/dev/null | sed -E 's/^([0-9]+:)?([0-9]+).*/\2/'
}
egl_major="$(mesa_major libegl-mesa0)"
vk_major="$(mesa_major mesa-vulkan-drivers)"
if [ "${egl_major:-0}" -ge "$MESA_MIN_MAJOR" ]; then
    if [ -z "$vk_major" ]; then  # the system's own Mesa is new enough: its Vulkan driver is too
        echo "installing: mesa-vulkan-drivers"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers
    fi
    echo "Mesa $egl_major (>= $MESA_MIN_MAJOR): Vulkan through lavapipe is usable"
    exit 0
fi
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
if [ "$codename" != "bookworm" ]; then
    echo "warning: Mesa ${egl_major:-none} < $MESA_MIN_MAJOR and no known source of a newer one for" \
        "'${codename:-unknown}': ManiSkill3 (SAPIEN) will not find a Vulkan device; install" \
        "mesa-vulkan-drivers >= $MESA_MIN_MAJOR" >&2
    exit 0
fi
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "adding the bookworm-backports apt source"
    tmp="$(mktemp /etc/apt/sources.list.d/.backports.XXXXXX)"
    cat >"$tmp" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    chmod 644 "$tmp"
    mv "$tmp" /etc/apt/sources.list.d/bookworm-backports.sources
fi
apt-get update -qq
# Every installed binary package of the mesa source, plus the Vulkan driver: all from one Mesa. Packages
# Mesa 25 no longer builds (libglapi-mesa, libgl1-mesa-glx) have no backport and stay as they are.
mesa_pkgs=(mesa-vulkan-drivers)
while read -r pkg src; do
    [ "$src" = "mesa" ] || continue
    pkg="${pkg%%:*}"
    if apt-cache madison "$pkg" | grep -q "bookworm-backports"; then
        mesa_pkgs+=("$pkg")
    fi
done < <(dpkg-query -W -f='${binary:Package} ${source:Package}\n')
echo "Mesa ${egl_major:-none} -> bookworm-backports: ${mesa_pkgs[*]}"
apt-get install -y -qq --no-install-recommends -t bookworm-backports "${mesa_pkgs[@]}"
echo "Mesa now $(mesa_major libegl-mesa0) (EGL) / $(mesa_major mesa-vulkan-drivers) (Vulkan)"
