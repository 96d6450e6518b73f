"""tools/devserver.py, exercised as a real subprocess over HTTP."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tools.devserver import DevServer, FaultsError, RangeNotSatisfiable, parse_range

DEVSERVER = Path(__file__).resolve().parents[2] / "tools" / "devserver.py"
DATA = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable
TOKEN = "s3cret"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "album").mkdir(parents=True)
    (root / "track.flac").write_bytes(DATA)
    (root / "album" / "My Song.mp3").write_bytes(b"mp3 bytes")
    (root / "notes.unknownext").write_bytes(b"x")
    (tmp_path / "secret.txt").write_bytes(b"outside root")
    return root


@pytest.fixture
def server(root: Path) -> Iterator[DevServer]:
    with DevServer(root) as srv:
        yield srv


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def read_until_error(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, bytes, bool]:
    """Stream a body; return (response, bytes received, whether the transfer broke off)."""
    received = bytearray()
    with client.stream("GET", url, headers=headers) as resp:
        try:
            for chunk in resp.iter_raw():
                received += chunk
        except httpx.RemoteProtocolError:
            return resp, bytes(received), True
    return resp, bytes(received), False


def raw_get(server: DevServer, target: str) -> int:
    """GET with the target sent verbatim (httpx would normalise '..' away)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# --------------------------------------------------------------------------- basics


def test_get_serves_file_with_headers(server: DevServer, client: httpx.Client) -> None:
    resp = client.get(server.url_for("track.flac"))
    assert resp.status_code == 200
    assert resp.content == DATA
    assert resp.headers["content-length"] == str(len(DATA))
    assert resp.headers["content-type"] == "audio/flac"
    assert resp.headers["accept-ranges"] == "bytes"
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', resp.headers["etag"])
    assert resp.headers["last-modified"].endswith(" GMT")


def test_get_decodes_url_path_and_types(server: DevServer, client: httpx.Client) -> None:
    resp = client.get(f"{server.url}/album/My%20Song.mp3")
    assert (resp.status_code, resp.content, resp.headers["content-type"]) == (200, b"mp3 bytes", "audio/mpeg")
    other = client.get(server.url_for("notes.unknownext"))
    assert other.headers["content-type"] == "application/octet-stream"


def test_head_gives_headers_without_body(server: DevServer, client: httpx.Client) -> None:
    get = client.get(server.url_for("track.flac"))
    head = client.head(server.url_for("track.flac"))
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(DATA))
    assert head.headers["etag"] == get.headers["etag"]
    assert server.requests("HEAD")[0]["bytes"] == 0


def test_missing_directory_and_escapes_are_404(server: DevServer, client: httpx.Client) -> None:
    assert client.get(server.url_for("nope.flac")).status_code == 404
    assert client.get(server.url_for("album")).status_code == 404
    assert client.get(server.url + "/").status_code == 404
    assert raw_get(server, "/../secret.txt") == 404
    assert raw_get(server, "/%2e%2e/secret.txt") == 404
    assert raw_get(server, "/album/../../secret.txt") == 404
    assert raw_get(server, "/album/../track.flac") == 200  # '..' that stays inside is fine


# --------------------------------------------------------------------------- auth


def test_auth_requires_a_configured_token(root: Path, client: httpx.Client) -> None:
    with DevServer(root, tokens=[TOKEN, "other"]) as srv:
        url = srv.url_for("track.flac")
        missing = client.get(url)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(url, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert client.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).content == DATA
        assert client.get(url, headers={"Authorization": "Bearer other"}).status_code == 200
        assert [r["status"] for r in srv.requests()] == [401, 401, 401, 200, 200]


def test_open_server_accepts_any_header(server: DevServer, client: httpx.Client) -> None:
    resp = client.get(server.url_for("track.flac"), headers={"Authorization": "Bearer whatever"})
    assert resp.status_code == 200


