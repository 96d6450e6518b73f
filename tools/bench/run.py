"""The export benchmark: mixvfs against curl, native cp and rclone on the same data (``make bench``).

Creates the data (``tools.make_audio.write_sized``), serves it on 127.0.0.1 (nginx with a generated
config when installed, else ``python -m tools.devserver``; the output says which), runs every case against its
baseline alternately (``--runs``, at least 3), prints medians and ratios, and writes
``bench-out/results.json``.

Cold runs drop the kernel page cache (``echo 3 > /proc/sys/vm/drop_caches``, needs root) and then read
the server's files once, so that nothing is cached on the client side while the server itself is not
the bottleneck. Warm runs read both sides' sources once beforehand so both come from the page cache.

    python -m tools.bench [--quick] [--runs N] [--out DIR] [--profile]
                           [--only cold,warm,first,ls,scale,checkexport,pertrack,floors,fuse2,passthrough,team]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from tools.bench.cases import Bench
from tools.bench.common import (
    MIB,
    REPO,
    can_drop_caches,
    compile_bytecode,
    machine,
    make_dataset,
    serve,
    table,
)
from tools.bench.floors import Floors
from tools.bench.passthrough import case_passthrough
from tools.bench.team import TeamCase


def summarize_profile(path: Path, top: int = 12) -> list[tuple[str, float]]:
    """Leaf frames by share of non-idle samples, from py-spy's raw (collapsed) output."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        leaf = stack.split(";")[-1]
        counts[leaf] = counts.get(leaf, 0) + int(number)
        total += int(number)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [(leaf, 100 * n / total) for leaf, n in ranked] if total else []


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer runs (about a minute)")
    parser.add_argument("--runs", type=int, default=None, help="alternating runs per case (default 5; quick 3)")
    parser.add_argument("--out", default=str(REPO / "bench-out"), help="where results.json goes")
    parser.add_argument("--work", default=None, help="data folder (default: a temp folder on /var/tmp)")
    parser.add_argument("--devserver", action="store_true",
                        help="use the dev server (tools/devserver) even if nginx exists")
    parser.add_argument("--no-rclone", action="store_true", help="skip the rclone comparison")
    parser.add_argument("--profile", action="store_true", help="py-spy the daemon in the first run of each case")
    parser.add_argument("--only", default="",
                        help="comma list of cases: cold,warm,first,ls,scale,checkexport,pertrack,floors,fuse2,"
                             "passthrough,team (default: all but team)")
    args = parser.parse_args(argv)
    args.runs = max(3, args.runs or (3 if args.quick else 5))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, args.only.split(","))) or {"cold", "warm", "first", "ls", "scale", "checkexport",
                                                        "pertrack", "floors", "fuse2", "passthrough"}
    compile_bytecode()
    info = machine()
    print(f"mixvfs benchmark {info['date']}: {info['nproc']} CPUs, {info['mem_gib']} GiB, kernel {info['kernel']}, "
          f"libfuse3 {info['libfuse3']}")
    if not can_drop_caches():
        print("NOTE: cannot write /proc/sys/vm/drop_caches (not root): cold runs are only cold for mixvfs's cache")
    else:
        print("cold runs: page cache dropped (echo 3 > /proc/sys/vm/drop_caches), then the server's files read once")
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="mixvfs-bench-", dir="/var/tmp")))
        if not args.work:
            work.chmod(0o755)  # mkdtemp's 0700 would keep nginx's workers (www-data) out: every GET a 403
        root = work / "www"
        root.mkdir(parents=True, exist_ok=True)
        url, server = stack.enter_context(serve(root, work, prefer_nginx=not args.devserver))
        print(f"server: {server} at {url}")
        bench = Bench(args, work, root, url)
        count, size = (8, 16 * MIB) if args.quick else (16, 64 * MIB)
        main_set = make_dataset(root, work, url, f"session{count}x{size >> 20}", count, size)
        print(f"data: {count} × {size >> 20} MiB ({count * size >> 20} MiB)")
        if "cold" in only:
            bench.case_cold_export(main_set)
        if "warm" in only:
            bench.case_warm_export(main_set)
        floors = Floors(bench)  # the floors, each measured in the same run (tools/bench/floors.py)
        # 1 MiB tracks: a fixed cost per track shows (4 MiB tracks hid most of it behind their bytes)
        count_tracks = 64 if args.quick else 192
        if "pertrack" in only:
            floors.case_pertrack(make_dataset(root, work, url, f"tracks{count_tracks}x1", count_tracks, MIB))
        if "floors" in only:
            floors.case_floors(main_set)
        if "fuse2" in only:  # the path macOS takes (macFUSE offers the libfuse 2 API)
            floors.case_floors(main_set, library="fuse")
            floors.case_pertrack(make_dataset(root, work, url, f"tracks{count_tracks}x1", count_tracks, MIB),
                                 library="fuse")
        if "first" in only:
            bench.case_first_bytes(main_set)
        if "passthrough" in only:  # FUSE passthrough on libfuse >= 3.17 (tools/bench/passthrough.py)
            case_passthrough(bench, main_set)
        if "ls" in only:
            bench.case_listing(2000 if args.quick else 10_000)
        if "checkexport" in only:  # 1 GiB even with --quick: a smaller export would time start-up, not hashing
            big = main_set if count * size >= 1 << 30 else make_dataset(root, work, url, "export16x64", 16, 64 * MIB)
            bench.case_check_export(big)
        if "team" in only:  # the studio tier: tools/bench/team.py; 1 GiB even with --quick (a session's size)
            big = main_set if count * size >= 1 << 30 else make_dataset(root, work, url, "export16x64", 16, 64 * MIB)
            TeamCase(bench).run(big)
        if "scale" in only:
            print("scaling (cold export vs curl):")
            sessions = (16, 64) if args.quick else (16, 64, 256)
            for n in sessions:
                bench.case_scaling(make_dataset(root, work, url, f"scale{n}x4", n, 4 * MIB), "session size")
            sizes = (1, 16, 64) if args.quick else (1, 16, 64, 256)
            for mib in sizes:
                bench.case_scaling(make_dataset(root, work, url, f"size4x{mib}", 4, mib * MIB), "track size")
        print()
        print(table(bench.rows))
        profiles = {}
        for name, path in bench.profiles.items():
            summary = summarize_profile(Path(path))
            profiles[name] = {"file": path, "top_leaves": summary}
            print(f"\npy-spy {name} (leaf frames, % of samples incl. idle): " +
                  "; ".join(f"{leaf} {pct:.0f}%" for leaf, pct in summary[:8]))
        command = " ".join(["python -m tools.bench", *(argv or sys.argv[1:])])
        result = {"machine": info, "server": server, "command": command,
                  "runs": args.runs, "rows": [row.to_json() for row in bench.rows], "profiles": profiles}
        (out / "results.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
        result["loadavg_at_end"] = os.getloadavg()
        (out / "results.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
        print(f"load average at start {info['loadavg_at_start'][0]:.2f}, at end {os.getloadavg()[0]:.2f} "
              "(other work on the machine makes runs noisy)")
        print(f"\nwrote {out / 'results.json'}")
        failed = [row.name for row in bench.rows if row.met() is False]
        if failed:
            print("targets not met: " + "; ".join(failed))
    return 0

