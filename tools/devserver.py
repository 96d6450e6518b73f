#!/usr/bin/env python3
"""Local stand-in for the "Chad Music" file server (stdlib only).

Serves the files under ROOT at their relative URL path, with the behaviour mixvfs relies on:
bearer-token auth (static tokens and/or a token file re-read on every request), single byte
ranges, ``If-Range``, stable ETags, a JSON-lines request log and scriptable faults.

    python tools/devserver.py ROOT [--host 127.0.0.1] [--port 0] [--token T ...] [--token-file F]
                              [--faults FILE] [--log FILE] [--port-file F]

Faults file (re-read on every request, so rewrite it atomically): ``{"<url path>": {fields}}``,
where the key ``"*"`` applies to every path without its own entry. Fields, all optional:
``status``, ``times``, ``head``, ``drop_after``, ``stall_after`` + ``stall_seconds``, ``rate``,
``content_length``, ``body`` + ``content_type``, ``redirect``, ``delay``, plus two extras:
``headers`` (extra response headers, e.g. ``{"Retry-After": "1"}``) and ``id`` (ignored, but it
makes an entry distinct so its ``times`` budget starts again).

Faults are applied after auth: an unauthenticated request gets its 401 and consumes nothing.
``times`` is counted per request path and per entry content (rewriting the same entry keeps
its count; changing any field, e.g. ``id``, starts a fresh budget).

Log (``--log``): one JSON object per request, written when the response is finished:
``t`` (request start, epoch seconds), ``t_end`` (response finished), ``method``, ``path`` (URL-decoded,
no query), ``range``, ``if_range``, ``auth``, ``status``, ``bytes`` (body bytes sent), ``fault`` (the applied fault's
actions joined by '+', e.g. ``"stall_after+drop_after"``, or null).

Tests use :class:`DevServer`, which runs this file as a real subprocess.
"""

from __future__ import annotations

import argparse
import email.utils
import errno
import hmac
import json
import mimetypes
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import BinaryIO, Final

CHUNK: Final = 1 << 20
# Reserved path: DevServer.requests() asks it to wait until no request is mid-flight, so a
# test never reads the log between "client got its last byte" and "server wrote the line".
IDLE_PATH: Final = "/__devserver__/idle"

AUDIO_TYPES: Final[Mapping[str, str]] = {
    ".flac": "audio/flac",
    ".m4a": "audio/mp4",
    ".aiff": "audio/aiff",
    ".aif": "audio/aiff",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
}

FAULT_FIELDS: Final = frozenset(
    {
        "status", "times", "head", "drop_after", "stall_after", "stall_seconds", "rate",
        "content_length", "body", "content_type", "redirect", "delay", "headers", "id",
    }
)  # fmt: skip
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
NO_BODY_STATUSES: Final = frozenset({204, 304})


class FaultsError(ValueError):
    """The faults file (or a set_faults() mapping) is malformed."""


class RangeNotSatisfiable(Exception):
    """The Range header is well formed but lies outside the file."""


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One validated fault entry; ``identity`` keys its ``times`` counter."""

    identity: str
    status: int | None = None
    times: int | None = None
    head: bool = False
    drop_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    rate: int | None = None
    content_length: int | None = None
    body: str | None = None
    content_type: str | None = None
    redirect: str | None = None
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str | None:
        """What the log's "fault" field shows: the active actions, joined by '+'."""
        actions = [
            ("delay", self.delay > 0),
            ("redirect", self.redirect is not None),
            ("status", self.status is not None),
            ("body", self.body is not None),
            ("content_length", self.content_length is not None),
            ("stall_after", self.stall_after is not None),
            ("drop_after", self.drop_after is not None),
            ("rate", self.rate is not None),
            ("headers", bool(self.headers)),
        ]
        return "+".join(name for name, active in actions if active) or None

    @property
    def shapes_body(self) -> bool:
        """Whether the body must go through the slow, byte-counting path instead of sendfile."""
        return any(v is not None for v in (self.drop_after, self.stall_after, self.rate, self.content_length))