def test_token_file_is_reread_per_request(root: Path, tmp_path: Path, client: httpx.Client) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old\n")
    with DevServer(root, token_file=token_file) as srv:
        url = srv.url_for("track.flac")
        assert client.get(url, headers={"Authorization": "Bearer old"}).status_code == 200
        token_file.write_text("new\n")
        assert client.get(url, headers={"Authorization": "Bearer old"}).status_code == 401
        assert client.get(url, headers={"Authorization": "Bearer new"}).status_code == 200
        token_file.unlink()  # configured but missing: nothing is valid, auth stays closed
        assert client.get(url, headers={"Authorization": "Bearer new"}).status_code == 401
        assert client.get(url).status_code == 401


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=2-5", 2, 5), ("bytes=10000-", 10000, len(DATA) - 1), ("bytes=-3", len(DATA) - 3, len(DATA) - 1)],
)
def test_range_gives_206(server: DevServer, client: httpx.Client, header: str, start: int, end: int) -> None:
    resp = client.get(server.url_for("track.flac"), headers={"Range": header})
    assert resp.status_code == 206
    assert resp.content == DATA[start : end + 1]
    assert resp.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert resp.headers["content-length"] == str(end - start + 1)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-", (0, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=5-2", None),  # invalid: ignored, so a full 200
        ("bytes=1-2,4-5", None),  # multi-range: not supported, ignored
        ("bytes=x-", None),
        ("bytes=\u00b2-", None),
        ("items=1-2", None),
        (None, None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0", "bytes=100-200"])
def test_parse_range_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_range_end_is_clamped_to_file(server: DevServer, client: httpx.Client) -> None:
    resp = client.get(server.url_for("track.flac"), headers={"Range": "bytes=10230-99999"})
    assert resp.status_code == 206
    assert resp.headers["content-range"] == f"bytes 10230-10239/{len(DATA)}"


def test_unsatisfiable_range_gives_416(server: DevServer, client: httpx.Client) -> None:
    resp = client.get(server.url_for("track.flac"), headers={"Range": f"bytes={len(DATA)}-"})
    assert resp.status_code == 416
    assert resp.headers["content-range"] == f"bytes */{len(DATA)}"


def test_if_range_mismatch_sends_full_body(server: DevServer, client: httpx.Client) -> None:
    url = server.url_for("track.flac")
    etag = client.head(url).headers["etag"]
    stale = client.get(url, headers={"Range": "bytes=100-", "If-Range": '"stale"'})
    assert stale.status_code == 200
    assert stale.content == DATA
    fresh = client.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
    assert fresh.status_code == 206
    assert fresh.content == DATA[100:]


def test_etag_changes_when_file_is_rewritten(server: DevServer, root: Path, client: httpx.Client) -> None:
    url = server.url_for("track.flac")
    before = client.head(url).headers["etag"]
    assert client.head(url).headers["etag"] == before  # stable while the file is untouched
    path = root / "track.flac"
    path.write_bytes(DATA[::-1])  # same size: only mtime_ns tells the versions apart
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    after = client.get(url)
    assert after.headers["etag"] != before
    assert after.content == DATA[::-1]


# --------------------------------------------------------------------------- faults


def test_fault_status_times_then_normal(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"/track.flac": {"status": 503, "times": 2}})
    url = server.url_for("track.flac")
    head = client.head(url)  # HEAD is neither faulted nor counted without "head": true
    assert (head.status_code, head.headers["content-length"]) == (200, str(len(DATA)))
    first = client.get(url)
    assert (first.status_code, first.headers["content-type"]) == (503, "text/plain; charset=utf-8")
    assert first.text == "503 Service Unavailable\n"
    assert client.get(url).status_code == 503
    assert client.get(url).content == DATA
    assert [(r["status"], r["fault"]) for r in server.requests("GET")] == [
        (503, "status"),
        (503, "status"),
        (200, None),
    ]


def test_fault_head_flag_and_star_key(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"*": {"status": 500, "head": True}, "/album/My Song.mp3": {"status": 429}})
    assert client.head(server.url_for("track.flac")).status_code == 500
    assert client.get(server.url_for("track.flac")).status_code == 500
    assert client.get(server.url_for("album/My Song.mp3")).status_code == 429
    assert client.head(server.url_for("album/My Song.mp3")).status_code == 200  # own entry, no "head"
    server.set_faults({})
    assert client.get(server.url_for("track.flac")).status_code == 200


