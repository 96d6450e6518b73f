"""What every benchmark here shares: the results table, the machine (timing, page cache), the server (nginx, else
the dev server), the data sets and sessions, and the mounts (mixvfs, rclone)."""

from __future__ import annotations

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
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools.devserver import DevServer
from tools.make_audio import write_sized

REPO = Path(__file__).resolve().parents[2]
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
        yield server.url, "the dev server, tools/devserver (nginx not installed: the server may be the bottleneck)"


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


def sized_tracks(folder: Path, count: int, size: int) -> list[Path]:
    """COUNT WAV files of SIZE bytes in FOLDER (kept from an earlier run when their size matches), each with
    content of its own: seeded by the folder's name and its number."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"t{i:05d}.wav"
        if not path.exists() or path.stat().st_size != size:
            write_sized(path, size, kind="wav", seed=zlib.crc32(f"{folder.name}/{i}".encode()))
        files.append(path)
    return files


def make_dataset(root: Path, work: Path, url: str, name: str, count: int, size: int) -> DataSet:
    folder = root / name
    files = sized_tracks(folder, count, size)
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




def compile_bytecode(*trees: str | Path) -> None:
    """Write our modules' bytecode, as ``pip install`` does for an installed package. An editable install
    leaves it to the first import, which does not write it under PYTHONDONTWRITEBYTECODE (set on these
    machines): every ``mixvfs`` process would then compile our changed sources again, up to ~80 ms of each
    process's start (a mount pays it twice: the command and its daemon) that no user's installed copy pays.
    ``trees``: other checkouts whose mixvfs runs too (an A/B's baseline)."""
    for tree in (REPO, *map(Path, trees)):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "mixvfs")], check=True,
                       stdout=subprocess.DEVNULL)
