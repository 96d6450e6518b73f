#!/usr/bin/env bash
# Installs the system packages mixvfs needs (Debian/Ubuntu). Idempotent and quiet when all is present.
set -euo pipefail
need=()
for pkg in fuse3 libfuse2 libfuse3-3 rsync attr flac; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [[ "${MIXVFS_BENCH_DEPS:-0}" == 1 ]]; then
    for pkg in nginx-light rclone curl; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
fi
if (( ${#need[@]} )); then
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    echo "installing system packages: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
