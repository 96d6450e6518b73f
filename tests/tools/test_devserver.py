"""tools/devserver, exercised as a real subprocess over HTTP."""

from __future__ import annotations

import email.utils
import gzip
import http.client
import importlib
import os
import random
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.flow.test_preflight import self_signed
from tools.devserver import DevServer, FaultsError, RangeNotSatisfiable, brotli_available, parse_fault, parse_range

REPO = Path(__file__).resolve().parents[2]
DATA = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable
NOISE = random.Random(8).randbytes(200_000)  # does not compress: cuts land inside the encoded stream
TOKEN = "s3cret"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "album").mkdir(parents=True)
    (root / "track.flac").write_bytes(DATA)
    (root / "noise.wav").write_bytes(NOISE)
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


def test_fault_retry_after_as_an_http_date(server: DevServer, client: httpx.Client) -> None:
    server.set_faults({"/track.flac": {"status": 429, "retry_after_date": 30}})
    resp = client.get(server.url_for("track.flac"))
    said = email.utils.parsedate_to_datetime(resp.headers["retry-after"]).timestamp()
    date = email.utils.parsedate_to_datetime(resp.headers["date"]).timestamp()
    assert resp.status_code == 429 and said - date in (30, 31)


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


# --------------------------------------------------------------------------- raw HTTP helpers


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    chunked: bool


