#!/usr/bin/env bash
# Builds libfuse >= 3.17 (FUSE passthrough for the high-level API) from Debian 13's own `fuse3` source package
# into a private prefix, for the passthrough test lane and the benchmark's C FUSE floor. The system's libfuse
# is left alone (Debian 12 ships 3.14); mixvfs loads this one only when told: FUSE_LIBRARY_PATH=<printed path>.
#
#   bash tools/build_libfuse.sh            # prints the library's path; instant when already built
#   LIBFUSE_PREFIX=/some/dir bash tools/build_libfuse.sh
#
# What it does (each step skipped when already done):
#   1. a `deb-src` entry for trixie (Debian 13), sources only, on the Debian mirror this system already uses:
#      the system keeps its own release's binaries (no `deb` line is added);
#   2. build tools with apt: meson, ninja-build, pkg-config, gcc, g++ (libfuse's passthrough_hp example is
#      C++), dpkg-dev (`apt-get source` unpacks with dpkg-source);
#   3. `apt-get source fuse3/trixie` into $LIBFUSE_PREFIX/src/;
#   4. meson + ninja, without fusermount and udev rules (`-Dutils=false`: a private build installs nothing
#      setuid; the system's fusermount3 still mounts for non-root users), into $LIBFUSE_PREFIX (default
#      build/libfuse-3.17/ in the checkout), with libfuse's own `passthrough_hp` example copied to its bin/ (the
#      benchmark's C FUSE floor from the same build).
# Exit status non-zero, with one line saying why, when it cannot (no apt, no root and no sudo, no network).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${LIBFUSE_PREFIX:-$here/build/libfuse-3.17}
srcroot=$prefix/src  # the source package and its build tree, beside what is installed
lib=$prefix/lib/libfuse3.so  # the soname is libfuse3.so.4 from 3.17 on
floor=$prefix/bin/passthrough_hp
stamp=$prefix/.built
MIN_MINOR=17  # 3.17.1: the first libfuse whose high-level API passes fuse_file_info.backing_id to the kernel

say() { echo "build_libfuse: $*" >&2; }
die() { say "$*"; exit 1; }

if [[ -f $stamp && -e $lib && -x $floor ]]; then
    echo "$lib"
    exit 0
fi

command -v apt-get >/dev/null && command -v dpkg >/dev/null \
    || die "no apt here: install libfuse >= 3.$MIN_MINOR yourself and set FUSE_LIBRARY_PATH to its libfuse3.so.3"
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "needs root (or sudo) for apt"
    SUDO=sudo
else
    SUDO=
fi

# 1. trixie sources, on the system's own Debian mirror.
src_list=/etc/apt/sources.list.d/mixvfs-trixie-src.sources
updated=0
if [[ ! -f $src_list ]]; then
    mirror=$(grep -hoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
             | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
    if [[ -z $mirror ]]; then
        mirror=$(grep -hoE '^deb[[:space:]]+\S+/debian/?[[:space:]]' /etc/apt/sources.list 2>/dev/null \
                 | awk '{print $2}' | head -n1 || true)
    fi
    [[ -n $mirror ]] || die "found no Debian mirror in the apt sources to add trixie's deb-src on"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    say "adding trixie deb-src (sources only) on $mirror"
    $SUDO tee "$src_list" >/dev/null <<EOF
# Added by mixvfs tools/build_libfuse.sh: Debian 13 *sources* only, to build libfuse >= 3.17 privately.
Types: deb-src
URIs: $mirror
Suites: trixie
Components: main
Signed-By: $keyring
EOF
    $SUDO apt-get update -qq
    updated=1
fi

# 2. build tools.
need=()
for pkg in meson ninja-build pkg-config gcc g++ dpkg-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if (( ${#need[@]} )); then
    say "installing ${need[*]}"
    (( updated )) || { $SUDO apt-get update -qq; updated=1; }
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 3. the source package (unpacked once).
mkdir -p "$srcroot"
src=$(find "$srcroot" -mindepth 1 -maxdepth 1 -type d -name 'fuse3-3.*' | sort -V | tail -n1)
if [[ -z $src ]]; then
    say "fetching the fuse3 source package from trixie"
    if ! (cd "$srcroot" && apt-get source -qq fuse3/trixie >/dev/null 2>&1); then
        (( updated )) || $SUDO apt-get update -qq  # a stale list may name a version the mirror dropped
        (cd "$srcroot" && apt-get source -qq fuse3/trixie >/dev/null) || die "apt-get source fuse3/trixie failed"
    fi
    src=$(find "$srcroot" -mindepth 1 -maxdepth 1 -type d -name 'fuse3-3.*' | sort -V | tail -n1)
fi
[[ -n $src && -f $src/meson.build ]] || die "no unpacked fuse3 source under $srcroot"
version=$(grep -m1 -oE "version *: *'3\.[0-9]+\.[0-9]+'" "$src/meson.build" | grep -oE '3\.[0-9]+\.[0-9]+')
minor=$(echo "$version" | cut -d. -f2)
(( minor >= MIN_MINOR )) || die "the fuse3 source is $version; need 3.$MIN_MINOR or newer"

# 4. meson/ninja into the private prefix.
say "building libfuse $version into $prefix"
builddir=$src/build-mixvfs
buildlog=$srcroot/build.log
if [[ ! -f $builddir/build.ninja ]]; then
    meson setup "$builddir" "$src" --prefix="$prefix" --libdir=lib --buildtype=release \
        -Dutils=false -Dexamples=true -Dtests=false -Ddisable-mtab=true >"$buildlog" 2>&1 \
        || { tail -n 20 "$buildlog" >&2; die "meson setup failed (see $builddir/meson-logs/meson-log.txt)"; }
fi
{ ninja -C "$builddir" && ninja -C "$builddir" install; } >>"$buildlog" 2>&1 \
    || { tail -n 20 "$buildlog" >&2; die "ninja failed in $builddir (log: $buildlog)"; }
[[ -x $builddir/example/passthrough_hp ]] || die "libfuse's passthrough_hp example was not built (g++ missing?)"
mkdir -p "$prefix/bin"
cp "$builddir/example/passthrough_hp" "$floor"
[[ -e $lib ]] || die "no $lib after the install"
echo "$version" > "$stamp"
echo "$lib"
