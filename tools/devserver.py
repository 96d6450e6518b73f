#!/usr/bin/env python3
"""Local stand-in for the "Chad Music" file server (stdlib only).

Serves the files under ROOT at their relative URL path, with the behaviour mixvfs relies on:
bearer-token auth (static tokens and/or a token file re-read on every request), single byte
ranges, ``If-Range`` (strong comparison: a weak tag never matches), conditional requests
(``If-None-Match`` with weak comparison, else ``If-Modified-Since``: 304 with the validators),
stable ETags (size + mtime_ns, so a file replaced on disk gets a new one), a JSON-lines request
log and scriptable faults.

    python tools/devserver.py ROOT [--host 127.0.0.1] [--port 0] [--token T ...] [--token-file F]
                              [--faults FILE] [--log FILE] [--port-file F]

Faults file (re-read on every request, so rewrite it atomically): ``{"<url path>": {fields}}``,
where the key ``"*"`` applies to every path without its own entry. Unknown fields are errors.
Fields, all optional:

* ``status``, ``body`` + ``content_type``, ``redirect``: answer with that instead of the file.
* ``times``: how many requests the entry acts on, then it is inert (see below) — or, with ``then``
  (an entry of its own), ``then`` applies from there on: ``{"drop_after": 1024, "times": 1, "then":
  {"weak_etag": true}}`` cuts the first response and keeps the weak ETags for good.
* ``head``: true applies the whole entry to HEAD too; without it a HEAD gets only the header
  habits below (``encoding``, ``ignore_range``, ``range_early``, ``weak_etag``, ``etag``,
  ``no_validators``, ``no_head``, and ``hold`` with ``hold_head``).
* ``drop_after`` (hang up after N body bytes), ``stall_after`` + ``stall_seconds``, ``rate``
  (bytes/s, slow but steady), ``content_length`` (a lying Content-Length), ``delay`` (seconds
  before anything is sent), ``headers`` (extra response headers, e.g. ``{"Retry-After": "1"}``),
  ``id`` (ignored, but it makes an entry distinct so its ``times`` budget and holds start again).
  ``retry_after_date``: N sends ``Retry-After`` as an HTTP-date N seconds after the response's ``Date``
  (the other form, delta-seconds, is ``headers: {"Retry-After": "N"}``).
* ``encoding``: ``"gzip"`` | ``"deflate"`` | ``"br"`` (``br`` only if the brotli module imports):
  the body is compressed and sent with ``Content-Encoding`` whatever Accept-Encoding says (a
  misconfigured CDN). Content-Length is the compressed length (HEAD too); Range is ignored (200)
  and Accept-Ranges left out. The ETag stays strong unless ``weak_etag`` is added. Two broken-or-odd
  gzip bodies, both sent as ``Content-Encoding: gzip``: ``"gzip-members"`` compresses each half of
  the file as a member of its own (``cat a.gz b.gz``, valid gzip), ``"gzip-cut"`` sends the first
  half of the compressed stream as if it were all of it (a complete HTTP body, an incomplete gzip).
* ``ignore_range``: true answers 200 with the full body even when a Range is sent (no Accept-Ranges).
* ``range_early``: N makes every 206 start N bytes before the asked first byte (max(0, S-N)),
  with a truthful Content-Range.
* ``weak_etag``: true sends the ETag as ``W/"..."`` (so If-Range never matches it).
* ``etag``: a string sent as the ETag instead of the computed one (If-Range compares against it).
* ``no_validators``: true sends neither ETag nor Last-Modified.
* ``after_body``: a string (latin-1) written right after the body, in the same write, on a connection
  kept alive: stray bytes no request asked for, e.g. a whole second response.
* ``no_head``: 405 or 501 answers HEAD with that status (405 with ``Allow: GET``); the
  Content-Length is the error text's, never the file's. GET is untouched.
* ``chunked``: true sends a GET body (200 or 206) with ``Transfer-Encoding: chunked`` and no
  Content-Length; combines with ``rate``, ``drop_after`` (no last chunk), ``encoding``, holds.
  HEAD keeps its Content-Length (add ``no_head`` for a server that never tells the size).
* ``hold``: NAME parks the response before its headers until the test releases NAME (GET only;
  ``hold_head``: true parks HEAD too). ``hold_after``: K sends the headers and the first K body
  bytes, then parks (only when the body is longer than K; file bodies only). Release with
  ``GET /__devserver__/release?name=NAME`` (:meth:`DevServer.release`). A release is sticky for
  the entries it covers (those in the faults file at release time and those of the requests it
  freed): later requests of that entry pass at once, until ``/__devserver__/rearm?name=NAME``
  (:meth:`DevServer.rearm`) or the entry changes (e.g. a new ``id``). ``/__devserver__/held?
  name=NAME&count=C&timeout=T`` answers the number of requests parked on NAME once it is >= C
  (:meth:`DevServer.wait_held`). Stopping the server ends parked requests (connection closed).

Faults are applied after auth: an unauthenticated request gets its 401 and consumes nothing.
``times`` is counted per request path and per entry content (rewriting the same entry keeps
its count; changing any field, e.g. ``id``, starts a fresh budget), and only for requests the
entry acts on (a HEAD consumes nothing from an entry that does nothing to HEADs).

Log (``--log``): one JSON object per request, written when the response is finished:
``t`` (request start, epoch seconds), ``t_end`` (response finished), ``method``, ``path`` (URL-decoded,
no query), the request headers ``range``, ``if_range``, ``if_none_match``, ``if_modified_since``,
``accept_encoding``, ``auth``, then ``status``, ``bytes`` (body bytes sent: compressed bytes with
``encoding``, payload without chunk framing with ``chunked``), ``fault`` (the actions applied to
this request joined by '+', e.g. ``"stall_after+drop_after"`` or ``"encoding+chunked"``, or null).

Tests use :class:`DevServer`, which runs this file as a real subprocess.
"""

