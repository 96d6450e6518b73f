#!/usr/bin/env bash
# Installs the system packages a make target needs, with apt (Debian/Ubuntu; as root, or through sudo):
#   bash tools/install_system.sh demo    what mixvfs and `make demo` need (`make system`)
#   bash tools/install_system.sh test    that and what the tests need (`make system-test`, before every test lane)
#   bash tools/install_system.sh bench   that and what the benchmarks compare against (`make bench`, `bench-wan`)
# Idempotent and quiet when all is present. `make` runs it before it creates .venv, because the venv
# itself needs one of them (python3-venv). What it installs:
# demo:
#   python3, python3-venv   the interpreter and `python3 -m venv` (Debian/Ubuntu ship venv's ensurepip apart)
#   fuse3, libfuse3-3       fusermount3 and libfuse 3, which mixvfs mounts with
#   attr                    getfattr: the demo shows a failed track's cause in its extended attribute
# test, also:
#   libfuse2                libfuse 2, the API macFUSE offers: `make test` runs the mount tests on it too
#   rsync, flac             real rsync copies, the reference FLAC decoder
#   nginx-light             the studio team cache (auth_request, slice) on loopback
#   exfatprogs, exfat-fuse  an export onto exFAT (a DJ's USB stick), through a loop device
#   faketime                libfaketime steps a mount daemon's wall clock (clock-step tests)
#   iproute2, gcc, libc6-dev the emulated internet link (network namespaces, tc, the delay line
#                           tools/wan/delayline.c, compiled at the first run)
# bench, also: rclone, curl, aria2 (aria2c), xxhash (xxhsum, check-export's floor), bindfs, and
# pkg-config and libfuse3-dev to build tools/fusefloor.c (bindfs and fusefloor are C FUSE
# filesystems: the floor the daemon's read path is measured against).
# PYTHON (default python3) is the interpreter `make` builds .venv with; if it is apt's and cannot make a
# venv, its own pythonX.Y-venv is installed too (e.g. python3.11-venv for `make demo PYTHON=python3.11`).
set -euo pipefail
PYTHON=${PYTHON:-python3}
target=${1:-demo}
[[ "${MIXVFS_BENCH_DEPS:-0}" == 1 ]] && target=bench  # the older spelling of `bench`
demo=(python3 python3-venv fuse3 libfuse3-3 attr)
tests=(libfuse2 rsync flac nginx-light exfatprogs exfat-fuse faketime iproute2 gcc libc6-dev)
bench=(rclone curl aria2 xxhash bindfs pkg-config libfuse3-dev)
case "$target" in
    demo) want=("${demo[@]}") ;;
    test) want=("${demo[@]}" "${tests[@]}") ;;
    bench) want=("${demo[@]}" "${tests[@]}" "${bench[@]}") ;;
    *) echo "usage: $0 [demo|test|bench] (got: $target)" >&2; exit 2 ;;
esac

if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
    # Not Debian/Ubuntu: say what is needed instead of failing on a missing apt.
    if [[ "$target" == demo ]]; then
        echo "note: no apt here; make sure these are installed: Python >= 3.11 with venv, libfuse 3 (fusermount3)" \
             "and getfattr (attr)" >&2
    else
        echo "note: no apt here; make sure these are installed: Python >= 3.11 with venv, libfuse 3 (fusermount3)," \
             "getfattr (attr), and for the tests libfuse 2, rsync, flac, nginx (with auth_request and slice)," \
             "mkfs.exfat, exfat-fuse, libfaketime, ip and tc (iproute2) and a C compiler" >&2
    fi
    exit 0
fi

need=()
for pkg in "${want[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# A non-default apt Python (python3.11 on Ubuntu 22.04) needs its own -venv package: python3-venv is the default's.
py=$(command -v "$PYTHON" || true)
if [[ -n "$py" && $(readlink -f "$py") == /usr/bin/* ]] && ! "$py" -c 'import ensurepip' 2>/dev/null; then
    need+=("$("$py" -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')")
fi

if (( ${#need[@]} )); then
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    echo "installing system packages for $target: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
