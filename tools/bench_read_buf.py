#!/usr/bin/env python3
"""A/B benchmark of the adapter's read path: ``read_buf`` (libfuse preads a descriptor we name) against
plain ``read`` (we return bytes; mfusepy uses it when ``read_buf`` is not on the Operations class).

The daemon is told which one to use by ``MIXVFS_READ_BUF=0`` (plain ``read``) in its environment. Each
pair runs both variants, in alternating order (on/off, then off/on, ...), through these cases:

* ``cold``: empty cache, fresh mount, ``cp -r`` of cloud tracks from ``tools/devserver.py``;
* ``fresh``: full cache (blobs in the page cache), fresh mount, ``cp -r``;
* ``again``: a second ``cp -r`` in the same mount (served from the FUSE page cache);
* ``local``: the same files as local tracks (``file_path``), fresh mount, ``cp -r``.

Per pair it computes ``off ÷ on`` (> 1: read_buf is faster) of the wall time and of the daemon's CPU time
(user + system, from /proc) and prints the medians over pairs, with the spread.

    python tools/bench_read_buf.py [--pairs 5] [--count 8] [--size-mib 64] [--work DIR] [--only cold,fresh]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools.bench import (  # noqa: E402
    MIB,
    DataSet,
    copy_tree,
    files_under,
    make_dataset,
    mixvfs_mount,
    read_through,
    reset,
)
from tools.devserver import DevServer  # noqa: E402

CASES = ("cold", "fresh", "again", "local")
VARIANTS = ("on", "off")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """The daemon's environment for one variant (it inherits ours through ``mixvfs mount``)."""
    saved = os.environ.get("MIXVFS_READ_BUF")
    os.environ["MIXVFS_READ_BUF"] = "1" if name == "on" else "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MIXVFS_READ_BUF", None)
        else:
            os.environ["MIXVFS_READ_BUF"] = saved


class ReadBufBench:
    def __init__(self, work: Path, cloud: DataSet, local: Path, only: set[str]) -> None:
        self.work = work
        self.cloud = cloud
        self.local = local
        self.only = only
        self.warm_cache = reset(work / "cache-warm")
        # results[case][variant] = [(wall seconds, daemon CPU seconds), ...] in pair order
        self.results: dict[str, dict[str, list[tuple[float, float]]]] = {
            case: {v: [] for v in VARIANTS} for case in CASES if case in only}

    def fill(self) -> None:
        with mixvfs_mount(self.cloud.session, self.work / "mnt", self.warm_cache, self.work) as mount:
            copy_tree(mount.path, self.work / "out")

    def timed_copy(self, pid: int) -> tuple[float, float]:
        cpu = cpu_seconds(pid)
        wall = copy_tree(self.work / "mnt", self.work / "out")
        return wall, cpu_seconds(pid) - cpu

    def run_variant(self, name: str) -> dict[str, tuple[float, float]]:
        got: dict[str, tuple[float, float]] = {}
        with variant(name):
            if "cold" in self.only:
                cache = reset(self.work / "cache-cold")
                read_through(self.cloud.files)  # the server's disk is not what we measure
                with mixvfs_mount(self.cloud.session, self.work / "mnt", cache, self.work) as mount:
                    got["cold"] = self.timed_copy(mount.pid)
            if self.only & {"fresh", "again"}:
                read_through(files_under(self.warm_cache / "blobs"))
                with mixvfs_mount(self.cloud.session, self.work / "mnt", self.warm_cache, self.work) as mount:
                    got["fresh"] = self.timed_copy(mount.pid)
                    got["again"] = self.timed_copy(mount.pid)
            if "local" in self.only:
                read_through(self.cloud.files)
                cache = reset(self.work / "cache-local")
                with mixvfs_mount(self.local, self.work / "mnt", cache, self.work) as mount:
                    got["local"] = self.timed_copy(mount.pid)
        for case, figures in got.items():
            if case in self.results:
                self.results[case][name].append(figures)
        return got

    def summary(self) -> dict[str, dict[str, float | list[float]]]:
        out: dict[str, dict[str, float | list[float]]] = {}
        for case, runs in self.results.items():
            wall_ratios = [off[0] / on[0] for on, off in zip(runs["on"], runs["off"], strict=True)]
            cpu_ratios = [off[1] / on[1] for on, off in zip(runs["on"], runs["off"], strict=True) if on[1] > 0]
            out[case] = {
                "on_wall_median": statistics.median(r[0] for r in runs["on"]),
                "off_wall_median": statistics.median(r[0] for r in runs["off"]),
                "wall_ratio_off_on_median": statistics.median(wall_ratios),
                "wall_ratios": wall_ratios,
                "on_cpu_median": statistics.median(r[1] for r in runs["on"]),
                "off_cpu_median": statistics.median(r[1] for r in runs["off"]),
                "cpu_ratio_off_on_median": statistics.median(cpu_ratios) if cpu_ratios else 0.0,
                "cpu_ratios": cpu_ratios,
            }
        return out


