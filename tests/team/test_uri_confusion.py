"""A request whose raw URI differs from nginx's normalised one (`..`, `%2F`, `%2E`) must be authorized, cached and
fetched under one URI: the origin here lets anyone read /public/… and only the premium token anything else, and a
guest asking for /public/../stream/big.wav must never get the premium track's cached bytes. Real nginx, real curl."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.team.conftest import TeamNginx, require_nginx

PREMIUM = b"PREMIUM-BYTES-" * 1000
LANDING = b"landing page for everybody"


class PerPathOrigin(BaseHTTPRequestHandler):
    """/public/… for anyone (its raw path as sent: this origin does not resolve `..`), the rest premium only."""

    protocol_version = "HTTP/1.1"

    def do_HEAD(self) -> None:
        self.answer(head=True)

    def do_GET(self) -> None:
        self.answer(head=False)

    def answer(self, head: bool) -> None:
        public = self.path.startswith("/public/")
        if not public and self.headers.get("Authorization") != "Bearer premium":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = LANDING if public else PREMIUM
        status, first = 200, 0
        spec = self.headers.get("Range", "")
        if spec.startswith("bytes="):
            start, _, end = spec[6:].partition("-")
            first, last = int(start), min(int(end or len(body) - 1), len(body) - 1)
            status, part = 206, body[first:last + 1]
        else:
            part = body
        self.send_response(status)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("ETag", '"public"' if public else '"premium"')
        self.send_header("Content-Length", str(len(part)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{first + len(part) - 1}/{len(body)}")
        self.end_headers()
        if not head:
            self.wfile.write(part)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def confused() -> Iterator[TeamNginx]:
    nginx = require_nginx()
    server = ThreadingHTTPServer(("127.0.0.1", 0), PerPathOrigin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cache = TeamNginx(nginx, f"http://127.0.0.1:{server.server_address[1]}")
    cache.start()
    yield cache
    cache.remove()
    server.shutdown()
    server.server_close()


def curl(url: str, token: str) -> bytes:
    return subprocess.run(["curl", "-s", "--path-as-is", "-H", f"Authorization: Bearer {token}", url],
                          check=True, capture_output=True, timeout=30).stdout


@pytest.mark.parametrize("sneaky", ["/public/../stream/big.wav", "/public/%2E%2E/stream/big.wav",
                                    "/public/..%2Fstream/big.wav", "/public/x/../../stream/big.wav"])
def test_a_guest_never_gets_premium_bytes_through_a_path_the_origin_authorizes_differently(
        confused: TeamNginx, sneaky: str) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed")
    assert curl(confused.url + "/stream/big.wav", "premium") == PREMIUM  # now in the team cache
    assert curl(confused.url + "/stream/big.wav", "guest") != PREMIUM  # refused: 401
    assert b"PREMIUM" not in curl(confused.url + sneaky, "guest")
