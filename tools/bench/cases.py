"""The export cases of ``make bench`` against their baselines: :class:`Bench` holds the run (its work folder,
server and rows) that the other case modules (floors, passthrough, team) add to."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tools.bench.common import (
    MIB,
    MIXVFS,
    PY_SPY,
    DataSet,
    Row,
    copy_tree,
    drop_caches,
    files_under,
    mixvfs_mount,
    rclone_mount,
    read_through,
    reset,
    timed,
)
from tools.make_audio import write_sized


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, root: Path, url: str) -> None:
        self.args = args
        self.runs: int = args.runs
        self.work = work
        self.root = root
        self.url = url
        self.rows: list[Row] = []
        self.rclone = shutil.which("rclone") is not None and not args.no_rclone
        self.profiles: dict[str, str] = {}

    def say(self, text: str) -> None:
        print(text, flush=True)

    def cold(self, data: DataSet) -> None:
        """Before a cold run: empty page cache, then the server's files read once (server not disk-bound)."""
        drop_caches()
        read_through(data.files)

    # -- cold export: mixvfs vs curl (and rclone) -----------------------------------------------------

    def curl_all(self, data: DataSet, dest: Path) -> float:
        reset(dest).mkdir(parents=True)
        cmd = ["curl", "-sS", "--fail"]
        for url, path in zip(data.urls, data.files, strict=True):
            cmd += ["-o", str(dest / path.name), url]
        return timed(cmd)

    def mixvfs_cold(self, data: DataSet, *extra: str, profile: str = "") -> tuple[float, float, float]:
        """(mount seconds, cp seconds, daemon peak RSS MB) for an empty cache and a fresh mount."""
        cache = reset(self.work / "cache-cold")
        self.cold(data)
        start = time.perf_counter()
        with mixvfs_mount(data.session, self.work / "mnt", cache, self.work, *extra) as mount:
            mounted = time.perf_counter() - start
            with self.profiling(mount.pid, profile):
                seconds = copy_tree(mount.path, self.work / "out")
            rss = mount.peak_rss_mb()
        return mounted, seconds, rss

    def rclone_cold(self, data: DataSet) -> float:
        cache = reset(self.work / "rclone-cold")
        self.cold(data)
        with rclone_mount(f"{self.url}/{data.name}/", self.work / "rmnt", cache, self.work):
            return copy_tree(self.work / "rmnt", self.work / "out")

    def case_cold_export(self, data: DataSet) -> None:
        self.say(f"cold export of {data.name}: curl / mixvfs{' / rclone' if self.rclone else ''}, {self.runs} runs")
        if self.rclone:
            self.rclone_cold(data)  # warm-up: rclone's first run is much slower than the rest
        curl, mix, mounts, rss, rclone = [], [], [], [], []
        for i in range(self.runs):
            self.cold(data)
            curl.append(self.curl_all(data, self.work / "out"))
            mounted, seconds, peak = self.mixvfs_cold(data, profile="cold-export" if i == 0 else "")
            mix.append(seconds)
            mounts.append(mounted)
            rss.append(peak)
            if self.rclone:
                rclone.append(self.rclone_cold(data))
            self.say(f"  run {i + 1}: curl {curl[-1]:.3f} s, mixvfs {mix[-1]:.3f} s (mount {mounted:.2f} s, "
                     f"peak RSS {peak:.0f} MB){f', rclone {rclone[-1]:.3f} s' if rclone else ''}")
        self.rows.append(Row(f"cold export {data.name} (cp -r)", "s", "mixvfs", mix, "curl one after another",
                             curl, "ratio <= 1.3", {"mount_seconds": mounts}))
        self.rows.append(Row("daemon peak RSS, cold export", "MB", "mixvfs", rss, target="<= 150 MB"))
        if self.rclone:
            self.rows.append(Row("rclone ÷ mixvfs, cold export", "s", "mixvfs", mix, "rclone vfs full", rclone,
                                 "inverse >= 1.4"))

    # -- warm export and re-export: mixvfs vs native cp (and rclone) ------------------------------------

    def fill_cache(self, data: DataSet, cache: Path) -> None:
        with mixvfs_mount(data.session, self.work / "mnt", cache, self.work) as mount:
            copy_tree(mount.path, self.work / "out")

    def case_warm_export(self, data: DataSet) -> None:
        self.say(f"warm export of {data.name}: native cp / mixvfs fresh mount / re-export"
                 f"{' / rclone' if self.rclone else ''}, {self.runs} runs")
        cache = reset(self.work / "cache-warm")
        self.fill_cache(data, cache)
        blobs = files_under(cache / "blobs")
        rcache = reset(self.work / "rclone-warm")
        if self.rclone:
            with rclone_mount(f"{self.url}/{data.name}/", self.work / "rmnt", rcache, self.work):
                copy_tree(self.work / "rmnt", self.work / "out")
            for _ in range(2):  # warm-up of the warm path, then nothing is new any more
                with rclone_mount(f"{self.url}/{data.name}/", self.work / "rmnt", rcache, self.work):
                    copy_tree(self.work / "rmnt", self.work / "out")
        native, fresh, again, rclone = [], [], [], []
        for i in range(self.runs):
            read_through(data.files)
            native.append(copy_tree(data.folder, self.work / "out"))
            read_through(blobs)
            with mixvfs_mount(data.session, self.work / "mnt", cache, self.work) as mount:
                with self.profiling(mount.pid, "warm-export" if i == 0 else ""):
                    fresh.append(copy_tree(mount.path, self.work / "out"))
                with self.profiling(mount.pid, "re-export" if i == 0 else ""):
                    again.append(copy_tree(mount.path, self.work / "out"))
            if self.rclone:
                with rclone_mount(f"{self.url}/{data.name}/", self.work / "rmnt", rcache, self.work):
                    rclone.append(copy_tree(self.work / "rmnt", self.work / "out"))
            self.say(f"  run {i + 1}: cp {native[-1]:.3f} s, mixvfs fresh {fresh[-1]:.3f} s, "
                     f"re-export {again[-1]:.3f} s{f', rclone {rclone[-1]:.3f} s' if rclone else ''}")
        self.rows.append(Row(f"warm export {data.name}, fresh mount", "s", "mixvfs", fresh, "native cp", native,
                             "ratio <= 1.5"))
        self.rows.append(Row(f"re-export {data.name}, same mount", "s", "mixvfs", again, "native cp", native,
                             "ratio <= 1.2"))
        if self.rclone:
            self.rows.append(Row("rclone ÷ mixvfs, warm export (fresh mount)", "s", "mixvfs", fresh,
                                 "rclone vfs full", rclone, "inverse >= 5"))

    # -- first bytes ----------------------------------------------------------------------------------------

    def case_first_bytes(self, data: DataSet) -> None:
        """Open a cold track in the middle of the session right after mounting (prefetch busy elsewhere)."""
        self.say(f"first 64 KiB of a cold {data.files[0].stat().st_size >> 20} MiB track, {self.runs} runs")
        victim = len(data.files) // 2
        mix, curl = [], []
        for _ in range(self.runs):
            self.cold(data)
            curl.append(timed(["curl", "-sS", "--fail", "-r", "0-65535", "-o", "/dev/null", data.urls[victim]])
                        * 1000)
            cache = reset(self.work / "cache-first")
            self.cold(data)
            with mixvfs_mount(data.session, self.work / "mnt", cache, self.work) as mount:
                name = sorted(os.listdir(mount.path))[victim]
                start = time.perf_counter()
                fd = os.open(mount.path / name, os.O_RDONLY)
                got = b""
                while len(got) < 65536:
                    chunk = os.read(fd, 65536 - len(got))
                    if not chunk:
                        break
                    got += chunk
                mix.append((time.perf_counter() - start) * 1000)
                os.close(fd)
                with data.files[victim].open("rb") as handle:
                    if handle.read(65536) != got:
                        raise RuntimeError("mixvfs returned wrong bytes")
            self.say(f"  curl (new process, ranged GET) {curl[-1]:.1f} ms, mixvfs {mix[-1]:.1f} ms")
        self.rows.append(Row("first 64 KiB of a cold track (prefetch running)", "ms", "mixvfs", mix,
                             "curl -r 0-65535", curl, "<= 50 ms"))

    # -- ls -l of a big session ----------------------------------------------------------------------------

    def case_listing(self, count: int) -> None:
        name = f"many{count}"
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        template = self.work / "small.wav"
        write_sized(template, 4096, kind="wav", seed=7)
        body = template.read_bytes()
        for i in range(count):
            path = folder / f"t{i:05d}.wav"
            if not path.exists():
                path.write_bytes(body)
        tracks = [{"id": f"{name}-{i}", "artist": "Many", "title": f"Track {i:05d}",
                   "cloud_stream_path": f"/{name}/t{i:05d}.wav", "size": len(body), "content_type": "audio/wav"}
                  for i in range(count)]
        session = self.work / f"{name}.json"
        session.write_text(json.dumps({"name": name, "server": self.url, "tracks": tracks}))
        self.say(f"ls -l of a {count}-track session (sizes in the manifest), {self.runs} runs")
        mix, native, mounts = [], [], []
        for _ in range(self.runs):
            native.append(timed(["ls", "-l", str(folder)]))
            cache = reset(self.work / "cache-ls")
            start = time.perf_counter()
            with mixvfs_mount(session, self.work / "mnt", cache, self.work) as mount:
                mounts.append(time.perf_counter() - start)
                mix.append(timed(["ls", "-l", str(mount.path)]))
            self.say(f"  native {native[-1]:.3f} s, mixvfs {mix[-1]:.3f} s (mount {mounts[-1]:.2f} s)")
        self.rows.append(Row(f"ls -l, {count}-track session, fresh mount", "s", "mixvfs", mix, "native ls -l",
                             native, "<= 1 s", {"mount_seconds": mounts}))

    # -- scaling -----------------------------------------------------------------------------------------

    def case_scaling(self, data: DataSet, label: str) -> None:
        runs = max(3, self.runs - 2) if self.args.quick else self.runs
        curl, mix, rss = [], [], []
        for _ in range(runs):
            self.cold(data)
            curl.append(self.curl_all(data, self.work / "out"))
            _, seconds, peak = self.mixvfs_cold(data)
            mix.append(seconds)
            rss.append(peak)
        size = data.files[0].stat().st_size
        self.say(f"  {label}: {len(data.files)} × {size / MIB:g} MiB: curl {statistics.median(curl):.3f} s, "
                 f"mixvfs {statistics.median(mix):.3f} s, peak RSS {max(rss):.0f} MB")
        self.rows.append(Row(f"scaling {label}: {len(data.files)} × {size / MIB:g} MiB cold", "s", "mixvfs", mix,
                             "curl one after another", curl, extra={"peak_rss_mb": rss}))

    # -- check-export: hashing an export folder against reading it ---------------------------------------

    def case_check_export(self, data: DataSet) -> None:
        """``mixvfs check-export`` of a real export (a mount, ``cp -r``) against ``xxhsum -H2`` (the same
        XXH3-128, one C process) and ``cat`` of the same files to /dev/null, all from the page cache (the harsher
        case: nothing hides the hashing behind the disk), alternately in the same run. check-export's time
        includes its start-up (a new Python process)."""
        cache = reset(self.work / "cache-check")
        export = reset(self.work / "export-check")
        with mixvfs_mount(data.session, self.work / "mnt", cache, self.work) as mount:
            copy_tree(mount.path, export)
        report = self.work / "report.json"  # the report of the mount the export was made from
        files = files_under(export)
        total = sum(p.stat().st_size for p in files)
        self.say(f"check-export of a {total >> 20} MiB export ({len(files)} files) / cat > /dev/null, "
                 f"{self.runs} runs, page cache warm")
        check = [MIXVFS, "check-export", str(report), str(export), "--json"]
        cat = ["sh", "-c", 'exec cat "$@" > /dev/null', "cat", *map(str, files)]
        xxhsum = ["sh", "-c", 'exec xxhsum -H2 "$@" > /dev/null', "xxhsum", *map(str, files)]
        mix, base, hashed, inside = [], [], [], []
        for _ in range(self.runs):
            read_through(files)
            base.append(timed(cat))
            read_through(files)
            hashed.append(timed(xxhsum))
            read_through(files)
            start = time.perf_counter()
            done = subprocess.run(check, capture_output=True, text=True, check=False)
            mix.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise RuntimeError(f"check-export found a problem in a clean export: {done.stdout[-2000:]}")
            inside.append(float(json.loads(done.stdout)["seconds"]))  # listing, stat and hashing: no start-up
            self.say(f"  cat {base[-1]:.3f} s, xxhsum -H2 {hashed[-1]:.3f} s, check-export {mix[-1]:.3f} s "
                     f"(of which checking {inside[-1]:.3f} s)")
        self.rows.append(Row(f"check-export of a {total >> 20} MiB export (process)", "s", "mixvfs", mix,
                             "xxhsum -H2 (XXH3-128)", hashed, "ratio <= 1.3", {"bytes": total, "files": len(files)}))
        self.rows.append(Row("  the same against reading alone", "s", "mixvfs", mix, "cat > /dev/null", base))
        self.rows.append(Row("  its checking only (no start-up)", "s", "mixvfs", inside, "cat > /dev/null", base))

    # -- profiles ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def profiling(self, pid: int, name: str) -> Iterator[None]:
        """py-spy on the daemon while the block runs (only with --profile, only for named cases)."""
        if not (self.args.profile and name):
            yield
            return
        if not PY_SPY.exists():
            self.say(f"  (no profile: {PY_SPY} is missing; `pip install py-spy`, or run `make bench`)")
            yield
            return
        out = Path(self.args.out) / f"profile-{name}.txt"
        proc = subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                                 "--threads", "--idle", "--nonblocking", "--output", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy needs a moment to attach
        try:
            yield
        finally:
            proc.send_signal(2)
            proc.wait(timeout=30)
            self.profiles[name] = str(out)