def test_fault_extra_headers(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"/track.flac": {"status": 503, "headers": {"Retry-After": "1"}}})
    resp = client.get(server.url_for("track.flac"))
    assert (resp.status_code, resp.headers["retry-after"]) == (503, "1")


def test_fault_drop_after(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"/track.flac": {"drop_after": 1000}})
    resp, body, broke = read_until_error(client, server.url_for("track.flac"))
    assert resp.headers["content-length"] == str(len(DATA))
    assert broke
    assert body == DATA[:1000]
    (entry,) = server.requests("GET")
    assert (entry["status"], entry["bytes"], entry["fault"]) == (200, 1000, "drop_after")
    assert client.get(server.url_for("album/My Song.mp3")).status_code == 200  # server survived


def test_fault_drop_after_applies_to_ranges(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"/track.flac": {"drop_after": 10}})
    resp, body, broke = read_until_error(client, server.url_for("track.flac"), {"Range": "bytes=500-"})
    assert (resp.status_code, resp.headers["content-length"], body, broke) == (
        206,
        str(len(DATA) - 500),
        DATA[500:510],
        True,
    )
    assert server.requests("GET")[0]["bytes"] == 10


def test_fault_stall_then_continue(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"/track.flac": {"stall_after": 100, "stall_seconds": 0.4}})
    started = time.monotonic()
    with client.stream("GET", server.url_for("track.flac")) as resp:
        chunks = list(resp.iter_raw())
    elapsed = time.monotonic() - started
    assert b"".join(chunks) == DATA
    assert chunks[0] == DATA[:100]  # the first 100 bytes arrive before the stall
    assert 0.4 <= elapsed < 5


def test_fault_stall_then_drop(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"/track.flac": {"stall_after": 50, "stall_seconds": 0.3, "drop_after": 50}})
    started = time.monotonic()
    _, body, broke = read_until_error(client, server.url_for("track.flac"))
    assert broke
    assert body == DATA[:50]
    assert time.monotonic() - started >= 0.3
    assert server.requests("GET")[0]["fault"] == "stall_after+drop_after"


def test_fault_rate_limit(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"/track.flac": {"rate": 20_000}})  # 10240 bytes -> ~0.5 s
    started = time.monotonic()
    resp = client.get(server.url_for("track.flac"))
    elapsed = time.monotonic() - started
    assert resp.content == DATA
    assert 0.45 <= elapsed < 5


def test_fault_content_length_lie(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"/track.flac": {"content_length": len(DATA) + 100}})
    resp, body, broke = read_until_error(client, server.url_for("track.flac"))
    assert resp.headers["content-length"] == str(len(DATA) + 100)
    assert broke
    assert body == DATA
    assert server.requests("GET")[0]["bytes"] == len(DATA)


def test_fault_body_and_content_type(server: DevServer, client: httpx.Client) -> None:
    page = "<html><body>Session expired, please log in</body></html>"
    server.set_faults({"/track.flac": {"body": page, "content_type": "text/html"}})
    resp = client.get(server.url_for("track.flac"))
    assert (resp.status_code, resp.headers["content-type"], resp.text) == (200, "text/html", page)
    assert resp.headers["content-length"] == str(len(page))


def test_fault_redirect_to_other_origin(root: Path, client: httpx.Client) -> None:
    with DevServer(root, tokens=[TOKEN]) as origin, DevServer(root) as cdn:
        target = cdn.url_for("track.flac")
        origin.set_faults({"/track.flac": {"redirect": target}})
        auth = {"Authorization": f"Bearer {TOKEN}"}
        first = client.get(origin.url_for("track.flac"), headers=auth)
        assert (first.status_code, first.headers["location"]) == (302, target)
        followed = client.get(origin.url_for("track.flac"), headers=auth, follow_redirects=True)
        assert followed.content == DATA
        assert [r["auth"] for r in origin.requests()] == [f"Bearer {TOKEN}"] * 2
        assert [(r["status"], r["auth"]) for r in cdn.requests()] == [(200, None)]