from __future__ import annotations

import argparse
import email.utils
import errno
import gzip
import hmac
import importlib
import importlib.util
import io
import json
import mimetypes
import os
import re
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
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, BinaryIO, Final, cast

CHUNK: Final = 1 << 20
# Reserved paths, answered before auth and never logged. IDLE_PATH lets DevServer.requests() wait
# until no request is mid-flight, so a test never reads the log between "client got its last byte"
# and "server wrote the line"; the others drive the "hold" gates.
CONTROL_PREFIX: Final = "/__devserver__/"
IDLE_PATH: Final = CONTROL_PREFIX + "idle"
RELEASE_PATH: Final = CONTROL_PREFIX + "release"
REARM_PATH: Final = CONTROL_PREFIX + "rearm"
HELD_PATH: Final = CONTROL_PREFIX + "held"

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
        "encoding", "ignore_range", "weak_etag", "no_head", "chunked", "no_validators", "etag",
        "range_early", "hold", "hold_head", "hold_after", "then", "after_body", "retry_after_date",
    }
)  # fmt: skip
ENCODINGS: Final = ("gzip", "deflate", "br", "gzip-members", "gzip-cut")
NO_HEAD_STATUSES: Final = frozenset({405, 501})
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
NO_BODY_STATUSES: Final = frozenset({204, 304})


class FaultsError(ValueError):
    """The faults file (or a set_faults() mapping) is malformed."""


class RangeNotSatisfiable(Exception):
    """The Range header is well formed but lies outside the file."""