def local_session(work: Path, data: DataSet) -> Path:
    tracks = [{"id": f"local-{i}", "artist": "Bench", "title": f"local {i:05d}", "file_path": str(path)}
              for i, path in enumerate(data.files)]
    session = work / "local.json"
    session.write_text(json.dumps({"name": "local", "tracks": tracks}))
    return session


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5, help="alternating on/off pairs (default 5)")
    parser.add_argument("--count", type=int, default=8, help="tracks (default 8)")
    parser.add_argument("--size-mib", type=int, default=64, help="MiB per track (default 64)")
    parser.add_argument("--work", default=None, help="data folder (default: a temp folder on /var/tmp)")
    parser.add_argument("--only", default="", help="comma list of cases: " + ",".join(CASES))
    parser.add_argument("--out", default=None, help="write the raw figures and the summary here (JSON)")
    args = parser.parse_args(argv)
    only = set(filter(None, args.only.split(","))) or set(CASES)
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="mixvfs-readbuf-", dir="/var/tmp")))
        root = work / "www"
        root.mkdir(parents=True, exist_ok=True)
        server = stack.enter_context(DevServer(root))
        data = make_dataset(root, work, server.url, f"rb{args.count}x{args.size_mib}", args.count,
                            args.size_mib * MIB)
        bench = ReadBufBench(work, data, local_session(work, data), only)
        print(f"read_buf A/B: {args.count} × {args.size_mib} MiB, {args.pairs} pairs, cases {sorted(only)}, "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        if only & {"fresh", "again"}:
            bench.fill()
        for pair in range(args.pairs):
            order = VARIANTS if pair % 2 == 0 else VARIANTS[::-1]
            for name in order:
                got = bench.run_variant(name)
                print(f"  pair {pair + 1} read_buf {name:>3}: " + ", ".join(
                    f"{case} {wall:.3f} s (daemon CPU {cpu:.2f} s)" for case, (wall, cpu) in got.items()),
                    flush=True)
        summary = bench.summary()
        print(f"\nmedians over {args.pairs} pairs; ratio = plain read ÷ read_buf (> 1: read_buf is faster)")
        for case, row in summary.items():
            walls = row["wall_ratios"]
            assert isinstance(walls, list)
            print(f"  {case:<6} wall on {row['on_wall_median']:.3f} s, off {row['off_wall_median']:.3f} s, "
                  f"ratio {row['wall_ratio_off_on_median']:.3f} (pairs {min(walls):.2f}–{max(walls):.2f}); "
                  f"daemon CPU on {row['on_cpu_median']:.2f} s, off {row['off_cpu_median']:.2f} s, "
                  f"ratio {row['cpu_ratio_off_on_median']:.3f}")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
        if args.out:
            Path(args.out).write_text(json.dumps({"args": vars(args), "results": bench.results,
                                                  "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