def fetch(server: DevServer, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Reply:
    """One request over http.client, which decodes no Content-Encoding (and sends Accept-Encoding: identity)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, "/" + urllib.parse.quote(path), headers=headers or {})
        resp = conn.getresponse()
        chunked = bool(resp.chunked)
        return Reply(resp.status, resp.headers, resp.read(), chunked)
    finally:
        conn.close()


def decode(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "deflate":
        return zlib.decompress(body)
    return bytes(importlib.import_module("brotli").decompress(body))


def etag_of(server: DevServer, path: str = "track.flac") -> str:
    etag = fetch(server, path, "HEAD").headers["ETag"]
    assert etag
    return etag


def fault_log(server: DevServer, method: str = "GET") -> list[tuple[object, object, object]]:
    return [(r["status"], r["bytes"], r["fault"]) for r in server.requests(method)]


# --------------------------------------------------------------------------- conditional requests


def test_if_none_match_gives_304_with_validators(server: DevServer) -> None:
    head = fetch(server, "track.flac", "HEAD")
    etag, modified = head.headers["ETag"], head.headers["Last-Modified"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):  # weak comparison; '*' = any version
        reply = fetch(server, "track.flac", headers={"If-None-Match": header, "Range": "bytes=5-"})
        assert (reply.status, reply.body) == (304, b""), header
        assert (reply.headers["ETag"], reply.headers["Last-Modified"]) == (etag, modified)
    other = fetch(server, "track.flac", headers={"If-None-Match": '"other", W/"x"'})
    assert (other.status, other.body) == (200, DATA)
    logged = [(r["if_none_match"], r["status"], r["bytes"]) for r in server.requests("GET")]
    assert logged[:2] == [(etag, 304, 0), (f"W/{etag}", 304, 0)]


def test_if_modified_since_gives_304_unless_if_none_match_decides(server: DevServer) -> None:
    modified = fetch(server, "track.flac", "HEAD").headers["Last-Modified"]
    assert fetch(server, "track.flac", headers={"If-Modified-Since": modified}).status == 304
    old = "Thu, 01 Jan 1970 00:00:00 GMT"
    assert fetch(server, "track.flac", headers={"If-Modified-Since": old}).body == DATA
    assert fetch(server, "track.flac", headers={"If-Modified-Since": "yesterday"}).body == DATA  # invalid: ignored
    both = {"If-None-Match": '"other"', "If-Modified-Since": modified}  # If-None-Match wins (RFC 9110 §13.2.2)
    assert fetch(server, "track.flac", headers=both).status == 200
    assert server.requests("GET")[0]["if_modified_since"] == modified


def test_replaced_file_fails_if_none_match(server: DevServer, root: Path) -> None:
    etag = etag_of(server)
    path = root / "track.flac"
    path.write_bytes(DATA[::-1])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    reply = fetch(server, "track.flac", headers={"If-None-Match": etag})
    assert (reply.status, reply.body) == (200, DATA[::-1])
    assert reply.headers["ETag"] != etag


def test_weak_if_range_never_matches(server: DevServer) -> None:
    etag = etag_of(server)  # strong; sent back marked weak, RFC 9110 §13.1.5 forbids a match
    reply = fetch(server, "track.flac", headers={"Range": "bytes=100-", "If-Range": f"W/{etag}"})
    assert (reply.status, reply.body) == (200, DATA)


# --------------------------------------------------------------------------- server habits


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_encoding_compresses_whatever_the_client_accepts(server: DevServer, coding: str) -> None:
    server.set_faults({"/track.flac": {"encoding": coding}})
    reply = fetch(server, "track.flac", headers={"Accept-Encoding": "identity"})
    assert (reply.status, reply.headers["Content-Encoding"]) == (200, coding)
    assert reply.headers["Content-Length"] == str(len(reply.body)) != str(len(DATA))
    assert decode(reply.body, coding) == DATA
    assert reply.headers["Accept-Ranges"] is None  # a compressing server does not offer ranges
    head = fetch(server, "track.flac", "HEAD")  # no "head": true needed, HEAD shows the habit too
    assert (head.headers["Content-Encoding"], head.headers["Content-Length"], head.body) == (
        coding,
        str(len(reply.body)),
        b"",
    )
    ranged = fetch(server, "track.flac", headers={"Range": "bytes=100-"})
    assert (ranged.status, ranged.body, ranged.headers["Content-Range"]) == (200, reply.body, None)
    gets = server.requests("GET")
    assert [(g["accept_encoding"], g["fault"], g["bytes"]) for g in gets] == [
        ("identity", "encoding", len(reply.body)),
        ("identity", "encoding", len(reply.body)),
    ]
    assert [h["fault"] for h in server.requests("HEAD")] == ["encoding"]


def test_encoding_br_needs_brotli(server: DevServer) -> None:
    if not brotli_available():  # not a skip: then the refusal is what is tested
        with pytest.raises(FaultsError, match="brotli module, which is unavailable"):
            server.set_faults({"/track.flac": {"encoding": "br"}})
        return
    server.set_faults({"/track.flac": {"encoding": "br"}})
    reply = fetch(server, "track.flac")
    assert (reply.headers["Content-Encoding"], decode(reply.body, "br")) == ("br", DATA)


def test_ignore_range_sends_full_body(server: DevServer) -> None:
    server.set_faults({"/track.flac": {"ignore_range": True}})
    reply = fetch(server, "track.flac", headers={"Range": "bytes=100-"})
    assert (reply.status, reply.body, reply.headers["Content-Range"]) == (200, DATA, None)
    assert reply.headers["Content-Length"] == str(len(DATA))
    assert fetch(server, "track.flac", "HEAD", {"Range": "bytes=100-"}).status == 200
    (get,) = server.requests("GET")
    assert (get["range"], get["status"], get["fault"]) == ("bytes=100-", 200, "ignore_range")


@pytest.mark.parametrize(
    ("asked", "start", "end"),
    [("bytes=1000-", 900, len(DATA) - 1), ("bytes=50-", 0, len(DATA) - 1), ("bytes=1000-1999", 900, 1999)],
)
def test_range_early_starts_before_the_asked_byte(server: DevServer, asked: str, start: int, end: int) -> None:
    server.set_faults({"/track.flac": {"range_early": 100}})
    reply = fetch(server, "track.flac", headers={"Range": asked})
    assert reply.status == 206
    assert reply.headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert reply.body == DATA[start : end + 1]
    assert reply.headers["Content-Length"] == str(end - start + 1)
    assert server.requests("GET")[0]["fault"] == "range_early"


def test_weak_etag_is_weak_and_never_satisfies_if_range(server: DevServer) -> None:
    strong = etag_of(server)
    server.set_faults({"/track.flac": {"weak_etag": True}})
    weak = etag_of(server)
    assert weak == f"W/{strong}"
    reply = fetch(server, "track.flac", headers={"Range": "bytes=100-", "If-Range": weak})
    assert (reply.status, reply.body, reply.headers["ETag"]) == (200, DATA, weak)
    reply = fetch(server, "track.flac", headers={"Range": "bytes=100-", "If-Range": strong})
    assert (reply.status, reply.body) == (200, DATA)  # a strong comparison needs both sides strong
    for tag in (weak, strong):  # If-None-Match compares weakly
        assert fetch(server, "track.flac", headers={"If-None-Match": tag}).status == 304
    assert [g["fault"] for g in server.requests("GET")] == ["weak_etag"] * 4


def test_etag_field_replaces_the_computed_one(server: DevServer) -> None:
    computed = etag_of(server)
    server.set_faults({"/track.flac": {"etag": '"v2"'}})
    assert fetch(server, "track.flac", "HEAD").headers["ETag"] == '"v2"'
    matching = fetch(server, "track.flac", headers={"Range": "bytes=100-", "If-Range": '"v2"'})
    assert (matching.status, matching.body) == (206, DATA[100:])
    stale = fetch(server, "track.flac", headers={"Range": "bytes=100-", "If-Range": computed})
    assert (stale.status, stale.body) == (200, DATA)
    assert fetch(server, "track.flac", headers={"If-None-Match": '"v2"'}).status == 304
    server.set_faults({"/track.flac": {"etag": '"v3"', "weak_etag": True}})
    assert fetch(server, "track.flac").headers["ETag"] == 'W/"v3"'


def test_no_validators_sends_none_and_matches_nothing(server: DevServer) -> None:
    head = fetch(server, "track.flac", "HEAD")
    server.set_faults({"/track.flac": {"no_validators": True}})
    for method in ("GET", "HEAD"):
        reply = fetch(server, "track.flac", method)
        assert (reply.headers["ETag"], reply.headers["Last-Modified"]) == (None, None)
    for if_range in (head.headers["ETag"], head.headers["Last-Modified"]):
        reply = fetch(server, "track.flac", headers={"Range": "bytes=100-", "If-Range": if_range})
        assert (reply.status, reply.body) == (200, DATA)
    assert fetch(server, "track.flac", headers={"If-None-Match": head.headers["ETag"]}).status == 200
    assert fetch(server, "track.flac", headers={"If-Modified-Since": head.headers["Last-Modified"]}).status == 200
    assert fetch(server, "track.flac", headers={"Range": "bytes=100-"}).status == 206  # ranges still work


@pytest.mark.parametrize("status", [405, 501])
def test_no_head_refuses_head_only(server: DevServer, status: int) -> None:
    server.set_faults({"/track.flac": {"no_head": status}})
    head = fetch(server, "track.flac", "HEAD")
    assert head.status == status
    assert head.headers["Allow"] == ("GET" if status == 405 else None)
    assert head.headers["Content-Length"] != str(len(DATA))  # the error text's length, never the file's
    assert fetch(server, "track.flac").body == DATA
    assert [(r["status"], r["fault"]) for r in server.requests("HEAD")] == [(status, "no_head")]
    assert [(r["status"], r["fault"]) for r in server.requests("GET")] == [(200, None)]


def test_times_counts_only_requests_the_entry_acts_on(server: DevServer) -> None:
    server.set_faults({"/track.flac": {"no_head": 405, "times": 1}})
    assert fetch(server, "track.flac").status == 200  # a GET is untouched, so it consumes nothing
    assert [fetch(server, "track.flac", "HEAD").status for _ in range(2)] == [405, 200]


def test_head_gets_the_habits_but_not_the_fault_without_head_flag(server: DevServer) -> None:
    server.set_faults({"/track.flac": {"status": 503, "weak_etag": True}})
    head = fetch(server, "track.flac", "HEAD")
    assert (head.status, head.headers["ETag"][:2]) == (200, "W/")
    assert fetch(server, "track.flac").status == 503
    assert [r["fault"] for r in server.requests()] == ["weak_etag", "status+weak_etag"]


def test_chunked_200_and_206(server: DevServer) -> None:
    server.set_faults({"/track.flac": {"chunked": True}})
    full = fetch(server, "track.flac")
    assert (full.status, full.chunked, full.body) == (200, True, DATA)
    assert (full.headers["Transfer-Encoding"], full.headers["Content-Length"]) == ("chunked", None)
    part = fetch(server, "track.flac", headers={"Range": "bytes=100-"})
    assert (part.status, part.chunked, part.body, part.headers["Content-Length"]) == (206, True, DATA[100:], None)
    assert part.headers["Content-Range"] == f"bytes 100-{len(DATA) - 1}/{len(DATA)}"
    head = fetch(server, "track.flac", "HEAD")  # HEAD still tells the size
    assert (head.headers["Content-Length"], head.headers["Transfer-Encoding"]) == (str(len(DATA)), None)
    assert fault_log(server) == [(200, len(DATA), "chunked"), (206, len(DATA) - 100, "chunked")]


def test_chunked_body_keeps_the_connection_usable(server: DevServer) -> None:
    server.set_faults({"/track.flac": {"chunked": True}})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        bodies = []
        for _ in range(2):  # the second request only works if the last chunk ended the first body
            conn.request("GET", "/track.flac")
            bodies.append(conn.getresponse().read())
    finally:
        conn.close()
    assert bodies == [DATA, DATA]


def test_chunked_with_encoding_and_rate(server: DevServer) -> None:
    server.set_faults({"/track.flac": {"chunked": True, "encoding": "gzip", "rate": 2_000}})
    reply = fetch(server, "track.flac")
    assert (reply.chunked, reply.headers["Content-Encoding"], reply.headers["Content-Length"]) == (True, "gzip", None)
    assert gzip.decompress(reply.body) == DATA
    assert fault_log(server) == [(200, len(reply.body), "encoding+chunked+rate")]


def test_chunked_drop_after_ends_without_the_last_chunk(server: DevServer, root: Path) -> None:
    server.set_faults({"/noise.wav": {"chunked": True, "drop_after": 1000}})
    with pytest.raises(http.client.IncompleteRead) as cut:
        fetch(server, "noise.wav")
    assert cut.value.partial == NOISE[:1000]
    assert fault_log(server) == [(200, 1000, "chunked+drop_after")]


def test_encoding_with_drop_after_cuts_the_compressed_stream(server: DevServer) -> None:
    server.set_faults({"/noise.wav": {"encoding": "deflate"}})
    whole = fetch(server, "noise.wav").body
    server.set_faults({"/noise.wav": {"encoding": "deflate", "drop_after": 5000}})
    with pytest.raises(http.client.IncompleteRead) as cut:
        fetch(server, "noise.wav")
    assert cut.value.partial == whole[:5000]
    assert cut.value.expected == len(whole) - 5000  # Content-Length announced the whole compressed body


def test_rate_on_a_large_file_does_not_busy_wait(server: DevServer, root: Path) -> None:
    """64 MiB at 256 KiB/s: the server sleeps between pieces. CPU time, not wall time, is asserted."""
    with (root / "big.wav").open("wb") as f:
        f.truncate(64 << 20)  # sparse: no 64 MiB write in a unit test
    server.set_faults({"/big.wav": {"rate": 256 << 10}})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/big.wav")
        resp = conn.getresponse()
        assert resp.headers["Content-Length"] == str(64 << 20)
        cpu_before, wall_before = server_cpu_seconds(server), time.monotonic()
        assert resp.read(256 << 10) == bytes(256 << 10)  # about one second's worth
        cpu, wall = server_cpu_seconds(server) - cpu_before, time.monotonic() - wall_before
    finally:
        conn.close()
    assert cpu < 0.5 * wall, (cpu, wall)


def server_cpu_seconds(server: DevServer) -> float:
    assert server.pid is not None
    fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# --------------------------------------------------------------------------- holds


def test_hold_parks_before_headers_until_release_which_is_sticky(server: DevServer) -> None:
    server.set_faults({"/track.flac": {"hold": "gate"}})
    with ThreadPoolExecutor(1) as pool:
        parked = pool.submit(fetch, server, "track.flac")
        assert server.wait_held("gate") == 1
        assert server.held("gate") == 1
        assert server.wait_idle(timeout=10)  # a parked request is not "mid-flight"
        assert server.requests() == [] and not parked.done()
        assert server.release("gate") == 1
        assert parked.result(timeout=30).body == DATA
    assert fetch(server, "track.flac").body == DATA  # released stays released: no second park
    assert server.held("gate") == 0
    assert fault_log(server) == [(200, len(DATA), "hold")] * 2


def test_hold_rearm_and_a_changed_entry_park_again(server: DevServer) -> None:
    server.set_faults({"/track.flac": {"hold": "gate"}})
    assert server.release("gate") == 0  # released before anything parked: covers the entry now in the file
    assert fetch(server, "track.flac").body == DATA
    with ThreadPoolExecutor(1) as pool:
        server.rearm("gate")
        again = pool.submit(fetch, server, "track.flac")
        assert server.wait_held("gate") == 1
        server.release("gate")
        assert again.result(timeout=30).status == 200
        server.set_faults({"/track.flac": {"hold": "gate", "id": 2}})  # a new entry: not yet released
        fresh = pool.submit(fetch, server, "track.flac")
        assert server.wait_held("gate") == 1
        server.release("gate")
        assert fresh.result(timeout=30).status == 200
    assert fetch(server, "track.flac").status == 200


def test_wait_held_counts_parked_requests(server: DevServer) -> None:
    server.set_faults({"*": {"hold": "many"}})
    with ThreadPoolExecutor(2) as pool:
        replies = [pool.submit(fetch, server, name) for name in ("track.flac", "album/My Song.mp3")]
        assert server.wait_held("many", count=2) == 2
        assert server.release("many") == 2
        assert [r.result(timeout=30).status for r in replies] == [200, 200]
    with pytest.raises(TimeoutError, match="0 of 1"):
        server.wait_held("nobody", timeout=0.1)


@pytest.mark.parametrize("chunked", [False, True])
def test_hold_after_sends_k_bytes_then_parks(server: DevServer, chunked: bool) -> None:
    server.set_faults({"/track.flac": {"hold": "mid", "hold_after": 1000, "chunked": chunked}})
    got_first = threading.Event()

    def read() -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("GET", "/track.flac")
            resp = conn.getresponse()
            first = resp.read(1000)
            got_first.set()
            return first + resp.read()
        finally:
            conn.close()

    with ThreadPoolExecutor(1) as pool:
        body = pool.submit(read)
        assert server.wait_held("mid") == 1
        assert got_first.wait(timeout=30)  # headers and the first K bytes arrived while parked
        assert not body.done()
        server.release("mid")
        assert body.result(timeout=30) == DATA
    assert fault_log(server) == [(200, len(DATA), "hold" + ("+chunked" if chunked else ""))]


def test_hold_head_only_with_hold_head(server: DevServer) -> None:
    server.set_faults({"/track.flac": {"hold": "h"}})
    assert fetch(server, "track.flac", "HEAD").status == 200  # GET only: HEAD passes straight through
    server.set_faults({"/track.flac": {"hold": "h", "hold_head": True}})
    with ThreadPoolExecutor(1) as pool:
        head = pool.submit(fetch, server, "track.flac", "HEAD")
        assert server.wait_held("h") == 1
        server.release("h")
        assert head.result(timeout=30).headers["Content-Length"] == str(len(DATA))
    assert [r["fault"] for r in server.requests("HEAD")] == [None, "hold"]


@pytest.mark.parametrize("spec", [{"hold": "stop"}, {"hold": "stop", "hold_after": 10}])
def test_held_request_ends_when_the_server_stops(server: DevServer, spec: dict[str, object]) -> None:
    server.set_faults({"/track.flac": spec})
    with ThreadPoolExecutor(1) as pool:
        parked = pool.submit(fetch, server, "track.flac")
        server.wait_held("stop")
        server.stop()
        assert server.returncode == 0  # SIGTERM sufficed: stop() kills only after 5 s
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            parked.result(timeout=30)
    assert "Traceback" not in server.stderr()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "spec",
    [
        {"encoding": "zstd"},
        {"encoding": True},
        {"ignore_range": 1},
        {"weak_etag": "yes"},
        {"no_validators": None},
        {"chunked": "true"},
        {"no_head": 404},
        {"no_head": True},
        {"etag": ""},
        {"etag": 7},
        {"range_early": -1},
        {"hold": ""},
        {"hold": 3},
        {"hold_after": 5},
        {"hold_head": True},
        {"hold": "x", "hold_after": 3, "status": 503},
        {"chunked": True, "content_length": 5},
    ],
)
def test_new_fields_are_validated(spec: dict[str, object]) -> None:
    with pytest.raises(FaultsError):
        parse_fault(spec)


def test_valid_new_fields_parse() -> None:
    fault = parse_fault(
        {"encoding": "gzip", "chunked": True, "ignore_range": True, "weak_etag": True, "etag": '"e"', "no_head": 501}
        | {"no_validators": False, "range_early": 0, "hold": "n", "hold_after": 0, "hold_head": True}
    )
    assert (fault.encoding, fault.no_head, fault.hold, fault.hold_after) == ("gzip", 501, "n", 0)


# --------------------------------------------------------------------------- log, process


def test_log_records_every_field(root: Path, tmp_path: Path, client: httpx.Client) -> None:
    log = tmp_path / "log.jsonl"
    with DevServer(root, tokens=[TOKEN], log=log) as srv:
        srv.set_faults({"/track.flac": {"delay": 0.01}})
        before = time.time()
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Range": "bytes=10-19",
            "If-Range": '"x"',
            "If-None-Match": '"y"',
            "If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT",
            "Accept-Encoding": "identity",
        }
        client.get(srv.url_for("track.flac"), headers=headers)
        client.head(f"{srv.url}/album/My%20Song.mp3", headers={"Authorization": f"Bearer {TOKEN}"})
        get, head = srv.requests()
        assert srv.requests(path="/album/My Song.mp3") == [head]
    assert isinstance(get["t"], float) and isinstance(get["t_end"], float)
    assert before <= get["t"] <= get["t_end"] <= time.time()
    assert isinstance(get["client_port"], int) and get["client_port"] > 0  # the client's end of its connection
    assert {k: v for k, v in get.items() if k not in ("t", "t_end", "client_port")} == {
        "method": "GET",
        "path": "/track.flac",
        "range": "bytes=10-19",
        "if_range": '"x"',
        "if_none_match": '"y"',  # no match: a normal answer (and If-Modified-Since is then ignored)
        "if_modified_since": "Thu, 01 Jan 1970 00:00:00 GMT",
        "accept_encoding": "identity",
        "auth": f"Bearer {TOKEN}",
        "status": 200,  # If-Range mismatch: full body
        "bytes": len(DATA),
        "fault": "delay",
        "t_gone": None,
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
    cmd = [sys.executable, "-m", "tools.devserver", str(root), "--port", "0", "--port-file", str(port_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)  # as README says
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


def test_then_applies_once_times_are_used_up(server: DevServer) -> None:
    server.set_faults({"/track.flac": {"status": 503, "times": 1, "then": {"weak_etag": True}}})
    first, second, third = (fetch(server, "track.flac") for _ in range(3))
    assert first.status == 503
    assert (second.status, second.headers["ETag"][:2]) == (200, "W/")
    assert third.headers["ETag"][:2] == "W/"  # for good, not once
    with pytest.raises(FaultsError, match="'then' needs 'times'"):
        server.set_faults({"/track.flac": {"then": {"weak_etag": True}}})


def test_a_client_that_hangs_up_while_parked_on_a_hold_is_logged_as_gone(root: Path, tmp_path: Path) -> None:
    """A parked request ends only at the release; the log says when its client left (``t_gone``), so a test
    counting requests in flight counts it as the client ran it."""
    with DevServer(root, tokens=[TOKEN], log=tmp_path / "log.jsonl") as srv:
        srv.set_faults({"/track.flac": {"hold": "h", "hold_after": 100}})
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("GET", "/track.flac", headers={"Authorization": f"Bearer {TOKEN}"})
        assert len(conn.getresponse().read(100)) == 100
        srv.wait_held("h")
        conn.close()
        left = time.time()
        srv.release("h")
        assert srv.wait_idle(30)
        (get,) = srv.requests("GET")
    gone, end = get["t_gone"], get["t_end"]
    assert isinstance(gone, float) and isinstance(end, float) and left - 1 <= gone <= end


def test_over_tls_a_trusting_client_gets_the_files_bytes(tmp_path: Path) -> None:
    """``--tls``: bodies go through the encryption (sendfile on the socket would put the plaintext on the wire:
    every GET failed with WRONG_VERSION_NUMBER)."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "t.wav").write_bytes(bytes(range(256)) * 4000)
    pem = self_signed(tmp_path)
    with DevServer(root, tls=pem) as server:
        answer = httpx.get(server.url_for("t.wav"), verify=ssl.create_default_context(cafile=str(pem)))
    assert answer.status_code == 200 and answer.content == (root / "t.wav").read_bytes()