class ServerStopping(Exception):
    """A held request learns that the server is shutting down: it hangs up instead of answering."""


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One validated fault entry; ``identity`` keys its ``times`` counter and its hold releases."""

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
    encoding: str | None = None
    ignore_range: bool = False
    weak_etag: bool = False
    no_head: int | None = None
    chunked: bool = False
    no_validators: bool = False
    etag: str | None = None
    range_early: int | None = None
    hold: str | None = None
    hold_head: bool = False
    hold_after: int | None = None
    after_body: str | None = None
    retry_after_date: int | None = None
    then: Fault | None = None  # applies once ``times`` is used up (e.g. cut once, then a habit for good)

    @property
    def name(self) -> str | None:
        """What the log's "fault" field shows: the active actions, joined by '+'."""
        actions = [
            ("delay", self.delay > 0),
            ("hold", self.hold is not None),
            ("no_head", self.no_head is not None),
            ("redirect", self.redirect is not None),
            ("status", self.status is not None),
            ("body", self.body is not None),
            ("content_length", self.content_length is not None),
            ("encoding", self.encoding is not None),
            ("chunked", self.chunked),
            ("ignore_range", self.ignore_range),
            ("range_early", self.range_early is not None),
            ("weak_etag", self.weak_etag),
            ("etag", self.etag is not None),
            ("no_validators", self.no_validators),
            ("stall_after", self.stall_after is not None),
            ("drop_after", self.drop_after is not None),
            ("rate", self.rate is not None),
            ("headers", bool(self.headers)),
            ("retry_after_date", self.retry_after_date is not None),
            ("after_body", self.after_body is not None),
        ]
        return "+".join(name for name, active in actions if active) or None

    @property
    def shapes_body(self) -> bool:
        """Whether the body is cut, paced or paused: byte-counted, and the connection closed afterwards."""
        shaping = (self.drop_after, self.stall_after, self.rate, self.content_length, self.hold_after)
        return any(v is not None for v in shaping)

    @property
    def copies_body(self) -> bool:
        """Whether the body must be copied through Python instead of sendfile."""
        return self.shapes_body or self.chunked or self.encoding is not None

    def for_request(self, head: bool) -> Fault:
        """The part of this entry that acts on a GET or a HEAD.

        ``no_head`` never touches a GET. A HEAD gets the whole entry only with ``head``: true,
        otherwise just the header habits (a server's habits show in its HEAD answers too); it is
        held only with ``hold_head``, and always before its headers (it has no body to cut).
        """
        if not head:
            return replace(self, no_head=None)
        view = self
        if not self.head:
            view = replace(
                self, status=None, body=None, redirect=None, delay=0.0, headers=(), content_length=None,
                drop_after=None, stall_after=None, rate=None,
            )  # fmt: skip
        if not self.hold_head:
            return replace(view, hold=None, hold_after=None)
        return replace(view, hold_after=None)


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


def _opt_name(spec: Mapping[str, object], name: str) -> str | None:
    """A string that means something when present ("hold", "etag"): empty is a mistake."""
    value = _opt_str(spec, name)
    if value == "":
        raise FaultsError(f"{name!r} must not be empty")
    return value


def _opt_bool(spec: Mapping[str, object], name: str) -> bool:
    value = spec.get(name, False)
    if not isinstance(value, bool):
        raise FaultsError(f"{name!r} must be a bool, got {value!r}")
    return value


