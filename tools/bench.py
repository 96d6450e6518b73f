#!/usr/bin/env python3
"""The export benchmark: mixvfs against curl, native cp and rclone on the same data (``make bench``).

Creates the data (``tools.make_audio.write_sized``), serves it on 127.0.0.1 (nginx with a generated
config when installed, else ``tools/devserver.py``; the output says which), runs every case against its
baseline alternately (``--runs``, at least 3), prints medians and ratios, and writes
``bench-out/results.json``.

Cold runs drop the kernel page cache (``echo 3 > /proc/sys/vm/drop_caches``, needs root) and then read
the server's files once, so that nothing is cached on the client side while the server itself is not
the bottleneck. Warm runs read both sides' sources once beforehand so both come from the page cache.

    python tools/bench.py [--quick] [--runs N] [--out DIR] [--profile]
                          [--only cold,warm,first,ls,scale,checkexport,pertrack,floors,fuse2,passthrough,team]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools.bench_floors import Floors  # noqa: E402
from tools.devserver import DevServer  # noqa: E402
from tools.make_audio import write_sized  # noqa: E402

MIB = 1 << 20
BIN = Path(sys.executable).parent
MIXVFS = str(BIN / "mixvfs")
PY_SPY = BIN / "py-spy"


# -- results -----------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a mixvfs figure against a baseline (or against an absolute target)."""

    name: str
    unit: str
    subject: str
    subject_runs: list[float]
    baseline: str = ""
    baseline_runs: list[float] = field(default_factory=list)
    target: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def subject_median(self) -> float:
        return statistics.median(self.subject_runs)

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline_runs) if self.baseline_runs else None

    @property
    def ratio(self) -> float | None:
        base = self.baseline_median
        return self.subject_median / base if base else None

    def met(self) -> bool | None:
        """Targets read ``ratio <= x``, ``ratio >= x`` (baseline ÷ subject) or ``<= x <unit>``."""
        if not self.target:
            return None
        op, value = self.target.split()[:2]
        if self.target.startswith(("ratio", "inverse")):
            ratio = self.ratio
            if ratio is None:
                return None
            figure = 1 / ratio if self.target.startswith("inverse") else ratio
            op, value = self.target.split()[1:3]
        else:
            figure = self.subject_median
        limit = float(value)
        return figure <= limit if op == "<=" else figure >= limit

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(subject_median=self.subject_median, baseline_median=self.baseline_median, ratio=self.ratio,
                    met=self.met())
        return data


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.3g} {unit}"


def table(rows: list[Row]) -> str:
    lines = [f"{'case':<50} {'mixvfs':>10} {'baseline':<28} {'base':>10} {'ratio':>7}  target          met"]
    for row in rows:
        ratio = row.ratio
        shown = ratio
        if row.target.startswith("inverse") and ratio:
            shown = 1 / ratio
        met = {True: "yes", False: "NO", None: ""}[row.met()]
        lines.append(f"{row.name:<50} {fmt(row.subject_median, row.unit):>10} {row.baseline:<28} "
                     f"{fmt(row.baseline_median, row.unit):>10} {'' if shown is None else f'{shown:.2f}':>7}  "
                     f"{row.target:<15} {met}")
    return "\n".join(lines)


# -- the machine ---------------------------------------------------------------------------------------


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[:2000]}")
    return done


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    sh(cmd)
    return time.perf_counter() - start


def can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> None:
    os.sync()
    if can_drop_caches():
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_through(paths: list[Path]) -> None:
    """Pull files into the page cache (so a 'server' or a 'source' is not disk-bound)."""
    for path in paths:
        with path.open("rb", buffering=0) as handle:
            while handle.read(8 * MIB):
                pass


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    libfuse = ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        libfuse = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libfuse3-3"], capture_output=True,
                                 text=True, check=False).stdout
    versions = {}
    for tool, args in (("nginx", ["-v"]), ("rclone", ["version"]), ("curl", ["--version"])):
        if shutil.which(tool):
            out = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
            versions[tool] = (out.stdout + out.stderr).strip().splitlines()[0]
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "nproc": os.cpu_count(),
            "mem_gib": round(mem_kb / (1 << 20), 1), "kernel": platform.release(), "libfuse3": libfuse,
            "python": platform.python_version(), "tools": versions, "loadavg_at_start": os.getloadavg()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the server ----------------------------------------------------------------------------------------


NGINX_CONF = """daemon off;
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    types {{ audio/wav wav; }}
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;
    }}
}}
"""


