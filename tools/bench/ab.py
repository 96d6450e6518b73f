"""A/B of two versions of mixvfs on one export case, alternately, paired round by round: the mount daemon of
each variant runs the code tree put first on its PYTHONPATH.

    git archive REV | tar -x -C /var/tmp/old          # the "before" tree
    python -m tools.bench.ab cold256 4 old=/var/tmp/old new=-      # '-': this checkout

Cases: cold256 / cold16 / cold192 (256 x 4 MiB / 16 x 64 MiB / 192 x 1 MiB, empty cache, page cache dropped,
``cp -r``; 1 MiB tracks show a fixed per-track cost), warm256 /
warm16 (fresh mount of a full cache, blobs in the page cache), again256 / again16 (a second ``cp -r`` in the
same mount). Prints each round, then per variant the medians of wall time and of the daemon's CPU time
(user + system, from /proc) and the medians of the per-round ratios against the first variant. Served by
nginx (``tools.bench.common.serve``) from a work folder on /var/tmp. ``AB_LIB=fuse`` runs the daemons on libfuse 2.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

from tools.bench import common as bench

CASES = {"cold256": (256, 4), "warm256": (256, 4), "again256": (256, 4),
         "cold16": (16, 64), "warm16": (16, 64), "again16": (16, 64), "cold192": (192, 1)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class AB:
    def __init__(self, work: Path, data: bench.DataSet) -> None:
        self.work = work
        self.data = data

    def env(self, tree: str) -> dict[str, str]:
        env = dict(os.environ)
        if tree != "-":
            env["PYTHONPATH"] = tree
        if os.environ.get("AB_LIB"):
            env["FUSE_LIBRARY_NAME"] = os.environ["AB_LIB"]
        return env

    def mount(self, cache: Path, tree: str) -> tuple[Path, int]:
        mnt = self.work / "mnt"
        mnt.mkdir(exist_ok=True)
        bench.sh([bench.MIXVFS, "mount", str(self.data.session), str(mnt), "--cache-dir", str(cache), "--report",
                  str(self.work / "report.json"), "--log-file", str(self.work / "mixvfs.log")], env=self.env(tree))
        return mnt, int(os.getxattr(mnt, "user.mixvfs.pid"))

    def unmount(self, mnt: Path) -> None:
        bench.sh([bench.MIXVFS, "unmount", str(mnt)])

    def one(self, name: str, tree: str, case: str) -> tuple[float, float]:
        """(wall seconds of the timed cp -r, daemon CPU seconds meanwhile)."""
        if case.startswith("cold"):
            cache = bench.reset(self.work / f"cache-{name}-cold")
            bench.drop_caches()
            bench.read_through(self.data.files)
        else:
            cache = self.work / f"cache-{name}-full"
            if not cache.exists():
                mnt, _ = self.mount(cache, tree)
                bench.copy_tree(mnt, self.work / "out")
                self.unmount(mnt)
            bench.read_through(bench.files_under(cache / "blobs"))
        mnt, pid = self.mount(cache, tree)
        try:
            if case.startswith("again"):
                bench.copy_tree(mnt, self.work / "out")
            before = cpu_seconds(pid)
            seconds = bench.copy_tree(mnt, self.work / "out")
            return seconds, cpu_seconds(pid) - before
        finally:
            self.unmount(mnt)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[1] not in CASES:
        print(__doc__, file=sys.stderr)
        return 2
    case, rounds = argv[1], int(argv[2])
    variants = [tuple(arg.split("=", 1)) for arg in argv[3:]]
    bench.compile_bytecode(*(tree for _, tree in variants if tree != "-"))
    os.chdir("/tmp")  # `python -m` puts the working directory first on the daemon's path: not this checkout
    work = Path("/var/tmp/mixvfs-ab")
    work.mkdir(exist_ok=True)
    work.chmod(0o755)  # nginx's workers read the data
    root = work / "www"
    root.mkdir(exist_ok=True)
    count, mib = CASES[case]
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _ in variants}
    with bench.serve(root, work) as (url, _server):
        data = bench.make_dataset(root, work, url, f"ab{count}x{mib}", count, mib * bench.MIB)
        ab = AB(work, data)
        for name, _ in variants:
            bench.reset(work / f"cache-{name}-full")  # the server's port (so the sources) changes per run
        for n in range(rounds):
            order = variants if n % 2 == 0 else variants[::-1]
            line = []
            for name, tree in order:
                seconds, cpu_used = ab.one(name, tree, case)
                results[name][0].append(seconds)
                results[name][1].append(cpu_used)
                line.append(f"{name} {seconds:.3f} s (daemon CPU {cpu_used:.2f} s)")
            print(f"round {n + 1}: " + ", ".join(line) + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    base = variants[0][0]
    for name, _ in variants:
        wall, cpu = results[name]
        wall_ratio = statistics.median(a / b for a, b in zip(wall, results[base][0], strict=True))
        cpu_ratio = statistics.median(a / b if b else 1.0 for a, b in zip(cpu, results[base][1], strict=True))
        print(f"{case} {name}: wall {statistics.median(wall):.3f} s, daemon CPU {statistics.median(cpu):.2f} s; "
              f"per-round ratio to {base}: wall x{wall_ratio:.2f}, CPU x{cpu_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
