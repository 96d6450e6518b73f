"""A real nginx team cache on loopback, configured by `mixvfs team-cache nginx-config`, in front of a real dev
server accepting two tokens (alice, bob). One of each per test module: the tests use track paths of their
own, so the shared cache never mixes them. Under CI=true a machine without nginx fails these tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MIXVFS, missing_part, run, wait_until
from tools.devserver import DevServer

# The third is long enough that finding it in a file (random audio bytes included) means it was written there.
SECRET_TOKEN = "studio-secret-9c41e7b2d8f3a650"
TOKENS = ("alice", "bob", SECRET_TOKEN)
# As a studio runs it: nginx started as root, its workers dropped to a user of their own (`--user`).
WORKER_USER = "nobody"


def worker_args() -> list[str]:
    return ["--user", WORKER_USER] if os.geteuid() == 0 else []


def reachable_folder(prefix: str) -> Path:
    """A folder the workers' user can reach (pytest's own are root's, mode 0700, as a home folder is)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


def require_nginx() -> str:
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if nginx is None:
        missing_part("nginx is not installed (apt install nginx-light: tools/install_system.sh)",
                     "CI must run the team cache tests")
    return nginx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class TeamNginx:
    """nginx run as generated, in the foreground (``-g 'daemon off;'``) so the test owns its process."""

    def __init__(self, nginx: str, origin: str) -> None:
        self.nginx = nginx
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = reachable_folder("mixvfs-team-")
        self.dir = self.folder / "cache"
        self.conf = self.folder / "nginx.conf"
        done = run([MIXVFS, "team-cache", "nginx-config", "--origin", origin, "--listen", f"127.0.0.1:{self.port}",
                    "--cache-dir", str(self.dir), "--max-size", "1G", *worker_args()], check=True)
        self.conf.write_text(done.stdout)
        self._proc: subprocess.Popen[bytes] | None = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self) -> None:
        self._proc = subprocess.Popen([self.nginx, "-c", str(self.conf), "-e", str(self.dir / "logs" / "error.log"),
                                       "-g", "daemon off;"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        proc = self._proc
        if not wait_until(lambda: proc.poll() is not None or accepts(self.port), 20) or proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"nginx did not start: {err}{self.error_log()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)  # fast shutdown: the master waits for its workers
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def error_log(self) -> str:
        path = self.dir / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    root = tmp_path_factory.mktemp("origin")
    with DevServer(root, tokens=TOKENS) as server:
        yield server


@pytest.fixture(scope="module")
def team_nginx(origin: DevServer) -> Iterator[TeamNginx]:
    cache = TeamNginx(require_nginx(), origin.url)
    cache.start()
    yield cache
    cache.remove()


@pytest.fixture
def origin_root(origin: DevServer) -> Path:
    return origin.root


def gets(origin: DevServer, path: str, token: str | None = None) -> list[dict[str, object]]:
    """The origin's GETs of ``path`` (by ``token`` if given)."""
    return [e for e in origin.requests("GET", path) if token is None or e["auth"] == f"Bearer {token}"]


def get_bytes(origin: DevServer, path: str, token: str | None = None) -> int:
    return sum(int(str(e["bytes"])) for e in gets(origin, path, token))


@contextlib.contextmanager
def stopped(cache: TeamNginx) -> Iterator[None]:
    """nginx stopped for the block, started again after it whatever happens (the module shares it)."""
    cache.stop()
    try:
        yield
    finally:
        cache.start()
