"""The export measured against its floors, each baseline measured in the same run.

Cases (``python -m tools.bench --only pertrack,floors,fuse2``):

* ``pertrack`` — 192 × 1 MiB cold (``--quick``: 64): mixvfs ``cp -r`` against ONE ``curl`` process fetching every
  URL (``-o`` each), which reuses one keep-alive connection: what a track costs beyond its bytes (4 MiB tracks hid
  most of that cost behind their bytes); and, the same runs, the download path alone: a fresh mount on an empty
  cache that nobody reads, from the mount's return until its report counts every track cached (its prefetch
  downloads, verifies and commits each), with the daemon's CPU time meanwhile — the least a cold export's
  daemon does, whatever the read path (FUSE passthrough included);
* ``floors`` — per round, alternately: the download floor (that same one-``curl`` fetch), native ``cp`` of the
  same files, two C FUSE floors over the same files (from the page cache): ``tools/fusefloor.c`` (the least a
  libfuse 3 high-level filesystem does: built here with ``cc``, same libfuse, request size and threads as the
  daemon) and ``bindfs`` (Debian 12 builds it on libfuse 2: 128 KiB requests), mixvfs's warm export through a
  fresh mount of a full cache, the re-export in that mount, and the cold export (empty cache). Rows: cold ÷
  max(download floor, warm export) — the download hidden behind the copy —, warm ÷ the C floor of the same
  libfuse, re-export ÷ native ``cp``;
* ``fuse2`` — the cold and warm rows again with the daemon on libfuse 2 (``FUSE_LIBRARY_NAME=fuse``: the API
  macFUSE offers), against the same floors.

Ratios are of medians; each row also keeps the per-round ratios (``extra.round_ratios``), which hold better
than the medians when the machine's speed drifts. Nothing here is a test: no figure fails anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from mixvfs.vfs.adapter.libfuse import raise_readahead
from tools.bench.cases import Bench
from tools.bench.common import (
    MIXVFS,
    REPO,
    DataSet,
    Row,
    copy_tree,
    files_under,
    read_through,
    reset,
    sh,
)

# bindfs on Debian 12 is built on libfuse 2 (128 KiB requests); multithreaded like the mixvfs daemon.
BINDFS_ARGS = ["--multithreaded", "-r", "-o", "ro"]
FUSEFLOOR_C = REPO / "tools" / "fusefloor.c"


def build_fusefloor(work: Path) -> Path | None:
    """Compile tools/fusefloor.c against the installed libfuse 3 (None, and why, when it cannot be built)."""
    if not (shutil.which("cc") and shutil.which("pkg-config")):
        print("  (no C floor: cc or pkg-config missing; `bash tools/install_system.sh bench`)")
        return None
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True,
                           check=False)
    binary = work / "fusefloor"
    built = flags.returncode == 0 and subprocess.run(
        ["cc", "-O2", "-Wall", "-o", str(binary), str(FUSEFLOOR_C), *flags.stdout.split()],
        capture_output=True, text=True, check=False).returncode == 0
    if not built:
        print("  (no C floor: tools/fusefloor.c did not build; libfuse3-dev missing?)")
        return None
    return binary


def libfuse_of(pid: int) -> str:
    """Which libfuse a process has mapped (``libfuse.so.2`` / ``libfuse3.so.3``), from /proc/PID/maps."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as handle:
        for line in handle:
            name = line.rsplit("/", 1)[-1].strip()
            if name.startswith("libfuse"):
                return name
    return "?"


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unmount(path: Path) -> None:
    for tool in ("fusermount3", "fusermount"):
        if shutil.which(tool) and subprocess.run([tool, "-u", str(path)], capture_output=True,
                                                 check=False).returncode == 0:
            return
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


