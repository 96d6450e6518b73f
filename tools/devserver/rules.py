"""HTTP's rules as the server applies them: paths to files, byte ranges, validators and conditional requests,
content codings."""

from __future__ import annotations

import email.utils
import gzip
import importlib
import mimetypes
import os
import re
import urllib.parse
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Final

from tools.devserver.faults import Fault

AUDIO_TYPES: Final[Mapping[str, str]] = {
    ".flac": "audio/flac",
    ".m4a": "audio/mp4",
    ".aiff": "audio/aiff",
    ".aif": "audio/aiff",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
}


class RangeNotSatisfiable(Exception):
    """The Range header is well formed but lies outside the file."""



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


