"""Sessions of many tracks (a library exported whole): the time a ``mixvfs mount`` takes to return, the time
of ``ls -l`` of the fresh mount, and the daemon's peak RSS (VmHWM), against a native ``ls -l`` of the same
files where one exists. Beside each time, the CPU it took (the ``mixvfs mount`` command and the daemon until
the mount returned; the daemon during ``ls -l``): on a shared machine, wall time follows the load, CPU time
much less.

Two sessions per count: ``local`` (every track a file on disk) and ``cloud`` (every track on the server, with
its size and type in the manifest, so the mount asks the server nothing). The cloud tracks are served by nginx
(or the dev server) on 127.0.0.1; prefetch stays off so the figure is the mount's and the listing's own.

    python -m tools.bench.many [--counts 10000,100000] [--runs 5] [--kinds local,cloud] [--work DIR]
                               [--variants old=/var/tmp/old,new=-]

``--variants``: an A/B, round by round, of code trees (``git archive REV | tar -x -C DIR``; ``-`` is this
checkout): each variant's ``mixvfs`` runs with its tree first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tools.bench.common import compile_bytecode, mixvfs_mount, reset, serve, timed

TRACK_BYTES = 4096
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system): on a shared machine, steadier than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def file_getattrs(mount: Path) -> int:
    """The LOOKUP and GETATTR requests for files the daemon has answered (-1 where it does not count them):
    those of a listing whose attributes outlived the kernel's attribute timeout before ``ls`` stat'ed them."""
    try:
        return int(json.loads(os.getxattr(mount, "user.mixvfs.requests"))["file_getattrs"])
    except (OSError, KeyError, ValueError):
        return -1


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_files(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = b"RIFF" + bytes(TRACK_BYTES - 4)
    for i in range(count):
        path = folder / f"t{i:06d}.wav"
        if not path.exists():
            path.write_bytes(body)


def make_session(work: Path, folder: Path, count: int, kind: str, url: str) -> Path:
    tracks: list[dict[str, object]]
    if kind == "local":
        tracks = [{"id": f"l{i}", "artist": f"Artist {i % 997}", "title": f"Track {i:06d}",
                   "file_path": str(folder / f"t{i:06d}.wav")} for i in range(count)]
    else:
        tracks = [{"id": f"c{i}", "artist": f"Artist {i % 997}", "title": f"Track {i:06d}",
                   "cloud_stream_path": f"/{folder.name}/t{i:06d}.wav", "size": TRACK_BYTES,
                   "content_type": "audio/wav"} for i in range(count)]
    session = work / f"many-{kind}-{count}.json"
    session.write_text(json.dumps({"name": session.stem, "server": url, "tracks": tracks}))
    return session


def run(args: argparse.Namespace, work: Path) -> list[dict[str, object]]:
    root = work / "root"
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    with serve(root, work) as (url, server):
        print(f"server: {server}; load average {os.getloadavg()}", flush=True)
        for count in args.counts:
            folder = root / f"many{count}"
            make_files(folder, count)
            for kind in args.kinds:
                session = make_session(work, folder, count, kind, url)
                # mount, ls -l, RSS, CPU of the mount (the command and the daemon), CPU of the daemon in ls -l
                results: dict[str, tuple[list[float], ...]] = {
                    name: ([], [], [], [], []) for name, _ in args.variants}
                natives: list[float] = []
                for _ in range(args.runs):
                    natives.append(timed(["ls", "-l", str(folder)]))
                    for name, tree in args.variants:
                        mounts, listings, rss, mount_cpu, ls_cpu = results[name]
                        cache = reset(work / "cache")
                        with variant(tree):
                            start, command_cpu = time.perf_counter(), children_cpu()
                            with mixvfs_mount(session, work / "mnt", cache, work, "--no-prefetch") as mount:
                                mounts.append(time.perf_counter() - start)
                                daemon_cpu = cpu_seconds(mount.pid)
                                mount_cpu.append(children_cpu() - command_cpu + daemon_cpu)
                                before = file_getattrs(mount.path)
                                listings.append(timed(["ls", "-l", str(mount.path)]))
                                ls_cpu.append(cpu_seconds(mount.pid) - daemon_cpu)
                                asked = file_getattrs(mount.path) - before
                                rss.append(mount.peak_rss_mb())
                        print(f"  {count} {kind} {name}: mount {mounts[-1]:.3f} s (CPU {mount_cpu[-1]:.2f} s), "
                              f"ls -l {listings[-1]:.3f} s (daemon CPU {ls_cpu[-1]:.2f} s, {asked} getattr; native "
                              f"{natives[-1]:.3f} s), peak RSS {rss[-1]:.0f} MB, "
                              f"load {os.getloadavg()[0]:.1f}", flush=True)
                for name, _ in args.variants:
                    mounts, listings, rss, mount_cpu, ls_cpu = results[name]
                    row = {"count": count, "kind": kind, "variant": name, "mount_s": statistics.median(mounts),
                           "ls_s": statistics.median(listings), "native_ls_s": statistics.median(natives),
                           "ls_ratio": statistics.median(listings) / statistics.median(natives),
                           "peak_rss_mb": statistics.median(rss), "mount_cpu_s": statistics.median(mount_cpu),
                           "ls_daemon_cpu_s": statistics.median(ls_cpu),
                           "runs": {"mount": mounts, "ls": listings, "native": natives, "rss": rss,
                                    "mount_cpu": mount_cpu, "ls_daemon_cpu": ls_cpu}}
                    rows.append(row)
                    print(f"{count:>7} {kind:<5} {name:<4} mount {row['mount_s']:.3f} s (range {min(mounts):.3f}-"
                          f"{max(mounts):.3f}), ls -l {row['ls_s']:.3f} s (range {min(listings):.3f}-"
                          f"{max(listings):.3f}; {row['ls_ratio']:.1f}x native {row['native_ls_s']:.3f} s), "
                          f"RSS {row['peak_rss_mb']:.0f} MB (max {max(rss):.0f}); CPU: mount "
                          f"{row['mount_cpu_s']:.2f} s, daemon in ls -l {row['ls_daemon_cpu_s']:.2f} s", flush=True)
    return rows


@contextlib.contextmanager
def variant(tree: str) -> Iterator[None]:
    """Run the ``mixvfs`` commands (and their daemons) of this block from ``tree`` ('-': this checkout)."""
    before = os.environ.get("PYTHONPATH")
    if tree != "-":
        os.environ["PYTHONPATH"] = tree
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.many", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="10000,100000", help="track counts, comma-separated")
    parser.add_argument("--kinds", default="local,cloud", help="local, cloud or both")
    parser.add_argument("--runs", type=int, default=5, help="runs per case; medians are printed")
    parser.add_argument("--work", default=None, help="data folder (kept; default: a temp folder on /var/tmp)")
    parser.add_argument("--variants", default="new=-", help="NAME=TREE,... to compare round by round")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    args.counts = [int(c) for c in args.counts.split(",") if c]
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.variants = [(name, tree if tree == "-" else str(Path(tree).resolve()))
                     for name, tree in (v.split("=", 1) for v in args.variants.split(",") if v)]
    compile_bytecode(*(tree for _, tree in args.variants if tree != "-"))
    if args.out:
        args.out = str(Path(args.out).resolve())
    # Out of any checkout: `python -m` puts the working directory first on a daemon's path, and a variant's daemon
    # (older code, started without -P) would otherwise run this checkout's package.
    os.chdir("/tmp")
    if args.work:
        work = Path(args.work).resolve()
        work.mkdir(parents=True, exist_ok=True)
        rows = run(args, work)
    else:
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            rows = run(args, Path(tmp))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