class Floors:
    """The floors' rows, on top of :class:`tools.bench.cases.Bench` (its machine, server and helpers)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.bindfs = shutil.which("bindfs")
        self.fusefloor = build_fusefloor(bench.work)

    # -- helpers --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def mount(self, data: DataSet, cache: Path, library: str | None) -> Iterator[Path]:
        """A mixvfs mount of ``data`` on ``library`` (None: the default, libfuse 3)."""
        env = dict(os.environ)
        if library is not None:
            env["FUSE_LIBRARY_NAME"] = library
        mnt = self.bench.work / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        sh([MIXVFS, "mount", str(data.session), str(mnt), "--cache-dir", str(cache), "--report",
            str(self.bench.work / "report.json"), "--log-file", str(self.bench.work / "mixvfs.log")], env=env)
        pid = int(os.getxattr(mnt, "user.mixvfs.pid"))
        loaded = libfuse_of(pid)
        want = {"fuse": "libfuse.so.2", "fuse3": "libfuse3.so"}.get(library or "fuse3", "")
        try:
            if not loaded.startswith(want):
                raise RuntimeError(f"the daemon runs on {loaded}, not on {want}")
            yield mnt
        finally:
            sh([MIXVFS, "unmount", str(mnt)])

    @contextlib.contextmanager
    def bindfs_mount(self, source: Path) -> Iterator[Path]:
        assert self.bindfs is not None
        mnt = self.bench.work / "bmnt"
        mnt.mkdir(parents=True, exist_ok=True)
        sh([self.bindfs, *BINDFS_ARGS, str(source), str(mnt)])
        raise_readahead(os.path.realpath(mnt))  # the same 4 MiB as the mixvfs mount: only the daemon differs
        try:
            yield mnt
        finally:
            unmount(mnt)

    @contextlib.contextmanager
    def fusefloor_mount(self, source: Path) -> Iterator[Path]:
        assert self.fusefloor is not None
        mnt = self.bench.work / "fmnt"
        mnt.mkdir(parents=True, exist_ok=True)
        sh([str(self.fusefloor), str(source), str(mnt), "-o", "ro"])
        raise_readahead(os.path.realpath(mnt))
        try:
            yield mnt
        finally:
            unmount(mnt)

    def cold_export(self, data: DataSet, library: str | None = None) -> float:
        cache = reset(self.bench.work / "cache-cold")
        self.bench.cold(data)
        with self.mount(data, cache, library) as mnt:
            return copy_tree(mnt, self.bench.work / "out")

    # -- 192 × 1 MiB: the cost of a track --------------------------------------------------------------

    def prefetch_alone(self, data: DataSet) -> tuple[float, float]:
        """(seconds, daemon CPU seconds) from a fresh mount's return on an empty cache until its report counts
        every track cached, with no reader: the download path alone. Watched through the report file, not the
        mount: a question to the mount is browsing it, for which prefetch steps aside."""
        cache = reset(self.bench.work / "cache-cold")
        report = self.bench.work / "report.json"
        self.bench.cold(data)
        with self.mount(data, cache, None) as mnt:
            pid = int(os.getxattr(mnt, "user.mixvfs.pid"))
            began, cpu = time.perf_counter(), cpu_seconds(pid)
            deadline = began + 120  # a hang guard: the whole set downloads in about a second on loopback
            while True:
                with contextlib.suppress(OSError, ValueError):  # between two writes of the report
                    statuses = [t["status"] for t in json.loads(report.read_text())["tracks"]]
                    if statuses.count("cached") >= len(data.files):
                        break
                    if "failed" in statuses or "missing" in statuses:
                        raise RuntimeError(f"prefetch did not cache every track: {report}")
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"prefetch did not cache every track in 120 s: {report}")
                time.sleep(0.005)
            return time.perf_counter() - began, cpu_seconds(pid) - cpu

    def case_pertrack(self, data: DataSet, library: str | None = None) -> None:
        bench = self.bench
        lane = "" if library is None else " [libfuse 2]"
        bench.say(f"per-track cost, {data.name} cold{lane}: one curl process (keep-alive) / mixvfs, {bench.runs} runs")
        curl, mix, alone, cpu = [], [], [], []
        for i in range(bench.runs):
            bench.cold(data)
            curl.append(bench.curl_all(data, bench.work / "out"))
            if library is None:
                _, seconds, _ = bench.mixvfs_cold(data, profile="pertrack-cold" if i == 0 else "")
                took, used = self.prefetch_alone(data)
                alone.append(took)
                cpu.append(used)
            else:
                seconds = self.cold_export(data, library)
            mix.append(seconds)
            bench.say(f"  run {i + 1}: curl {curl[-1]:.3f} s, mixvfs {mix[-1]:.3f} s ({mix[-1] / curl[-1]:.2f})"
                      + (f"; the download path alone {alone[-1]:.3f} s ({alone[-1] / curl[-1]:.2f}), daemon CPU "
                         f"{cpu[-1]:.3f} s" if alone else ""))
        bench.rows.append(Row(f"{data.name} cold export ÷ one curl{lane}", "s", "mixvfs", mix,
                              "curl, 1 process, keep-alive", curl, "" if lane else "ratio <= 1.3",
                              {"round_ratios": ratios(mix, curl),
                               "ms_per_track": 1000 * statistics.median(mix) / len(data.files)}))
        if alone:
            bench.rows.append(Row(f"{data.name}: the download path alone (prefetch, no reader) ÷ one curl", "s",
                                  "mixvfs prefetch", alone, "curl, 1 process, keep-alive", curl, "",
                                  {"round_ratios": ratios(alone, curl), "daemon_cpu_seconds": cpu,
                                   "cpu_ms_per_track": 1000 * statistics.median(cpu) / len(data.files)}))

    # -- floors: download, native cp, a C FUSE filesystem ------------------------------------------------

    def case_floors(self, data: DataSet, library: str | None = None) -> None:
        bench = self.bench
        lane = "" if library is None else " [libfuse 2]"
        bench.say(f"floors of {data.name}{lane}: curl / cp / bindfs / mixvfs warm, re-export, cold, {bench.runs} runs")
        cache = reset(bench.work / "cache-floors")
        with self.mount(data, cache, library) as mnt:  # fill the cache
            copy_tree(mnt, bench.work / "out")
        blobs = files_under(cache / "blobs")
        curl, native, rw, bind, cfloor, warm, again, cold = [], [], [], [], [], [], [], []
        for i in range(bench.runs):
            bench.cold(data)
            curl.append(bench.curl_all(data, bench.work / "out"))
            read_through(data.files)
            native.append(copy_tree(data.folder, bench.work / "out"))
            read_through(data.files)
            rw.append(rw_copy_tree(data.folder, bench.work / "out"))
            if self.bindfs:
                read_through(data.files)
                with self.bindfs_mount(data.folder) as bmnt:
                    bind.append(copy_tree(bmnt, bench.work / "out"))
            if self.fusefloor:
                read_through(data.files)
                with self.fusefloor_mount(data.folder) as fmnt:
                    cfloor.append(copy_tree(fmnt, bench.work / "out"))
            read_through(blobs)
            with self.mount(data, cache, library) as mnt:
                warm.append(copy_tree(mnt, bench.work / "out"))
                again.append(copy_tree(mnt, bench.work / "out"))
            cold.append(self.cold_export(data, library))
            bench.say(f"  run {i + 1}: curl {curl[-1]:.3f}, cp {native[-1]:.3f}, read/write {rw[-1]:.3f}, "
                      f"bindfs {bind[-1] if bind else float('nan'):.3f}, "
                      f"fusefloor {cfloor[-1] if cfloor else float('nan'):.3f}, mixvfs warm {warm[-1]:.3f}, "
                      f"re-export {again[-1]:.3f}, cold {cold[-1]:.3f} s")
        floor = [max(c, w) for c, w in zip(curl, warm, strict=True)]
        bench.rows.append(Row(f"cold export ÷ max(download, warm){lane}", "s", "mixvfs", cold,
                              "max(1 curl, mixvfs warm)", floor, "ratio <= 1.2" if not lane else "",
                              {"round_ratios": ratios(cold, floor), "curl": curl, "warm": warm}))
        # The target is against the C floor on the daemon's libfuse 3; the libfuse 2 lane is reported only.
        if cfloor:
            bench.rows.append(Row(f"warm export, fresh mount ÷ C floor{lane}", "s", "mixvfs", warm,
                                  "fusefloor (C, libfuse 3)", cfloor, "" if lane else "ratio <= 1.15",
                                  {"round_ratios": ratios(warm, cfloor)}))
        if bind:
            bench.rows.append(Row(f"warm export, fresh mount ÷ bindfs{lane}", "s", "mixvfs", warm,
                                  "bindfs (C, libfuse 2)", bind, "",
                                  {"round_ratios": ratios(warm, bind), "bindfs_args": BINDFS_ARGS}))
        else:
            bench.say("  (no bindfs: `bash tools/install_system.sh bench` installs it)")
        bench.rows.append(Row(f"re-export, same mount ÷ native cp{lane}", "s", "mixvfs", again, "native cp", native,
                              "ratio <= 1.2" if not lane else "", {"round_ratios": ratios(again, native)}))
        bench.rows.append(Row(f"re-export ÷ read/write copy{lane}", "s", "mixvfs", again, "1 MiB read/write copy",
                              rw, extra={"round_ratios": ratios(again, rw)}))
        bench.rows.append(Row(f"warm export, fresh mount ÷ native cp{lane}", "s", "mixvfs", warm, "native cp", native,
                              extra={"round_ratios": ratios(warm, native)}))


def rw_copy_tree(src: Path, dest: Path) -> float:
    """Seconds to copy ``src``'s files with plain 1 MiB read/write, as ``cp`` copies out of any FUSE mount
    (``copy_file_range`` only works within one filesystem): native ``cp`` of the same files does one
    in-kernel copy instead (BENCHMARKS.md), a floor no FUSE filesystem can reach through ``cp``."""
    reset(dest).mkdir(parents=True)
    os.sync()  # as copy_tree: no earlier copy's writeback during this one
    start = time.perf_counter()
    for path in sorted(src.iterdir()):
        fd_in = os.open(path, os.O_RDONLY)
        fd_out = os.open(dest / path.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while chunk := os.read(fd_in, 1 << 20):
                os.write(fd_out, chunk)
        finally:
            os.close(fd_in)
            os.close(fd_out)
    return time.perf_counter() - start


def ratios(subject: list[float], baseline: list[float]) -> list[float]:
    return [round(s / b, 3) if b else 0.0 for s, b in zip(subject, baseline, strict=True)]

