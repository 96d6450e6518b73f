"""Where the warm export's slow rounds go: mixvfs (fresh mount of a full cache) against the C floor
(``tools/fusefloor.c``), many rounds, with what each side spent.

``make bench`` showed the warm libfuse 3 row bimodal: some rounds took 2-3 x the others while the C floor held.
This probe repeats that round (8 x 64 MiB, nginx on loopback, page cache warm) and records, per copy:

* the wall time of the reader (``cp -r`` into a fresh folder, as the bench, or with ``--read-only`` every file
  ``cat`` to /dev/null: no destination at all);
* the reader's own user and system CPU (``wait4``'s rusage);
* the daemon's CPU over the copy, summed over its threads (``/proc/PID/task/*/stat``).

The order alternates (odd rounds the floor first, even rounds mixvfs first), so a slow mode that follows the
position in the round rather than the filesystem shows. The summary splits the mixvfs rounds into slow
(ratio > ``--slow``) and the rest, and prints the medians of each side's figures in both groups: a slow mode in
the daemon shows as more daemon CPU; one in the reader's kernel work (e.g. the destination's page cache
memory) as more reader system time with the daemon unchanged.

    .venv/bin/python -m tools.bench.warm_modes --rounds 16 [--read-only] [--work /var/tmp/probe]

Nothing here is a test; it prints figures for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mixvfs.vfs.adapter.libfuse import raise_readahead
from tools.bench.common import compile_bytecode, files_under, make_dataset, mixvfs_mount, read_through, reset, serve
from tools.bench.floors import build_fusefloor, unmount

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Copy:
    seconds: float
    user: float
    system: float
    daemon: float = 0.0  # CPU seconds of the filesystem's process over the copy (mixvfs only)


def process_cpu(pid: int) -> float:
    """User + system seconds of every thread of ``pid`` (threads that ended are in the process's own line)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def timed_copy(src: Path, dest: Path, read_only: bool) -> Copy:
    reset(dest)
    os.sync()  # as the bench: no earlier copy's writeback during this one
    if read_only:
        cmd = ["sh", "-c", 'exec cat "$@" > /dev/null', "cat", *map(str, sorted(src.iterdir()))]
    else:
        cmd = ["cp", "-r", f"{src}/.", str(dest)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{cmd[0]} failed ({status})")
    return Copy(seconds, usage.ru_utime, usage.ru_stime)


@contextlib.contextmanager
def floor_mount(binary: Path, source: Path, mnt: Path) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(binary), str(source), str(mnt), "-o", "ro"], check=True)
    raise_readahead(os.path.realpath(mnt))
    try:
        yield mnt
    finally:
        unmount(mnt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--read-only", action="store_true", help="cat every file to /dev/null instead of cp -r")
    parser.add_argument("--slow", type=float, default=1.5, help="a mixvfs round this many x the floor is slow")
    parser.add_argument("--work", default=None, help="data folder (default: a temp folder on /var/tmp)")
    args = parser.parse_args(argv)
    compile_bytecode()
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="mixvfs-probe-", dir="/var/tmp")))
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o755)  # nginx's workers read the files
        root = work / "www"
        url, _ = stack.enter_context(serve(root, work))
        data = make_dataset(root, work, url, "warm8x64", 8, 64 << 20)
        binary = build_fusefloor(work)
        if binary is None:
            return 1
        cache = work / "cache"
        with mixvfs_mount(data.session, work / "mnt", cache, work) as mount:  # fill the cache
            timed_copy(mount.path, work / "out", read_only=False)
        blobs = files_under(cache / "blobs")

        def floor() -> Copy:
            read_through(data.files)
            with floor_mount(binary, data.folder, work / "fmnt") as mnt:
                return timed_copy(mnt, work / "out", args.read_only)

        def mixvfs() -> Copy:
            read_through(blobs)
            with mixvfs_mount(data.session, work / "mnt", cache, work) as mount:
                before = process_cpu(mount.pid)
                copy = timed_copy(mount.path, work / "out", args.read_only)
                copy.daemon = process_cpu(mount.pid) - before
                return copy

        pairs: list[tuple[Copy, Copy]] = []
        for i in range(args.rounds):
            if i % 2 == 0:
                f, m = floor(), mixvfs()
            else:
                m, f = mixvfs(), floor()
            pairs.append((f, m))
            print(f"round {i + 1:2} ({'floor' if i % 2 == 0 else 'mixvfs'} first): floor {f.seconds:.3f} s "
                  f"(reader sys {f.system:.2f}), mixvfs {m.seconds:.3f} s (reader sys {m.system:.2f}, daemon CPU "
                  f"{m.daemon:.2f}) = {m.seconds / f.seconds:.2f}", flush=True)
    summarize(pairs, args.slow)
    return 0


def summarize(pairs: list[tuple[Copy, Copy]], slow_at: float) -> None:
    ratios = [m.seconds / f.seconds for f, m in pairs]
    print(f"\nmedian mixvfs ÷ floor {statistics.median(ratios):.2f} over {len(pairs)} rounds "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
    groups = {"slow": [p for p, r in zip(pairs, ratios, strict=True) if r > slow_at],
              "other": [p for p, r in zip(pairs, ratios, strict=True) if r <= slow_at]}
    for name, group in groups.items():
        if not group:
            print(f"{name} rounds (ratio {'>' if name == 'slow' else '<='} {slow_at}): none")
            continue

        def med(values: list[float]) -> float:
            return statistics.median(values)

        print(f"{name} rounds ({len(group)}): mixvfs {med([m.seconds for _, m in group]):.3f} s, reader sys "
              f"{med([m.system for _, m in group]):.2f} s, daemon CPU {med([m.daemon for _, m in group]):.2f} s; "
              f"floor {med([f.seconds for f, _ in group]):.3f} s, reader sys {med([f.system for f, _ in group]):.2f} s")


if __name__ == "__main__":
    sys.exit(main())
