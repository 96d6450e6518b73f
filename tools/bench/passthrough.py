"""The FUSE passthrough cases of ``make bench`` (``--only passthrough``).

All on the libfuse >= 3.17 that tools/build_libfuse.sh builds (loaded with FUSE_LIBRARY_PATH), as root, on the
main data set with a full cache, each run a fresh mount, alternating in the same run:

* native ``cp -r`` of the source files (the floor of floors);
* mixvfs with passthrough on (``--passthrough auto``): the target is <= 1.3 × native ``cp``; then a re-export in
  the same mount (<= 1.2 ×). Every run checks that passthrough was on and no read reached the daemon;
* mixvfs with passthrough off, against libfuse's own ``passthrough_hp`` example from the same build with
  ``--nopassthrough`` over the same bytes: the C FUSE floor of the warm path without passthrough (<= 1.15);
* ``passthrough_hp`` with passthrough, for reference.

Copies go to tmpfs (/dev/shm) when it has room, every one after ``sync`` (see :func:`scratch`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tools.bench.cases import Bench
from tools.bench.common import REPO, DataSet, Row, copy_tree, files_under, mixvfs_mount, read_through, reset


def build_libfuse() -> tuple[Path | None, str]:
    """(the libfuse >= 3.17 library, "") or (None, why not)."""
    done = subprocess.run(["bash", str(REPO / "tools" / "build_libfuse.sh")], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["tools/build_libfuse.sh failed"])[-1]
    return Path(done.stdout.strip()), ""


@contextlib.contextmanager
def library(lib: Path) -> Iterator[None]:
    """mixvfs commands run from here (and their daemons) load ``lib``."""
    old = os.environ.get("FUSE_LIBRARY_PATH")
    os.environ["FUSE_LIBRARY_PATH"] = str(lib)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FUSE_LIBRARY_PATH", None)
        else:
            os.environ["FUSE_LIBRARY_PATH"] = old


@contextlib.contextmanager
def passthrough_hp(floor: Path, source: Path, mnt: Path, *, passthrough: bool) -> Iterator[Path]:
    """libfuse's C example, mirroring ``source`` at ``mnt`` (it returns once mounted, as a daemon)."""
    mnt.mkdir(parents=True, exist_ok=True)
    cmd = [str(floor), *([] if passthrough else ["--nopassthrough"]), str(source), str(mnt)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:500]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)


def scratch(work: Path, size: int) -> Path:
    """Where the copies go: tmpfs when it has room. On disk, the writeback of any gigabyte written on the
    machine (this bench's previous copy, other work) throttled single copies 2-4 × at random with the CPUs
    idle (0.4 s or 1.3 s for the same passthrough copy), which hid the read side these cases measure."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 3 * size:
        return Path(tempfile.mkdtemp(prefix="mixvfs-bench-", dir=shm))
    return work


def copy_settled(src: Path, out: Path) -> float:
    """``cp -r`` timed after ``sync``: no dirty pages of an earlier copy are written back during this one."""
    reset(out)
    os.sync()
    return copy_tree(src, out)


def passthrough_state(mnt: Path) -> dict[str, object]:
    return dict(json.loads(os.getxattr(mnt, "user.mixvfs.passthrough")))


def case_passthrough(bench: Bench, data: DataSet) -> None:
    if os.geteuid() != 0:
        bench.say("passthrough: skipped (needs root: the kernel lets only CAP_SYS_ADMIN name backing files)")
        return
    lib, why = build_libfuse()
    if lib is None:
        bench.say(f"passthrough: skipped (no libfuse >= 3.17: {why})")
        return
    base = scratch(bench.work, sum(p.stat().st_size for p in data.files))
    try:
        measure(bench, data, lib, base / "out")
    finally:
        if base != bench.work:
            shutil.rmtree(base, ignore_errors=True)


def measure(bench: Bench, data: DataSet, lib: Path, out: Path) -> None:
    floor = lib.parent.parent / "bin" / "passthrough_hp"
    work = bench.work
    cache = reset(work / "cache-passthrough")
    bench.say(f"warm export of {data.name} on libfuse {lib.resolve().name} into {out.parent}: native cp / mixvfs "
              f"passthrough on (+ re-export) / passthrough_hp with passthrough / mixvfs passthrough off / "
              f"passthrough_hp --nopassthrough, {bench.runs} runs")
    with library(lib):
        bench.fill_cache(data, cache)
        blobs = files_under(cache / "blobs")
        native: list[float] = []
        on: list[float] = []
        again: list[float] = []
        c_on: list[float] = []
        off: list[float] = []
        c_off: list[float] = []
        for _ in range(bench.runs):
            read_through(data.files)
            native.append(copy_settled(data.folder, out))
            read_through(blobs)
            with mixvfs_mount(data.session, work / "mnt", cache, work) as mount:
                on.append(copy_settled(mount.path, out))
                again.append(copy_settled(mount.path, out))
                state = passthrough_state(mount.path)
            if state.get("state") != "on" or state.get("daemon_reads") != 0:
                raise RuntimeError(f"passthrough was not on for every read: {state}")
            read_through(data.files)
            with passthrough_hp(floor, data.folder, work / "cmnt", passthrough=True) as mnt:
                c_on.append(copy_settled(mnt, out))
            read_through(blobs)
            with mixvfs_mount(data.session, work / "mnt", cache, work, "--passthrough", "off") as mount:
                off.append(copy_settled(mount.path, out))
            read_through(data.files)
            with passthrough_hp(floor, data.folder, work / "cmnt", passthrough=False) as mnt:
                c_off.append(copy_settled(mnt, out))
            bench.say(f"  cp {native[-1]:.3f} s; passthrough: mixvfs {on[-1]:.3f} s (re-export {again[-1]:.3f} s), "
                      f"passthrough_hp {c_on[-1]:.3f} s; without: mixvfs {off[-1]:.3f} s, "
                      f"passthrough_hp {c_off[-1]:.3f} s")
    name = data.name
    bench.rows += [
        Row(f"warm export {name}, passthrough on", "s", "mixvfs", on, "native cp", native, "ratio <= 1.3"),
        Row(f"re-export {name}, passthrough on", "s", "mixvfs", again, "native cp", native, "ratio <= 1.2"),
        Row("  passthrough on ÷ C floor with passthrough", "s", "mixvfs", on, "passthrough_hp", c_on),
        Row(f"warm export {name}, passthrough off (3.17)", "s", "mixvfs", off, "passthrough_hp --nopt", c_off,
            "ratio <= 1.15"),
        Row("  C floor without passthrough ÷ native cp", "s", "passthrough_hp", c_off, "native cp", native),
    ]
