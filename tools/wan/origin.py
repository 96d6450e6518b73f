"""The music service at the far end of the emulated link: nginx in the server namespace, serving a folder to the
holders of a few bearer tokens (401 to anyone else), with ETag and Last-Modified as a real origin sends them, and
a request log that tells requests and connections apart (:func:`read_log`)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tools.wan.link import PORT, Link, stop_process

# Tab-separated: time the answer ended (s), time the request took (s), connection serial, request number on it,
# method, URI, status, bytes sent, the If-None-Match it carried ("-": none).
LOG_FORMAT = "\\t".join(["$msec", "$request_time", "$connection", "$connection_requests", "$request_method",
                          "$request_uri", "$status", "$bytes_sent", "$http_if_none_match"])


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def config(root: Path, folder: Path, listen: str, tokens: tuple[str, ...]) -> str:
    allowed = "\n".join(f'        "Bearer {t}" 1;' for t in tokens)
    return f"""# The origin of the emulated link (tools/wan/origin.py).
user root;
worker_processes 2;
pid "{folder}/nginx.pid";
error_log "{folder}/error.log" warn;
events {{ worker_connections 4096; }}
http {{
    log_format wan "{LOG_FORMAT}";
    access_log "{folder}/access.log" wan;
    client_body_temp_path "{folder}/tmp";
    proxy_temp_path "{folder}/tmp";
    fastcgi_temp_path "{folder}/tmp";
    uwsgi_temp_path "{folder}/tmp";
    scgi_temp_path "{folder}/tmp";
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 10000;
    default_type application/octet-stream;
    map $http_authorization $wan_allowed {{
        default 0;
{allowed}
    }}
    server {{
        listen {listen};
        root "{root}";
        autoindex on;  # rclone's http backend lists folders
        location / {{
            if ($wan_allowed = 0) {{ return 401; }}
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Request:
    end: float
    took: float
    connection: int
    method: str
    uri: str
    status: int
    bytes: int
    if_none_match: str | None

    @property
    def start(self) -> float:
        return self.end - self.took


class Origin:
    def __init__(self, link: Link, root: Path, folder: Path, tokens: tuple[str, ...] = ("alice", "bob")) -> None:
        self.link = link
        self.root = root
        self.folder = folder
        self.tokens = tokens
        self.log = folder / "access.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.link.url

    def start(self) -> None:
        nginx = nginx_binary()
        if nginx is None:
            raise RuntimeError("nginx is not installed (apt install nginx-light)")
        (self.folder / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.folder / "nginx.conf"
        conf.write_text(config(self.root, self.folder, f"{self.link.server_ip}:{PORT}", self.tokens))
        self._proc = subprocess.Popen(self.link.in_server([nginx, "-c", str(conf), "-g", "daemon off;"]),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20  # a hang guard: nginx starts in milliseconds
        while not self._accepts():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"the origin's nginx did not start: {err}")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1.0)
            return s.connect_ex((self.link.server_ip, PORT)) == 0

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_process(proc)
        if proc.stderr:
            proc.stderr.close()

    def mark(self) -> int:
        """Where the log ends now: :meth:`requests` since then."""
        return self.log.stat().st_size if self.log.exists() else 0

    def requests(self, since: int = 0) -> list[Request]:
        return read_log(self.log, since)


@contextlib.contextmanager
def serving(link: Link, root: Path, folder: Path, tokens: tuple[str, ...] = ("alice", "bob")) -> Iterator[Origin]:
    origin = Origin(link, root, folder, tokens)
    origin.start()
    try:
        yield origin
    finally:
        origin.stop()


def read_log(path: Path, since: int = 0) -> list[Request]:
    if not path.exists():
        return []
    with path.open("rb") as handle:
        handle.seek(since)
        text = handle.read().decode(errors="replace")
    out = []
    for line in text.splitlines():
        f = line.split("\t")
        if len(f) != 9:
            continue
        out.append(Request(float(f[0]), float(f[1]), int(f[2]), f[4], f[5], int(f[6]), int(f[7]),
                           None if f[8] == "-" else f[8]))
    return out


def most_within(times: list[float], window: float) -> int:
    """The most of ``times`` that fall within any span of ``window`` seconds."""
    times = sorted(times)
    best, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def most_in_flight(requests: list[Request]) -> int:
    """The most requests the server was answering at one moment (each from its start to the end of its answer)."""
    edges = sorted([(r.start, 1) for r in requests] + [(r.end, -1) for r in requests], key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best