def _headers_field(spec: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    value = spec.get("headers", {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FaultsError(f"'headers' must map names to strings, got {value!r}")
    return tuple((str(k), v) for k, v in value.items())


def brotli_available() -> bool:
    return importlib.util.find_spec("brotli") is not None


def _encoding_field(spec: Mapping[str, object]) -> str | None:
    value = spec.get("encoding")
    if value is None:
        return None
    if value not in ENCODINGS:
        raise FaultsError(f"'encoding' must be one of {list(ENCODINGS)}, got {value!r}")
    if value == "br" and not brotli_available():
        raise FaultsError("'encoding': 'br' needs the brotli module, which is unavailable here")
    return str(value)


def _no_head_field(spec: Mapping[str, object]) -> int | None:
    value = spec.get("no_head")
    if value is not None and (isinstance(value, bool) or value not in NO_HEAD_STATUSES):
        raise FaultsError(f"'no_head' must be one of {sorted(NO_HEAD_STATUSES)}, got {value!r}")
    return value if isinstance(value, int) else None


def _check_combination(fault: Fault) -> None:
    """Reject entries whose fields contradict each other, rather than guess which one wins."""
    if fault.chunked and fault.content_length is not None:
        raise FaultsError("'chunked' sends no Content-Length, so 'content_length' cannot go with it")
    if fault.hold is None and (fault.hold_after is not None or fault.hold_head):
        raise FaultsError("'hold_after' and 'hold_head' need 'hold'")
    if fault.hold_after is not None and (fault.status, fault.body, fault.redirect) != (None, None, None):
        raise FaultsError("'hold_after' needs a file body; use 'hold' alone with status/body/redirect")


def _then_field(spec: Mapping[str, object]) -> Fault | None:
    if "then" not in spec:
        return None
    if "times" not in spec:
        raise FaultsError("'then' needs 'times': it is what applies once they are used up")
    return parse_fault(spec["then"])


FieldReader = Callable[[Mapping[str, object], str], Any]  # the value is checked by the reader, typed by Fault
# How each field is read and checked (``then`` is a whole entry of its own: see _then_field).
FIELD_READERS: Final[Mapping[str, FieldReader]] = {
    "status": lambda spec, name: _opt_int(spec, name, minimum=100),
    "times": _opt_int,
    "head": _opt_bool,
    "drop_after": _opt_int,
    "stall_after": _opt_int,
    "stall_seconds": _opt_float,
    "rate": lambda spec, name: _opt_int(spec, name, minimum=1),
    "content_length": _opt_int,
    "body": _opt_str,
    "content_type": _opt_str,
    "redirect": _opt_str,
    "delay": _opt_float,
    "headers": lambda spec, _name: _headers_field(spec),
    "encoding": lambda spec, _name: _encoding_field(spec),
    "ignore_range": _opt_bool,
    "weak_etag": _opt_bool,
    "no_head": lambda spec, _name: _no_head_field(spec),
    "chunked": _opt_bool,
    "no_validators": _opt_bool,
    "etag": _opt_name,
    "range_early": _opt_int,
    "hold": _opt_name,
    "hold_head": _opt_bool,
    "hold_after": _opt_int,
    "after_body": _opt_str,
    "retry_after_date": _opt_int,
}


def parse_fault(spec: object) -> Fault:
    """Validate one entry; unknown fields are errors so a typo never silently disables a fault."""
    if not isinstance(spec, Mapping):
        raise FaultsError(f"a fault must be an object, got {spec!r}")
    unknown = set(spec) - FAULT_FIELDS
    if unknown:
        raise FaultsError(f"unknown fault field(s): {sorted(unknown)}")
    fields = {name: read(spec, name) for name, read in FIELD_READERS.items()}
    fault = Fault(identity=json.dumps(spec, sort_keys=True, default=str), **fields, then=_then_field(spec))
    _check_combination(fault)
    return fault


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


def encode_body(data: bytes, coding: str) -> bytes:
    """Compress with an HTTP content coding ("deflate" is the zlib format, RFC 9110 §8.4.1.2).

    Level 1: the whole file is compressed for every GET and HEAD, and tests want bytes, not ratio.
    """
    if coding == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if coding == "gzip-members":
        half = len(data) // 2
        return gzip.compress(data[:half], compresslevel=1, mtime=0) + gzip.compress(data[half:], 1, mtime=0)
    if coding == "gzip-cut":
        whole = gzip.compress(data, compresslevel=1, mtime=0)
        return whole[:len(whole) // 2]
    if coding == "deflate":
        return zlib.compress(data, 1)
    brotli = importlib.import_module("brotli")  # parse_fault only lets "br" through if it imports
    return bytes(brotli.compress(data, quality=1))


@dataclass(frozen=True)
class Validators:
    """What the server says about the version it serves; None where a fault withholds it."""

    etag: str | None
    last_modified: str | None
    mtime: int | None  # whole seconds, as Last-Modified says

    @classmethod
    def of(cls, st: os.stat_result, fault: Fault | None) -> Validators:
        if fault is not None and fault.no_validators:
            return cls(None, None, None)
        etag = fault.etag if fault is not None and fault.etag is not None else make_etag(st)
        if fault is not None and fault.weak_etag and not etag.startswith("W/"):
            etag = "W/" + etag
        return cls(etag, http_date(st), int(st.st_mtime))

    def headers(self) -> dict[str, str]:
        pairs = (("ETag", self.etag), ("Last-Modified", self.last_modified))
        return {name: value for name, value in pairs if value is not None}


def entity_tags(header: str) -> list[str]:
    """The tags of an If-None-Match list; a quoted tag may hold commas, so split by pattern."""
    return re.findall(r'(?:W/)?"[^"]*"|[^\s,]+', header)


def _opaque(tag: str) -> str:
    return tag.removeprefix("W/")


def none_match_fails(header: str, etag: str | None) -> bool:
    """Whether If-None-Match says the client already holds this version (RFC 9110 §13.1.2: weak comparison)."""
    tags = entity_tags(header)
    if "*" in tags:
        return True  # "*" matches any current representation, and the file exists
    return etag is not None and any(_opaque(tag) == _opaque(etag) for tag in tags)


def unmodified_since(header: str, mtime: int | None) -> bool:
    """Whether If-Modified-Since says the client's copy is current; an invalid date is ignored."""
    if mtime is None:
        return False
    try:
        since = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:  # "-0000" parses as naive; HTTP dates are UTC
        since = since.replace(tzinfo=UTC)
    return mtime <= since.timestamp()


def if_range_matches(header: str, validators: Validators) -> bool:
    """RFC 9110 §13.1.5: a tag must match by strong comparison, so a weak one (either side) never
    does; a date must equal Last-Modified exactly."""
    value = header.strip()
    if value.startswith("W/"):
        return False
    etag = validators.etag
    if etag is not None and not etag.startswith("W/") and value == etag:
        return True
    return validators.last_modified is not None and value == validators.last_modified


@dataclass
class Representation:
    """The bytes a GET would send (the file, or its encoded form) and the headers describing them."""

    source: BinaryIO
    size: int
    headers: dict[str, str]


# --------------------------------------------------------------------------- server state


@dataclass
class RequestRecord:
    """One line of the request log, filled in as the response goes out."""

    t: float
    method: str
    path: str
    range: str | None
    if_range: str | None
    if_none_match: str | None
    if_modified_since: str | None
    accept_encoding: str | None
    auth: str | None
    status: int | None = None
    bytes: int = 0
    fault: str | None = None
    t_end: float | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


class Holds:
    """Named gates for the "hold" fault: a request parks on NAME until the test releases NAME.

    A release is sticky per fault entry (its identity), so a later request of the same entry passes,
    while a changed entry (a new "id") or rearm() parks again. Each parked request has its own Event:
    a rearm() right after a release can never re-park a request the release already freed.
    Shares the server's idle Condition: a parked request does not count as busy for wait_idle().
    """

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._open: dict[str, set[str]] = {}
        self._parked: dict[str, list[tuple[str, threading.Event]]] = {}
        self._stopping = False

    def wait(self, name: str, identity: str) -> None:
        """Return once NAME is released for this entry; raise ServerStopping if the server stops."""
        gate = (identity, threading.Event())
        with self._cond:
            if self._stopping:
                raise ServerStopping
            if identity in self._open.get(name, ()):
                return
            self._parked.setdefault(name, []).append(gate)
            self._cond.notify_all()
        gate[1].wait()  # no timeout: release() or stop() sets it
        with self._cond:
            if gate in self._parked.get(name, []):
                self._parked[name].remove(gate)
                self._cond.notify_all()
            if self._stopping:
                raise ServerStopping

    def release(self, name: str, identities: Iterable[str]) -> int:
        """Open NAME for these entries and for every request parked on it; return how many were freed."""
        with self._cond:
            opened = self._open.setdefault(name, set())
            opened.update(identities)
            freed = self._parked.pop(name, [])
            for identity, event in freed:
                opened.add(identity)
                event.set()
            self._cond.notify_all()
            return len(freed)

    def rearm(self, name: str) -> None:
        with self._cond:
            self._open.pop(name, None)

    def total_parked(self) -> int:
        with self._cond:
            return sum(len(waiters) for waiters in self._parked.values())

    def wait_parked(self, name: str, count: int, timeout: float) -> int:
        """Wait until at least COUNT requests are parked on NAME (or the timeout); return the number."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._parked.get(name, [])) >= count, timeout)
            return len(self._parked.get(name, []))

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for waiters in self._parked.values():
                for _, event in waiters:
                    event.set()
            self._cond.notify_all()


@dataclass(frozen=True)
class ServerConfig:
    """What the command line says: the files served, who may read them, the faults file and the log."""

    root: Path
    tokens: tuple[str, ...]
    token_file: Path | None
    faults_file: Path | None
    log_file: Path | None


class ServerState:
    """Everything shared by the handler threads: config, the times counters, the log."""

    def __init__(self, config: ServerConfig) -> None:
        self.root, self.tokens, self.token_file = config.root, config.tokens, config.token_file
        self.faults_file, self.log_file = config.faults_file, config.log_file
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._inflight = 0
        # Shared with Holds, so parking wakes wait_idle(); an RLock because wait_idle()'s predicate
        # asks Holds.total_parked(), which takes the same lock again.
        self._idle = threading.Condition(threading.RLock())
        self.holds = Holds(self._idle)

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
        entry = faults.get(entry_key)
        fault = entry.for_request(head) if entry is not None else None
        if fault is None or fault.name is None:  # nothing to do to this request: consume nothing
            return None
        if fault.times is None:
            return fault
        # Counted per request path and per entry content, so changing an entry re-arms it.
        counter = (keys[0], fault.identity)
        with self._lock:
            used = self._counts.get(counter, 0)
            if used >= fault.times:
                then = fault.then.for_request(head) if fault.then is not None else None
                return then if then is not None and then.name is not None else None
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
            # A parked request writes nothing until the test releases it: it is not "mid-flight".
            return self._idle.wait_for(lambda: self._inflight == self.holds.total_parked(), timeout)

    def release(self, name: str) -> int:
        """Release NAME for the entries now in the faults file that hold on it, and for parked requests."""
        try:
            faults = load_faults(self.faults_file)
        except FaultsError:
            faults = {}  # the parked requests are still freed; the 500s will tell the test
        return self.holds.release(name, {f.identity for f in faults.values() if f.hold == name})

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
        pauses = self._pauses(fault, length)
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

    def _pauses(self, fault: Fault, length: int) -> list[tuple[int, Callable[[], None]]]:
        """(offset, action) for the stall and the hold, in offset order; none at or past the end."""
        pauses: list[tuple[int, Callable[[], None]]] = []
        if fault.stall_after is not None and fault.stall_after < length:
            pauses.append((fault.stall_after, lambda: time.sleep(fault.stall_seconds)))
        hold = fault.hold
        if hold is not None and fault.hold_after is not None and fault.hold_after < length:
            pauses.append((fault.hold_after, lambda: self.state.holds.wait(hold, fault.identity)))
        return sorted(pauses, key=lambda pause: pause[0])


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


# --------------------------------------------------------------------------- CLI


_EPILOG = """\
How URLs map to files: GET or HEAD /PATH serves ROOT/PATH (URL-decoded); folders, missing
files and paths leading out of ROOT answer 404. So a manifest with "server": "http://127.0.0.1:8765"
and a track with "cloud_stream_path": "/stream/hook.flac" gets ROOT/stream/hook.flac.

Example (Ctrl-C stops it):
  python tools/devserver.py ~/mixvfs-try/server --port 8765 --token try-me

With --faults FILE it misbehaves on purpose (errors, cut or slow bodies, odd headers), to reproduce a
problem: README.md, "Reproducing a problem: the dev server's faults file", lists every field with an
example. The request log and the test controls are described at the top of this file."""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Local stand-in for the Chad Music file server: serves the files under ROOT over HTTP,\n"
                    "with byte ranges, ETags and conditional requests, as mixvfs expects of a server.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, metavar="ROOT", help="folder whose files are served")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=0,
                   help="port to listen on (default: 0, a free port the OS picks; the first line printed, "
                        "'listening on URL', says which)")
    p.add_argument("--token", action="append", default=[],
                   help="a bearer token to accept (repeatable); with no --token and no --token-file every "
                        "request is served without one")
    p.add_argument("--token-file", type=Path, help="file holding the valid token, re-read per request")
    p.add_argument("--faults", type=Path, help="JSON faults file, re-read per request")
    p.add_argument("--log", type=Path, help="append one JSON line per request here")
    p.add_argument("--port-file", type=Path, help="write the bound port here (atomically)")
    return p.parse_args(argv)


def _install_stop_handlers(server: DevHTTPServer) -> None:
    def shut_down() -> None:
        server.state.holds.stop()  # parked requests hang up instead of outliving the server
        server.shutdown()

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() blocks until serve_forever() returns, which runs in this very thread.
        threading.Thread(target=shut_down, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    root = args.root.resolve()
    if not root.is_dir():
        print(f"devserver: not a directory: {root}", file=sys.stderr)
        return 2
    state = ServerState(ServerConfig(root, tuple(args.token), args.token_file, args.faults, args.log))
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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _control(self, path: str, timeout: float = 0.0, **params: object) -> str:
        """Ask a reserved endpoint; the server may wait up to `timeout` before answering."""
        if self._proc is None or not self.url:
            raise RuntimeError("DevServer is not running")
        query = urllib.parse.urlencode({"timeout": timeout, **params})
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=timeout + 10) as resp:
            return str(resp.read().decode())

    def wait_idle(self, timeout: float = 2.0) -> bool:
        """Wait until no request is mid-response (so its log line exists); requests parked on a
        hold do not count. False on timeout."""
        if self._proc is None or not self.url:
            return True
        return self._control(IDLE_PATH, timeout) == "idle\n"

    def release(self, name: str) -> int:
        """Let requests held on NAME go on (sticky, see the module doc); return how many were parked."""
        return int(self._control(RELEASE_PATH, name=name))

    def rearm(self, name: str) -> None:
        """Make NAME hold again: undo the stickiness of earlier releases."""
        self._control(REARM_PATH, name=name)

    def held(self, name: str) -> int:
        """How many requests are parked on NAME right now."""
        return int(self._control(HELD_PATH, name=name, count=0))

    def wait_held(self, name: str, count: int = 1, timeout: float = 30.0) -> int:
        """Block until at least COUNT requests are parked on NAME; return the number parked.
        The timeout is a hang guard: reaching it raises TimeoutError."""
        parked = int(self._control(HELD_PATH, timeout, name=name, count=count))
        if parked < count:
            raise TimeoutError(f"{parked} of {count} request(s) parked on hold {name!r} after {timeout} s")
        return parked

    def requests(self, method: str | None = None, path: str | None = None) -> list[dict[str, object]]:
        """The log entries in request-start order. The file is in finishing order: a line is written
        after the last byte, so a client's next request (another connection) can log first."""
        self.wait_idle()
        lines = self.log_file.read_text(encoding="utf-8").splitlines() if self.log_file.exists() else []
        entries: list[dict[str, object]] = [json.loads(line) for line in lines if line.strip()]
        entries.sort(key=lambda entry: cast(float, entry["t"]))
        return [e for e in entries if (method is None or e["method"] == method) and (path is None or e["path"] == path)]

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