def test_fault_delay(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"/track.flac": {"delay": 0.3}})
    started = time.monotonic()
    resp = client.get(server.url_for("track.flac"))
    assert time.monotonic() - started >= 0.3
    assert resp.content == DATA
    assert server.requests("GET")[0]["fault"] == "delay"


def test_changing_an_entry_rearms_times(server: DevServer, client: httpx.Client) -> None:
    url = server.url_for("track.flac")
    server.set_faults({"/track.flac": {"status": 500, "times": 1}})
    assert [client.get(url).status_code for _ in range(2)] == [500, 200]
    server.set_faults({"/track.flac": {"status": 500, "times": 1}})  # same entry: budget spent
    assert client.get(url).status_code == 200
    server.set_faults({"/track.flac": {"status": 500, "times": 1, "id": 2}})
    assert [client.get(url).status_code for _ in range(2)] == [500, 200]


def test_invalid_faults_are_rejected(server: DevServer, client: httpx.Client) -> None:
    with pytest.raises(FaultsError):
        server.set_faults({"/track.flac": {"drop_afterr": 3}})
    server.faults_file.write_text("{not json")  # a broken file is a loud 500, never silently ignored
    assert client.get(server.url_for("track.flac")).status_code == 500


# --------------------------------------------------------------------------- log, process


def test_log_records_every_field(root: Path, tmp_path: Path, client: httpx.Client) -> None:
    log = tmp_path / "log.jsonl"
    with DevServer(root, tokens=[TOKEN], log=log) as srv:
        srv.set_faults({"/track.flac": {"delay": 0.01}})
        before = time.time()
        headers = {"Authorization": f"Bearer {TOKEN}", "Range": "bytes=10-19", "If-Range": '"x"'}
        client.get(srv.url_for("track.flac"), headers=headers)
        client.head(f"{srv.url}/album/My%20Song.mp3", headers={"Authorization": f"Bearer {TOKEN}"})
        get, head = srv.requests()
        assert srv.requests(path="/album/My Song.mp3") == [head]
    assert isinstance(get["t"], float) and isinstance(get["t_end"], float)
    assert before <= get["t"] <= get["t_end"] <= time.time()
    assert {k: v for k, v in get.items() if k not in ("t", "t_end")} == {
        "method": "GET",
        "path": "/track.flac",
        "range": "bytes=10-19",
        "if_range": '"x"',
        "auth": f"Bearer {TOKEN}",
        "status": 200,  # If-Range mismatch: full body
        "bytes": len(DATA),
        "fault": "delay",
    }
    assert (head["method"], head["status"], head["bytes"], head["fault"]) == ("HEAD", 200, 0, None)
    assert len(log.read_text().splitlines()) == 2


def test_keep_alive_reuses_one_connection(server: DevServer, client: httpx.Client) -> None:
    ports = set()
    for _ in range(3):
        with client.stream("GET", server.url_for("track.flac")) as resp:
            resp.read()
            stream = resp.extensions["network_stream"]
            ports.add(stream.get_extra_info("client_addr")[1])
    assert len(ports) == 1


def test_client_disconnect_mid_body_is_quiet(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"/track.flac": {"rate": 5_000}})
    with client.stream("GET", server.url_for("track.flac")) as resp:
        next(resp.iter_raw())  # then hang up mid-body
    server.set_faults({})
    assert client.get(server.url_for("track.flac")).content == DATA
    assert server.wait_idle(timeout=5)
    server.stop()
    assert server.returncode == 0
    assert "Traceback" not in server.stderr()


def test_cli_prints_url_writes_port_file_and_exits_cleanly(root: Path, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    cmd = [sys.executable, str(DEVSERVER), str(root), "--port", "0", "--port-file", str(port_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(port_file.read_text())
        assert line == f"listening on http://127.0.0.1:{port}\n"
        assert httpx.get(f"http://127.0.0.1:{port}/track.flac").content == DATA
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert (out, err) == ("", "")


def test_start_failure_raises_with_stderr(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not a directory"):
        DevServer(tmp_path / "missing").start()