@contextlib.contextmanager
def serve(root: Path, tmp: Path, prefer_nginx: bool = True) -> Iterator[tuple[str, str]]:
    """(base URL, which server) for ``root``, stopped on exit."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if prefer_nginx and nginx:
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root))
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                                stderr=(tmp / "nginx.stderr").open("wb"))
        try:
            wait_for_port(port, proc)
            yield f"http://127.0.0.1:{port}", f"nginx ({nginx})"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        return
    with DevServer(root) as server:
        yield server.url, "tools/devserver.py (nginx not installed: the server may be the bottleneck)"


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError("nginx did not start listening")


# -- data and sessions ---------------------------------------------------------------------------------


@dataclass
class DataSet:
    name: str
    folder: Path  # on the server, under the server root
    files: list[Path]
    session: Path
    urls: list[str]


def make_dataset(root: Path, work: Path, url: str, name: str, count: int, size: int) -> DataSet:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"t{i:05d}.wav"
        if not path.exists() or path.stat().st_size != size:
            write_sized(path, size, kind="wav", seed=zlib.crc32(f"{name}/{i}".encode()))
        files.append(path)
    tracks = [{"id": f"{name}-{i}", "artist": "Bench", "title": f"{name} {i:05d}",
               "cloud_stream_path": f"/{name}/{p.name}", "size": size, "content_type": "audio/wav"}
              for i, p in enumerate(files)]
    session = work / f"{name}.json"
    session.write_text(json.dumps({"name": name, "server": url, "tracks": tracks}))
    return DataSet(name, folder, files, session, [f"{url}/{name}/{p.name}" for p in files])


# -- mounts ----------------------------------------------------------------------------------------------


@dataclass
class MixMount:
    path: Path
    cache: Path
    log: Path
    pid: int = 0

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0


@contextlib.contextmanager
def mixvfs_mount(session: Path, mnt: Path, cache: Path, work: Path, *extra: str) -> Iterator[MixMount]:
    mnt.mkdir(parents=True, exist_ok=True)
    log = work / "mixvfs.log"
    sh([MIXVFS, "mount", str(session), str(mnt), "--cache-dir", str(cache), "--report",
        str(work / "report.json"), "--log-file", str(log), *extra])
    mount = MixMount(mnt, cache, log, int(os.getxattr(mnt, "user.mixvfs.pid")))
    try:
        yield mount
    finally:
        sh([MIXVFS, "unmount", str(mnt)])


@contextlib.contextmanager
def rclone_mount(url: str, mnt: Path, cache: Path, work: Path) -> Iterator[None]:
    mnt.mkdir(parents=True, exist_ok=True)
    log = work / "rclone.log"
    proc = subprocess.Popen(
        ["rclone", "mount", ":http:", str(mnt), "--http-url", url, "--vfs-cache-mode", "full",
         "--cache-dir", str(cache), "--read-only", "--vfs-cache-max-age", "1000h", "--dir-cache-time", "1000h",
         "--log-file", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone mount failed; see {log}")
            time.sleep(0.02)
        yield
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def reset(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def copy_tree(src: Path, dest: Path) -> float:
    """``cp -r`` timed after ``sync``: the previous copy's dirty pages are not written back during this one (a
    copy that followed another's gigabyte was throttled by the kernel's writeback, 2-3x at random)."""
    reset(dest)
    os.sync()
    return timed(["cp", "-r", f"{src}/.", str(dest)])


# -- the cases ---------------------------------------------------------------------------------------------


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


# -- main ------------------------------------------------------------------------------------------------


def case_team(bench: Bench, data: DataSet) -> None:
    from tools.bench_team import TeamCase

    TeamCase(MIXVFS, copy_tree, free_port, wait_for_port).run(bench, data, Row)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer runs (about a minute)")
    parser.add_argument("--runs", type=int, default=None, help="alternating runs per case (default 5; quick 3)")
    parser.add_argument("--out", default=str(REPO / "bench-out"), help="where results.json goes")
    parser.add_argument("--work", default=None, help="data folder (default: a temp folder on /var/tmp)")
    parser.add_argument("--devserver", action="store_true", help="use tools/devserver.py even if nginx exists")
    parser.add_argument("--no-rclone", action="store_true", help="skip the rclone comparison")
    parser.add_argument("--profile", action="store_true", help="py-spy the daemon in the first run of each case")
    parser.add_argument("--only", default="",
                        help="comma list of cases: cold,warm,first,ls,scale,checkexport,pertrack,floors,fuse2,"
                             "passthrough,team (default: all but team)")
    args = parser.parse_args(argv)
    args.runs = max(3, args.runs or (3 if args.quick else 5))
    return args


def compile_bytecode() -> None:
    """Write our modules' bytecode, as ``pip install`` does for an installed package. An editable install
    leaves it to the first import, which does not write it under PYTHONDONTWRITEBYTECODE (set on these
    machines): every ``mixvfs`` process would then compile our sources again, ~30 ms of each start-up that
    no user's installed copy pays."""
    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    *(str(REPO / d) for d in ("mixvfs", "vfs", "cache"))], check=True,
                   stdout=subprocess.DEVNULL)


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
        floors = Floors(bench)  # the floors, each measured in the same run (tools/bench_floors.py)
        count_small = 64 if args.quick else 256
        if "pertrack" in only:
            floors.case_pertrack(make_dataset(root, work, url, f"scale{count_small}x4", count_small, 4 * MIB))
        if "floors" in only:
            floors.case_floors(main_set)
        if "fuse2" in only:  # the path macOS takes (macFUSE offers the libfuse 2 API)
            floors.case_floors(main_set, library="fuse")
            floors.case_pertrack(make_dataset(root, work, url, f"scale{count_small}x4", count_small, 4 * MIB),
                                 library="fuse")
        if "first" in only:
            bench.case_first_bytes(main_set)
        if "passthrough" in only:  # FUSE passthrough on libfuse >= 3.17 (tools/bench_passthrough.py)
            from tools.bench_passthrough import case_passthrough
            case_passthrough(bench, main_set)
        if "ls" in only:
            bench.case_listing(2000 if args.quick else 10_000)
        if "checkexport" in only:  # 1 GiB even with --quick: a smaller export would time start-up, not hashing
            big = main_set if count * size >= 1 << 30 else make_dataset(root, work, url, "export16x64", 16, 64 * MIB)
            bench.case_check_export(big)
        if "team" in only:  # the studio tier: tools/bench_team.py; 1 GiB even with --quick (the size)
            big = main_set if count * size >= 1 << 30 else make_dataset(root, work, url, "export16x64", 16, 64 * MIB)
            case_team(bench, big)
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
        result = {"machine": info, "server": server, "command": " ".join(["tools/bench.py", *(argv or sys.argv[1:])]),
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


if __name__ == "__main__":
    sys.exit(main())
