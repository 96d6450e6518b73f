"""The session manifest MixBoard writes: parsing and validation.

Every problem is reported as one line that names the track (index and id) and the field, and nothing is
mounted: an export that silently misses a track is exactly the bug mixvfs exists to fix.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from mixvfs.cache.errors import MixvfsError

MAX_MANIFEST_BYTES = 256 << 20
MAX_FIELD_CHARS = 1 << 20  # a megabyte string is sanitised (names are cut to 255 bytes), not fatal; more is abuse


class ManifestError(MixvfsError):
    """The manifest cannot be used; the message names the track and field."""


@dataclass(frozen=True, slots=True)
class TrackSpec:
    index: int
    id: str
    artist: str | None
    title: str | None
    file_path: Path | None
    # The 'cloud_stream_path' as written (``stream_path``); where the URL ends with it (a path joined to the
    # server, or a URL itself), only its length: the string again was 7 MB of a 100 000-track mount.
    stream: str | int | None
    cloud_url: str | None
    size: int | None
    content_type: str | None

    @property
    def stream_path(self) -> str | None:
        stream = self.stream
        if isinstance(stream, int):
            return self.cloud_url[len(self.cloud_url) - stream:] if self.cloud_url is not None else None
        return stream

    @property
    def label(self) -> str:
        return f"track {self.index} (id {self.id!r})"

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Session:
    name: str
    server: str | None
    tracks: tuple[TrackSpec, ...]
    path: Path
    mtime: float


def load_manifest(path: Path, *, default_server: str | None = None) -> Session:
    """``default_server`` (from the config) serves manifests that name no ``server``; theirs wins."""
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror}") from None
    # Read in the call: no reference stays here, so parse_manifest can free the bytes once decoded (a
    # 100 000-track manifest is 15 MB, twice over as text).
    return parse_manifest(_read_manifest(path), base_dir=path.resolve().parent, origin=str(path), mtime=mtime,
                          default_server=default_server)


def _read_manifest(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: the manifest is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    return data


def parse_manifest(data: bytes, *, base_dir: Path, origin: str = "manifest", mtime: float = 0.0,
                   default_server: str | None = None) -> Session:
    try:
        text = data.decode("utf-8")
        del data  # the bytes, the text and the parsed tracks would otherwise all be alive at the peak
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{origin}: not UTF-8 text (byte {exc.start})") from None
    session = _parse_track_by_track(text, base_dir, origin, mtime, default_server)
    if session is not None:
        return session
    try:
        doc = json.loads(text)
        del text
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{origin}: {json_error_text(exc)}") from None
    return _parse_document(doc, base_dir, origin, mtime, default_server)


_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's, as json.loads skips it


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos  # it always matches, if only the empty string


def _parse_track_by_track(text: str, base_dir: Path, origin: str, mtime: float,
                          default_server: str | None) -> Session | None:
    """The manifest decoded one track at a time: each track's dict is made, parsed and let go before the
    next, so a 100 000-track session never holds the whole document as dicts (its freed dicts left about
    300 bytes per track of the daemon's memory unusable for anything else). None: anything but a valid
    manifest whose 'server', if it names one, precedes its 'tracks' (the tracks are read with the server known
    at that point) -- then the whole-document path reads it and says exactly what is wrong, in the order it
    always has."""
    # One scanner per call: its key memo is not shared between threads (typeshed does not declare scan_once).
    scan: Callable[[str, int], tuple[Any, int]] = cast(Any, json.JSONDecoder()).scan_once
    fields: dict[str, Any] = {}
    specs: list[TrackSpec] | None = None
    try:
        pos = _skip(text, 0)
        if text[pos] != "{":
            return None
        pos = _skip(text, pos + 1)
        while True:
            if text[pos] != '"':
                return None
            key, pos = scan(text, pos)
            pos = _skip(text, pos)
            if text[pos] != ":" or key in fields or key not in SESSION_KEYS:
                return None
            if key == "server" and "tracks" in fields:
                return None  # the tracks were read with the default server: the whole document decides
            pos = _skip(text, pos + 1)
            if key == "tracks":
                fields[key] = None
                specs, pos = _scan_tracks(text, pos, scan, fields, base_dir, origin, default_server)
            else:
                fields[key], pos = scan(text, pos)
            pos = _skip(text, pos)
            if text[pos] == "}":
                break
            if text[pos] != ",":
                return None
            pos = _skip(text, pos + 1)
        if specs is None or _skip(text, pos + 1) != len(text):
            return None
        name = _optional_str(fields, "name", f"{origin}: session") or Path(origin).stem
        session = Session(name=_clean_text(name), server=_session_server(fields, origin, default_server),
                          tracks=tuple(specs), path=Path(origin), mtime=mtime)
        del specs
        _check_unique_ids(session.tracks, origin)
    except (ManifestError, ValueError, StopIteration, IndexError, RecursionError):
        return None
    return session


def _scan_tracks(text: str, pos: int, scan: Callable[[str, int], tuple[Any, int]], fields: dict[str, Any],
                 base_dir: Path, origin: str, default_server: str | None) -> tuple[list[TrackSpec], int]:
    """The 'tracks' array at ``pos``, parsed track by track; ValueError where it is not a plain array."""
    if text[pos] != "[":
        raise ValueError("not a list of tracks")
    server = _session_server(fields, origin, default_server)
    specs: list[TrackSpec] = []
    pos = _skip(text, pos + 1)
    if text[pos] == "]":
        return specs, pos + 1
    while True:
        raw, pos = scan(text, pos)
        specs.append(_parse_track(raw, len(specs), base_dir, server, origin))
        del raw
        pos = _skip(text, pos)
        if text[pos] == "]":
            return specs, pos + 1
        if text[pos] != ",":
            raise ValueError("not a list of tracks")
        pos = _skip(text, pos + 1)


def _session_server(doc: dict[str, Any], origin: str, default_server: str | None) -> str | None:
    server = _optional_str(doc, "server", f"{origin}: session")
    if server is not None:
        _check_http_url(server, f"{origin}: session field 'server'")
    return server or default_server


def _parse_document(doc: Any, base_dir: Path, origin: str, mtime: float, default_server: str | None) -> Session:
    if not isinstance(doc, dict):
        raise ManifestError(f"{origin}: the manifest must be a JSON object with a 'tracks' list")
    if not doc.keys() <= SESSION_KEYS:
        raise ManifestError(_unknown_keys(f"{origin}: session", doc.keys() - SESSION_KEYS, SESSION_KEYS))
    name = _optional_str(doc, "name", f"{origin}: session") or Path(origin).stem
    server = _session_server(doc, origin, default_server)
    tracks = doc.get("tracks")
    if not isinstance(tracks, list):
        raise ManifestError(f"{origin}: field 'tracks' must be a list of tracks")
    parsed = []
    for i in range(len(tracks)):
        # Each raw track is let go once parsed: the memory of the parsed JSON is reused for the tracks, and a
        # big session's daemon does not keep both at its peak.
        raw, tracks[i] = tracks[i], None
        parsed.append(_parse_track(raw, i, base_dir, server, origin))
    specs = tuple(parsed)
    del parsed
    _check_unique_ids(specs, origin)
    return Session(name=_clean_text(name), server=server, tracks=specs, path=Path(origin), mtime=mtime)


def _parse_track(raw: Any, index: int, base_dir: Path, server: str | None, origin: str) -> TrackSpec:
    at = f"{origin}: track {index}"
    if not isinstance(raw, dict):
        raise ManifestError(f"{at}: must be an object, not {type(raw).__name__}")
    track_id = raw.get("id")
    if not raw.keys() <= TRACK_KEYS:  # a subset test per track: the cost stays flat for 100 000 tracks
        # Before the id's own checks: a misspelt "id" is named as the unknown key it is.
        label = f"{at} (id {track_id[:80]!r})" if isinstance(track_id, str) else at
        raise ManifestError(_unknown_keys(label, raw.keys() - TRACK_KEYS, TRACK_KEYS))
    if not isinstance(track_id, str) or not track_id.strip():
        raise ManifestError(f"{at}: field 'id' is required and must be a non-empty string")
    if "\x00" in track_id or len(track_id) > 1024:
        raise ManifestError(f"{at}: field 'id' must not contain NUL or exceed 1024 characters")
    if _has_surrogates(track_id):
        raise ManifestError(f"{at}: field 'id' is not valid Unicode text (an unpaired surrogate escape)")
    where = _TrackWhere(origin, index, track_id)
    file_path = _optional_str(raw, "file_path", where)
    stream_path = _optional_str(raw, "cloud_stream_path", where)
    for field_name, value in (("file_path", file_path), ("cloud_stream_path", stream_path)):
        if value is not None and "\x00" in value:
            raise ManifestError(f"{where}: field {field_name!r} contains a NUL character")
    cloud_url = _cloud_url(stream_path, server, where)
    return TrackSpec(
        index=index,
        id=track_id,
        artist=_shared(_optional_str(raw, "artist", where)),
        title=_optional_str(raw, "title", where),
        file_path=_resolve_local(file_path, base_dir),
        stream=len(stream_path) if stream_path and cloud_url is not None and cloud_url.endswith(stream_path)
        else stream_path,
        cloud_url=cloud_url,
        size=_optional_size(raw, where),
        content_type=_shared(_optional_str(raw, "content_type", where)),
    )


# Every key mixvfs reads. Anything else is refused rather than ignored: a misspelt `cloud_stream_pth` would
# otherwise turn a cloud track into a "missing" one with no word about why.
SESSION_KEYS = frozenset({"name", "server", "tracks"})
TRACK_KEYS = frozenset({"id", "artist", "title", "file_path", "cloud_stream_path", "size", "content_type"})


def _unknown_keys(where: str, unknown: set[Any], known: frozenset[str]) -> str:
    parts = []
    for key in sorted(unknown, key=str):
        close = difflib.get_close_matches(str(key).lower(), known, n=1)
        parts.append(f"{str(key)[:80]!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"{where}: unknown field{'s' if len(parts) > 1 else ''} {', '.join(parts)}; "
            f"known: {', '.join(sorted(known))}")


def json_error_text(exc: json.JSONDecodeError) -> str:
    """Where the JSON breaks, said once, and the text of that line (json's own str() says the place twice
    over when wrapped, and never shows the line)."""
    return (f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
            f"the line reads {_line_excerpt(exc.doc, exc.pos)!r}")


def _line_excerpt(text: str, pos: int, width: int = 100) -> str:
    """The text of the line holding ``pos``, cut to ``width`` characters around it (a manifest may be one
    15 MB line)."""
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    end = len(text) if end < 0 else end
    lo = max(start, min(pos - width // 2, end - width))
    line = text[lo:min(end, lo + width)].rstrip("\r")
    return ("..." if lo > start else "") + line + ("..." if lo + width < end else "")


class _TrackWhere:
    """``{origin}: track {index} (id {id!r})``, made only for an error message: a valid manifest of 100 000
    tracks must not format 100 000 of them."""

    __slots__ = ("index", "origin", "track_id")

    def __init__(self, origin: str, index: int, track_id: str) -> None:
        self.origin, self.index, self.track_id = origin, index, track_id

    def __str__(self) -> str:
        return f"{self.origin}: track {self.index} (id {self.track_id!r})"


def _shared(value: str | None) -> str | None:
    """One string object per distinct value of a field that repeats across a library (an artist, a content
    type): the parsed JSON holds a copy per track."""
    return None if value is None else sys.intern(value)


def _optional_str(doc: dict[str, Any], key: str, where: str | _TrackWhere) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if type(value) is str and value.isascii() and len(value) <= MAX_FIELD_CHARS:
        return value  # the common case, decided in constant time
    if not isinstance(value, str):
        raise ManifestError(f"{where}: field {key!r} must be a string, not {type(value).__name__}")
    if len(value) > MAX_FIELD_CHARS:
        raise ManifestError(f"{where}: field {key!r} is longer than {MAX_FIELD_CHARS} characters")
    if _has_surrogates(value):
        # JSON can escape an unpaired surrogate ("\ud800"), which no file name or path can hold: display
        # text is repaired, anything that must name a real file or URL is refused.
        if key not in DISPLAY_FIELDS:
            raise ManifestError(f"{where}: field {key!r} is not valid Unicode text (an unpaired surrogate escape)")
        value = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in value)
    return value


DISPLAY_FIELDS = frozenset({"name", "artist", "title"})


def _has_surrogates(text: str) -> bool:
    if text.isascii():  # constant time in CPython: most fields
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _optional_size(doc: dict[str, Any], where: str | _TrackWhere) -> int | None:
    value = doc.get("size")
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(f"{where}: field 'size' must be a non-negative integer number of bytes, not {value!r}")
    # A track is never empty: 0 is taken as unknown (the server is asked), never shown to a copier, which would
    # make an empty file without reading.
    return value or None


def _resolve_local(file_path: str | None, base_dir: Path) -> Path | None:
    if not file_path:
        return None
    path = Path(file_path).expanduser()
    return path if path.is_absolute() else base_dir / path


def _cloud_url(stream_path: str | None, server: str | None, where: str | _TrackWhere) -> str | None:
    if not stream_path:
        return None
    if "://" in stream_path:
        _check_http_url(stream_path, where, "field 'cloud_stream_path'")
        return stream_path
    if server is None:
        # Name every place a server can come from: the manifest is MixBoard's, the other three are the user's.
        raise ManifestError(f"{where}: field 'cloud_stream_path' is a relative path but no server is known: "
                            "give --server, set MIXVFS_SERVER or `server` in the config file "
                            "(or a 'server' in the session)")
    return server.rstrip("/") + "/" + stream_path.lstrip("/")


def _check_http_url(url: str, where: str | _TrackWhere, field: str = "") -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        where = f"{where}: {field}" if field else where
        raise ManifestError(f"{where}: must be an http:// or https:// URL, not {url[:80]!r}")


def _check_unique_ids(specs: tuple[TrackSpec, ...], origin: str) -> None:
    seen: dict[str, int] = {}
    for spec in specs:
        if spec.id in seen:
            raise ManifestError(
                f"{origin}: track {spec.index} (id {spec.id!r}): field 'id' duplicates track {seen[spec.id]}")
        seen[spec.id] = spec.index


def _clean_text(text: str) -> str:
    return "".join(ch for ch in text if ch >= " " and ch != "\x7f")[:500]