def _opt_int(spec: Mapping[str, object], name: str, minimum: int = 0) -> int | None:
    value = spec.get(name)
    if value is None:
        return None
    # bool is an int subclass; "drop_after": true is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultsError(f"{name!r} must be an int >= {minimum}, got {value!r}")
    return value


def _opt_float(spec: Mapping[str, object], name: str) -> float:
    value = spec.get(name, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultsError(f"{name!r} must be a number >= 0, got {value!r}")
    return float(value)


def _opt_str(spec: Mapping[str, object], name: str) -> str | None:
    value = spec.get(name)
    if value is not None and not isinstance(value, str):
        raise FaultsError(f"{name!r} must be a string, got {value!r}")
    return value


def _headers_field(spec: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    value = spec.get("headers", {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FaultsError(f"'headers' must map names to strings, got {value!r}")
    return tuple((str(k), v) for k, v in value.items())


def parse_fault(spec: object) -> Fault:
    """Validate one entry; unknown fields are errors so a typo never silently disables a fault."""
    if not isinstance(spec, Mapping):
        raise FaultsError(f"a fault must be an object, got {spec!r}")
    unknown = set(spec) - FAULT_FIELDS
    if unknown:
        raise FaultsError(f"unknown fault field(s): {sorted(unknown)}")
    head = spec.get("head", False)
    if not isinstance(head, bool):
        raise FaultsError(f"'head' must be a bool, got {head!r}")
    return Fault(
        identity=json.dumps(spec, sort_keys=True, default=str),
        status=_opt_int(spec, "status", minimum=100),
        times=_opt_int(spec, "times"),
        head=head,
        drop_after=_opt_int(spec, "drop_after"),
        stall_after=_opt_int(spec, "stall_after"),
        stall_seconds=_opt_float(spec, "stall_seconds"),
        rate=_opt_int(spec, "rate", minimum=1),
        content_length=_opt_int(spec, "content_length"),
        body=_opt_str(spec, "body"),
        content_type=_opt_str(spec, "content_type"),
        redirect=_opt_str(spec, "redirect"),
        delay=_opt_float(spec, "delay"),
        headers=_headers_field(spec),
    )


def parse_faults(data: object) -> dict[str, Fault]:
    if not isinstance(data, Mapping):
        raise FaultsError("the faults file must hold a JSON object")
    return {str(path): parse_fault(spec) for path, spec in data.items()}


def load_faults(path: Path | None) -> dict[str, Fault]:
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        return parse_faults(json.loads(text) if text.strip() else {})
    except json.JSONDecodeError as exc:
        raise FaultsError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------- small helpers


def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a reader (the server, a test) never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def split_target(target: str) -> tuple[str, str]:
    """Return (decoded path, raw path). Split by hand: urlsplit would read '//x' as a netloc."""
    raw = target.split("#", 1)[0].split("?", 1)[0]
    return urllib.parse.unquote(raw), raw


def resolve_under(root: Path, url_path: str) -> Path | None:
    """The regular file url_path names under root, or None (missing, directory, or escaping)."""
    rel = url_path.lstrip("/")
    if not rel:
        return None
    try:
        candidate = (root / rel).resolve()
        inside = candidate.is_relative_to(root) and candidate.is_file()
    except (OSError, ValueError):  # ValueError: embedded NUL byte
        return None
    return candidate if inside else None


def content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in AUDIO_TYPES:
        return AUDIO_TYPES[suffix]
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def make_etag(st: os.stat_result) -> str:
    # Size + mtime_ns: rewriting a file changes it without hashing gigabytes per request.
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def http_date(st: os.stat_result) -> str:
    return email.utils.formatdate(st.st_mtime, usegmt=True)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) for a single byte range; None means "ignore it, send 200".

    Malformed or multi-range headers are ignored (RFC 9110 allows that); a well-formed range
    outside the file raises RangeNotSatisfiable.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if unit.strip().lower() != "bytes" or not dash or "," in spec:
        return None
    # isascii(): str.isdigit() accepts '²', which int() then rejects.
    if not (first or last) or any(part and not (part.isascii() and part.isdigit()) for part in (first, last)):
        return None
    if not first:  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:  # syntactically invalid, so ignored rather than 416
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(int(last) if last else size - 1, size - 1)


# --------------------------------------------------------------------------- server state


@dataclass
class RequestRecord:
    """One line of the request log, filled in as the response goes out."""

    t: float
    method: str
    path: str
    range: str | None
    if_range: str | None
    auth: str | None
    status: int | None = None
    bytes: int = 0
    fault: str | None = None
    t_end: float | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


class ServerState:
    """Everything shared by the handler threads: config, the times counters, the log."""

    def __init__(
        self,
        root: Path,
        tokens: Sequence[str] = (),
        token_file: Path | None = None,
        faults_file: Path | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.root = root
        self.tokens = tuple(tokens)
        self.token_file = token_file
        self.faults_file = faults_file
        self.log_file = log_file
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition()

    def valid_tokens(self) -> set[str] | None:
        """None means auth is open. A configured but missing/empty token file denies everything,
        so a test rewriting it can never open the server by accident."""
        if not self.tokens and self.token_file is None:
            return None
        valid = set(self.tokens)
        if self.token_file is not None:
            try:
                text = self.token_file.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = ""
            valid.update(line.strip() for line in text.splitlines() if line.strip())
        return valid

    def authorized(self, header: str | None) -> bool:
        valid = self.valid_tokens()
        if valid is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        # compare_digest on every candidate: no early exit that leaks which token is close.
        return any([hmac.compare_digest(token.encode(), v.encode()) for v in valid])

    def pick_fault(self, keys: Sequence[str], head: bool) -> Fault | None:
        """The fault for this request, consuming one of its "times" if it has a budget."""
        faults = load_faults(self.faults_file)
        entry_key = next((k for k in keys if k in faults), "*")
        fault = faults.get(entry_key)
        if fault is None or (head and not fault.head):
            return None
        if fault.times is None:
            return fault
        # Counted per request path and per entry content, so changing an entry re-arms it.
        counter = (keys[0], fault.identity)
        with self._lock:
            used = self._counts.get(counter, 0)
            if used >= fault.times:
                return None
            self._counts[counter] = used + 1
        return fault

    def begin(self) -> None:
        with self._idle:
            self._inflight += 1

    def end(self, record: RequestRecord) -> None:
        # Log before leaving the in-flight count, so wait_idle() implies "the line is written".
        record.t_end = time.time()
        try:
            self.write_log(record)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def write_log(self, record: RequestRecord) -> None:
        if self.log_file is None:
            return
        line = record.to_json() + "\n"
        with self._lock, self.log_file.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()


# --------------------------------------------------------------------------- request handler


class DevRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mixvfs-devserver/1"
    # Headers and a small body go out as two writes; Nagle + delayed ACK would add 40 ms.
    disable_nagle_algorithm = True

    @property
    def state(self) -> ServerState:
        server = self.server
        assert isinstance(server, DevHTTPServer)
        return server.state

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: the JSON log replaces the per-request stderr line."""

    def _handle(self, head: bool) -> None:
        url_path, raw_path = split_target(self.path)
        if url_path == IDLE_PATH:
            self._answer_idle()
            return
        record = RequestRecord(
            t=time.time(),
            method=self.command,
            path=url_path,
            range=self.headers.get("Range"),
            if_range=self.headers.get("If-Range"),
            auth=self.headers.get("Authorization"),
        )
        self.state.begin()
        try:
            self._respond(record, (url_path, raw_path), head)
        except ConnectionError:
            # The client went away mid-response; that is the client's business, not an error.
            self.close_connection = True
        finally:
            self.state.end(record)

    def _answer_idle(self) -> None:
        query = urllib.parse.parse_qs(self.path.partition("?")[2])
        try:
            timeout = float(query.get("timeout", ["2"])[0])
        except ValueError:
            timeout = 2.0
        idle = self.state.wait_idle(timeout)
        body = b"idle\n" if idle else b"busy\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _respond(self, record: RequestRecord, keys: tuple[str, str], head: bool) -> None:
        if not self.state.authorized(record.auth):
            self._send_text(record, 401, "unauthorized\n", head, headers={"WWW-Authenticate": "Bearer"})
            return
        try:
            fault = self.state.pick_fault(keys, head)
        except FaultsError as exc:
            self.log_error("bad faults file: %s", exc)
            self._send_text(record, 500, f"bad faults file: {exc}\n", head)
            return
        if fault is not None:
            record.fault = fault.name
            if fault.delay:
                time.sleep(fault.delay)
            if self._answer_without_file(record, fault, head):
                return
        target = resolve_under(self.state.root, keys[0])
        if target is None:
            self._send_text(record, 404, "not found\n", head, fault=fault)
            return
        self._send_file(record, target, fault, head)

    def _answer_without_file(self, record: RequestRecord, fault: Fault, head: bool) -> bool:
        """Redirect / canned body / bare status faults replace the file entirely."""
        if fault.redirect is not None:
            status = fault.status if fault.status in REDIRECT_STATUSES else 302
            assert status is not None
            self._send_text(record, status, "", head, headers={"Location": fault.redirect}, fault=fault)
            return True
        if fault.body is not None:
            ctype = fault.content_type or "text/html; charset=utf-8"
            self._send_text(record, fault.status or 200, fault.body, head, ctype=ctype, fault=fault)
            return True
        if fault.status is not None:
            text = f"{fault.status} {_phrase(fault.status)}\n"
            extra = {"WWW-Authenticate": "Bearer"} if fault.status == 401 else {}
            self._send_text(record, fault.status, text, head, headers=extra, fault=fault)
            return True
        return False

    def _start(self, record: RequestRecord, status: int, headers: Mapping[str, str], fault: Fault | None) -> None:
        record.status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        for name, value in fault.headers if fault else ():
            self.send_header(name, value)
        self.end_headers()

    def _send_text(
        self,
        record: RequestRecord,
        status: int,
        text: str,
        head: bool,
        *,
        headers: Mapping[str, str] | None = None,
        ctype: str = "text/plain; charset=utf-8",
        fault: Fault | None = None,
    ) -> None:
        body = b"" if status in NO_BODY_STATUSES else text.encode()
        base = {"Content-Type": ctype} if body else {}
        if status not in NO_BODY_STATUSES:
            base["Content-Length"] = str(len(body))
        self._start(record, status, {**base, **(headers or {})}, fault)
        if not head and body:
            self.wfile.write(body)
            record.bytes = len(body)

    def _effective_range(self, etag: str, last_modified: str) -> str | None:
        """The Range header, unless If-Range says the client's copy is stale (then: full body)."""
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if range_header and if_range is not None and if_range.strip() not in (etag, last_modified):
            return None
        return range_header

    def _send_file(self, record: RequestRecord, target: Path, fault: Fault | None, head: bool) -> None:
        try:
            f = target.open("rb")
        except OSError:
            self._send_text(record, 404, "not found\n", head, fault=fault)
            return
        with f:
            st = os.fstat(f.fileno())
            etag, modified = make_etag(st), http_date(st)
            headers = {
                "Content-Type": content_type(target),
                "ETag": etag,
                "Last-Modified": modified,
                "Accept-Ranges": "bytes",
            }
            try:
                byte_range = parse_range(self._effective_range(etag, modified), st.st_size)
            except RangeNotSatisfiable:
                headers = {"Content-Range": f"bytes */{st.st_size}", "ETag": etag}
                self._send_text(record, 416, "range not satisfiable\n", head, headers=headers, fault=fault)
                return
            start, end = byte_range if byte_range else (0, st.st_size - 1)
            length = end - start + 1
            if byte_range:
                headers["Content-Range"] = f"bytes {start}-{end}/{st.st_size}"
            lie = fault.content_length if fault else None
            headers["Content-Length"] = str(length if lie is None else lie)
            if fault is not None and fault.shapes_body and not head:
                # _send_body hangs up afterwards: say so, or a keep-alive client reuses a dead connection.
                headers["Connection"] = "close"
            self._start(record, 206 if byte_range else 200, headers, fault)
            if not head:
                self._send_body(record, f, start, length, fault)

    def _send_body(self, record: RequestRecord, f: BinaryIO, start: int, length: int, fault: Fault | None) -> None:
        if fault is not None and fault.shapes_body:
            self._send_shaped(record, f, start, length, fault)
            # A drop or a Content-Length lie leaves the stream unusable for keep-alive.
            self.close_connection = True
        else:
            self._send_fast(record, f, start, length)

    def _send_fast(self, record: RequestRecord, f: BinaryIO, start: int, length: int) -> None:
        """Zero-copy sendfile (the benchmark pushes a GiB through here); falls back to copying."""
        out_fd, in_fd = self.connection.fileno(), f.fileno()
        while record.bytes < length:
            try:
                sent = os.sendfile(out_fd, in_fd, start + record.bytes, min(length - record.bytes, 1 << 30))
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) or record.bytes:
                    raise
                self._send_copy(record, f, start, length)
                return
            if sent == 0:  # the file shrank under us: Content-Length is now a lie, so hang up
                self.close_connection = True
                return
            record.bytes += sent

    def _send_copy(self, record: RequestRecord, f: BinaryIO, start: int, length: int) -> None:
        f.seek(start + record.bytes)
        while record.bytes < length:
            data = f.read(min(CHUNK, length - record.bytes))
            if not data:
                self.close_connection = True
                return
            self.wfile.write(data)
            record.bytes += len(data)

    def _send_shaped(self, record: RequestRecord, f: BinaryIO, start: int, length: int, fault: Fault) -> None:
        """Byte-exact path for drop/stall/rate/lie faults."""
        limit = length if fault.drop_after is None else min(length, fault.drop_after)
        stall_at = fault.stall_after
        step = CHUNK if fault.rate is None else max(1, min(CHUNK, fault.rate // 10))
        clock = time.monotonic()  # rate reference point; pushed forward by the stall
        f.seek(start)
        while record.bytes < limit:
            if stall_at is not None and record.bytes >= stall_at:
                time.sleep(fault.stall_seconds)
                clock += fault.stall_seconds
                stall_at = None
            n = min(step, limit - record.bytes)
            if stall_at is not None:
                n = min(n, stall_at - record.bytes)
            data = f.read(n)
            if not data:
                return
            self.wfile.write(data)
            record.bytes += len(data)
            if fault.rate is not None and record.bytes < limit:  # no pause after the last byte: t_end is honest
                _sleep_until(clock + record.bytes / fault.rate)
        if stall_at is not None and record.bytes >= stall_at and record.bytes < length:
            # stall_after == drop_after: hold the socket open, then drop.
            time.sleep(fault.stall_seconds)


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Fault"


class DevHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stalled client must never block shutdown
    request_queue_size = 128  # the default 5 makes parallel clients hit SYN retries (1 s stalls)

    def __init__(self, address: tuple[str, int], state: ServerState) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.state = state
        super().__init__(address, DevRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can take seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # client hung up between requests: quiet
        super().handle_error(request, client_address)


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Local stand-in for the Chad Music file server.")
    p.add_argument("root", type=Path, help="directory whose files are served")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 lets the OS pick")
    p.add_argument("--token", action="append", default=[], help="valid bearer token (repeatable)")
    p.add_argument("--token-file", type=Path, help="file holding the valid token, re-read per request")
    p.add_argument("--faults", type=Path, help="JSON faults file, re-read per request")
    p.add_argument("--log", type=Path, help="append one JSON line per request here")
    p.add_argument("--port-file", type=Path, help="write the bound port here (atomically)")
    return p.parse_args(argv)


def _install_stop_handlers(server: DevHTTPServer) -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() blocks until serve_forever() returns, which runs in this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    root = args.root.resolve()
    if not root.is_dir():
        print(f"devserver: not a directory: {root}", file=sys.stderr)
        return 2
    state = ServerState(root, args.token, args.token_file, args.faults, args.log)
    server = DevHTTPServer((args.host, args.port), state)
    # Handlers first: a caller may send SIGTERM the instant it learns the port.
    _install_stop_handlers(server)
    port = int(server.server_address[1])
    if args.port_file:
        write_atomic(args.port_file, str(port))
    print(f"listening on {base_url(args.host, port)}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


# --------------------------------------------------------------------------- test helper


class DevServer:
    """Runs this file as a real subprocess; a context manager for tests and the benchmark."""

    def __init__(
        self,
        root: Path,
        *,
        tokens: Sequence[str] = (),
        token_file: Path | None = None,
        faults: Mapping[str, Mapping[str, object]] | None = None,
        log: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.root = Path(root)
        self.tokens = tuple(tokens)
        self.token_file = token_file
        self.host = host
        self._tmp = tempfile.TemporaryDirectory(prefix="devserver-")
        self.workdir = Path(self._tmp.name)
        self.faults_file = self.workdir / "faults.json"
        self.log_file = log if log is not None else self.workdir / "requests.jsonl"
        self._initial_faults: Mapping[str, Mapping[str, object]] = faults or {}
        self.url = ""
        self.port = 0
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def url_for(self, path: str) -> str:
        return self.url + "/" + urllib.parse.quote(path.lstrip("/"))

    def _command(self, port_file: Path) -> list[str]:
        cmd = [sys.executable, str(Path(__file__).resolve()), str(self.root), "--host", self.host]
        cmd += ["--port", "0", "--port-file", str(port_file)]
        cmd += ["--faults", str(self.faults_file), "--log", str(self.log_file)]
        for token in self.tokens:
            cmd += ["--token", token]
        if self.token_file is not None:
            cmd += ["--token-file", str(self.token_file)]
        return cmd

    def start(self, timeout: float = 10.0) -> DevServer:
        if self._proc is not None:
            raise RuntimeError("DevServer already started")
        self.set_faults(self._initial_faults)
        self.log_file.touch()
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        with (self.workdir / "stdout").open("wb") as out, (self.workdir / "stderr").open("wb") as err:
            # Files, not pipes: nobody drains a pipe while the tests run, and a full one blocks.
            self._proc = subprocess.Popen(self._command(port_file), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.port = self._wait_for_port(port_file, timeout)
        self.url = base_url(self.host, self.port)
        return self

    def _wait_for_port(self, port_file: Path, timeout: float) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.exists():
                return int(port_file.read_text())
            if self._proc.poll() is not None:
                break
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"devserver did not start (exit {self.returncode}):\n{self.stderr()}")

    def stderr(self) -> str:
        path = self.workdir / "stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.returncode = proc.returncode

    def set_faults(self, faults: Mapping[str, Mapping[str, object]]) -> None:
        parse_faults(faults)  # fail in the test, not as a 500 inside the server
        write_atomic(self.faults_file, json.dumps(faults))

    def wait_idle(self, timeout: float = 2.0) -> bool:
        """Wait until no request is mid-response (so its log line exists). False on timeout."""
        if self._proc is None or not self.url:
            return True
        url = f"{self.url}{IDLE_PATH}?timeout={timeout}"
        with urllib.request.urlopen(url, timeout=timeout + 5) as resp:
            return bool(resp.read() == b"idle\n")

    def requests(self, method: str | None = None, path: str | None = None) -> list[dict[str, object]]:
        self.wait_idle()
        lines = self.log_file.read_text(encoding="utf-8").splitlines() if self.log_file.exists() else []
        entries: list[dict[str, object]] = [json.loads(line) for line in lines if line.strip()]
        return [e for e in entries if (method is None or e["method"] == method) and (path is None or e["path"] == path)]

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
