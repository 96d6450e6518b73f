"""The answers: a request's faults applied, then the file (ranges, validators, codings, cut or paced bodies)."""

from __future__ import annotations

import email.utils
import errno
import io
import os
import select
import socket
import socketserver
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO, Final

from tools.devserver.common import CONTROL_PREFIX, HELD_PATH, IDLE_PATH, REARM_PATH, RELEASE_PATH
from tools.devserver.faults import Fault, FaultsError
from tools.devserver.rules import (
    RangeNotSatisfiable,
    Validators,
    content_type,
    encode_body,
    if_range_matches,
    none_match_fails,
    parse_range,
    resolve_under,
    split_target,
    unmodified_since,
)
from tools.devserver.state import RequestRecord, ServerState, ServerStopping

CHUNK: Final = 1 << 20
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
NO_BODY_STATUSES: Final = frozenset({204, 304})


@dataclass
class Representation:
    """The bytes a GET would send (the file, or its encoded form) and the headers describing them."""

    source: BinaryIO
    size: int
    headers: dict[str, str]



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
        if url_path.startswith(CONTROL_PREFIX):
            self._answer_control(url_path)
            return
        record = RequestRecord(
            t=time.time(),
            method=self.command,
            path=url_path,
            range=self.headers.get("Range"),
            if_range=self.headers.get("If-Range"),
            if_none_match=self.headers.get("If-None-Match"),
            if_modified_since=self.headers.get("If-Modified-Since"),
            accept_encoding=self.headers.get("Accept-Encoding"),
            auth=self.headers.get("Authorization"),
            client_port=self.client_address[1] if isinstance(self.client_address, tuple) else None,
        )
        self.state.begin()
        try:
            self._respond(record, (url_path, raw_path), head)
        except (ConnectionError, ServerStopping):
            # The client went away mid-response (its business, not an error), or a held request
            # learnt that the server stops: either way this connection is finished.
            self.close_connection = True
        finally:
            self.state.end(record)

    # ----------------------------------------------------------------------- control endpoints

    def _answer_control(self, url_path: str) -> None:
        query = urllib.parse.parse_qs(self.path.partition("?")[2])
        status, text = self._control_reply(url_path, query)
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _control_reply(self, url_path: str, query: Mapping[str, list[str]]) -> tuple[int, str]:
        timeout = _query_float(query, "timeout", 2.0)
        if url_path == IDLE_PATH:
            return 200, "idle\n" if self.state.wait_idle(timeout) else "busy\n"
        name = query.get("name", [""])[0]
        if not name:
            return 400, "name required\n"
        if url_path == RELEASE_PATH:
            return 200, f"{self.state.release(name)}\n"
        if url_path == REARM_PATH:
            self.state.holds.rearm(name)
            return 200, "0\n"
        if url_path == HELD_PATH:
            count = int(_query_float(query, "count", 0))
            return 200, f"{self.state.holds.wait_parked(name, count, timeout)}\n"
        return 404, "unknown control path\n"

    # ----------------------------------------------------------------------- answers

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
            if fault.hold is not None and fault.hold_after is None:
                self.state.holds.wait(fault.hold, fault.identity)
            if self._answer_without_file(record, fault, head):
                return
        target = resolve_under(self.state.root, keys[0])
        if target is None:
            self._send_text(record, 404, "not found\n", head, fault=fault)
            return
        self._send_file(record, target, fault, head)

    def _answer_without_file(self, record: RequestRecord, fault: Fault, head: bool) -> bool:
        """No-HEAD / redirect / canned body / bare status faults replace the file entirely."""
        if fault.no_head is not None:  # only ever set for a HEAD (Fault.for_request)
            text = f"{fault.no_head} {_phrase(fault.no_head)}\n"
            extra = {"Allow": "GET"} if fault.no_head == 405 else {}
            self._send_text(record, fault.no_head, text, head, headers=extra, fault=fault)
            return True
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
        if fault is not None and fault.retry_after_date is not None:
            # From the second the Date header (sent just above) names, or the next if one ticked since: never
            # earlier than Date + N.
            self.send_header("Retry-After", email.utils.formatdate(int(time.time()) + fault.retry_after_date,
                                                                   usegmt=True))
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

    # ----------------------------------------------------------------------- files

    def _not_modified(self, validators: Validators) -> bool:
        """RFC 9110 §13.2.2: If-None-Match decides when present, else If-Modified-Since."""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            return none_match_fails(if_none_match, validators.etag)
        if_modified_since = self.headers.get("If-Modified-Since")
        return if_modified_since is not None and unmodified_since(if_modified_since, validators.mtime)

    def _select_range(self, validators: Validators, size: int, fault: Fault | None) -> tuple[int, int] | None:
        """The (start, end) to send, or None for the full body; raises RangeNotSatisfiable."""
        if fault is not None and (fault.ignore_range or fault.encoding is not None):
            return None
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if range_header and if_range is not None and not if_range_matches(if_range, validators):
            return None  # the client's copy is stale: full body
        byte_range = parse_range(range_header, size)
        if byte_range is not None and fault is not None and fault.range_early:
            byte_range = (max(0, byte_range[0] - fault.range_early), byte_range[1])
        return byte_range

    def _send_file(self, record: RequestRecord, target: Path, fault: Fault | None, head: bool) -> None:
        try:
            f = target.open("rb")
        except OSError:
            self._send_text(record, 404, "not found\n", head, fault=fault)
            return
        with f:
            st = os.fstat(f.fileno())
            validators = Validators.of(st, fault)
            if self._not_modified(validators):
                self._start(record, 304, validators.headers(), fault)
                return
            rep = _representation(f, target, st, fault)
            try:
                byte_range = self._select_range(validators, rep.size, fault)
            except RangeNotSatisfiable:
                headers = {"Content-Range": f"bytes */{rep.size}", **validators.headers()}
                self._send_text(record, 416, "range not satisfiable\n", head, headers=headers, fault=fault)
                return
            start, end = byte_range if byte_range else (0, rep.size - 1)
            headers = {**rep.headers, **validators.headers()}
            if byte_range:
                headers["Content-Range"] = f"bytes {start}-{end}/{rep.size}"
            headers.update(_framing(end - start + 1, fault, head))
            self._start(record, 206 if byte_range else 200, headers, fault)
            if not head:
                self._send_body(record, rep.source, start, end - start + 1, fault)

    def _send_body(self, record: RequestRecord, src: BinaryIO, start: int, length: int, fault: Fault | None) -> None:
        if fault is not None and fault.after_body is not None:
            # Body and stray bytes in one write, the connection kept alive: the client's recv() that ends
            # the body also brings what no request asked for.
            src.seek(start)
            self.wfile.write(src.read(length) + fault.after_body.encode("latin-1"))
            record.bytes = length
            return
        if fault is None or not fault.copies_body:
            self._send_fast(record, src, start, length)
            return
        write = self._write_chunk if fault.chunked else self.wfile.write
        self._send_shaped(record, src, start, length, fault, write)
        finished = record.bytes == length
        if fault.chunked and finished:
            self.wfile.write(b"0\r\n\r\n")
        if fault.shapes_body or not finished:
            # A drop or a Content-Length lie leaves the stream unusable for keep-alive.
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))  # one write: one chunk on the wire

    def _send_fast(self, record: RequestRecord, f: BinaryIO, start: int, length: int) -> None:
        """Zero-copy sendfile (the benchmark pushes a GiB through here); falls back to copying. Never on TLS
        (``--tls``): sendfile would put the file's plaintext on the wire, past the encryption."""
        if isinstance(self.connection, ssl.SSLSocket):
            self._send_copy(record, f, start, length)
            return
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

    def _send_shaped(
        self,
        record: RequestRecord,
        src: BinaryIO,
        start: int,
        length: int,
        fault: Fault,
        write: Callable[[bytes], object],
    ) -> None:
        """Byte-exact path for drop/stall/hold/rate/lie faults, chunked and encoded bodies.

        Pauses (stall, hold) happen when exactly their offset has been sent, and only if bytes
        remain; the rate clock moves forward by the time paused, so pacing resumes steadily.
        With ``rate`` it sends rate/10-byte pieces and sleeps until each is due: no busy wait.
        """
        limit = length if fault.drop_after is None else min(length, fault.drop_after)
        pauses = self._pauses(fault, length, record)
        step = CHUNK if fault.rate is None else max(1, min(CHUNK, fault.rate // 10))
        clock = time.monotonic()  # rate reference point
        src.seek(start)
        while True:
            clock += _run_due_pauses(pauses, record.bytes)
            if record.bytes >= limit:
                return
            n = min(step, limit - record.bytes, *(offset - record.bytes for offset, _ in pauses[:1]))
            data = src.read(n)
            if not data:
                return
            write(data)
            record.bytes += len(data)
            if fault.rate is not None and record.bytes < limit:  # no pause after the last byte: t_end is honest
                _sleep_until(clock + record.bytes / fault.rate)

    def _pauses(self, fault: Fault, length: int, record: RequestRecord) -> list[tuple[int, Callable[[], None]]]:
        """(offset, action) for the stall and the hold, in offset order; none at or past the end."""
        pauses: list[tuple[int, Callable[[], None]]] = []
        if fault.stall_after is not None and fault.stall_after < length:
            pauses.append((fault.stall_after, lambda: time.sleep(fault.stall_seconds)))
        hold = fault.hold
        if hold is not None and fault.hold_after is not None and fault.hold_after < length:
            pauses.append((fault.hold_after,
                           lambda: self.state.holds.wait(hold, fault.identity, gone=lambda: self._gone(record))))
        return sorted(pauses, key=lambda pause: pause[0])

    def _gone(self, record: RequestRecord) -> bool:
        """Whether the client closed the connection (read side at its end); logs when, as ``t_gone``. A
        parked request learns it no other way: nothing is written until the release."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            closed = bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except ValueError:  # a TLS socket takes no recv flags: not told
            return False
        except OSError:
            closed = True
        if closed:
            record.t_gone = time.time()
        return closed


def _representation(f: BinaryIO, target: Path, st: os.stat_result, fault: Fault | None) -> Representation:
    """The file as sent: as is, or compressed whole under an ``encoding`` fault (Range then ignored)."""
    headers = {"Content-Type": content_type(target)}
    if fault is None or fault.encoding is None:
        if fault is None or not fault.ignore_range:
            headers["Accept-Ranges"] = "bytes"  # servers that ignore Range (or compress) do not claim it
        return Representation(f, st.st_size, headers)
    encoded = encode_body(f.read(), fault.encoding)
    headers["Content-Encoding"] = fault.encoding.split("-")[0]  # gzip-members, gzip-cut: gzip
    return Representation(io.BytesIO(encoded), len(encoded), headers)


def _framing(length: int, fault: Fault | None, head: bool) -> dict[str, str]:
    """How the body's end is marked: Content-Length (maybe a lie) or chunked, plus Connection: close
    when the body is cut or paced (the handler hangs up afterwards; a keep-alive client must know)."""
    if fault is None:
        return {"Content-Length": str(length)}
    framing = {}
    if fault.chunked and not head:
        framing["Transfer-Encoding"] = "chunked"
    else:
        framing["Content-Length"] = str(length if fault.content_length is None else fault.content_length)
    if fault.shapes_body and not head:
        framing["Connection"] = "close"
    return framing


def _run_due_pauses(pauses: list[tuple[int, Callable[[], None]]], sent: int) -> float:
    """Run (and drop) the pauses whose offset has been reached; return the seconds they took."""
    began = time.monotonic()
    while pauses and pauses[0][0] <= sent:
        pauses.pop(0)[1]()
    return time.monotonic() - began


def _query_float(query: Mapping[str, list[str]], name: str, default: float) -> float:
    try:
        return float(query.get(name, [str(default)])[0])
    except ValueError:
        return default


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


