"""The per-track report: JSON, mode 0600, rewritten atomically (temp + rename) as events happen, so it can
be read in the middle of an export.

A failure is on disk before the reader sees its EIO, whatever the size of the report: an urgent update
returns only once the file holds the track's status and error. To keep failure storms cheap, only a
change of status or error text is written at once (a repeated identical failure rewrites nothing), and
concurrent urgent updates share one write (whoever writes takes every change made so far). Every other
event is batched so that writing takes at most about a tenth of the time (a 10 000-track session would
otherwise rewrite megabytes per event and starve the threads serving the mount)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import glob
import json
import logging
import operator
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from mixvfs.cache.units import format_size
from mixvfs.vfs.fs.mount_key import mount_tag, slug

if TYPE_CHECKING:
    from mixvfs.vfs.session.tracks import Track

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.2
QUICK_RECORDS = 2000  # a report this small is written through at the end of a burst of downloads (Recorder)


class Status(enum.StrEnum):
    """A track's state in the report (a str: the JSON holds the plain value)."""

    LOCAL = "local"  # a local file, passed through
    PENDING = "pending"  # a cloud track not downloaded (yet)
    FETCHING = "fetching"
    CACHED = "cached"  # whole and verified in the cache
    FAILED = "failed"  # ``error`` says why
    MISSING = "missing"  # neither a usable local file nor a cloud path


FAILED_STATUSES = (Status.FAILED, Status.MISSING)


@dataclass(slots=True)
class TrackRecord:
    id: str
    name: str
    source: str  # local | cloud | missing
    status: Status
    bytes: int | None = None
    digest: str | None = None
    error: str | None = None
    attempts: int = 0
    note: str | None = None  # not a failure, but worth knowing: e.g. served from cache without revalidation
    via: str | None = None  # with a team cache: where the bytes came from (origin, team cache hit/miss)
    # A reader was given EIO while the track itself did not fail (it changed under another reader, a reader gave
    # up waiting): kept after the track is whole again, since that reader's copy may be missing or partial.
    reader_error: str | None = None


RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(TrackRecord))
_record_values = operator.attrgetter(*RECORD_FIELDS)
# Records are encoded this many at a time: a 100 000-track report is never one list of dicts in memory.
WRITE_CHUNK = 2000

# What the report holds per track: its record, or the track itself while its record is the one the listing
# implies (:func:`listed_record`): a pending, local or missing track -- most of a big session -- costs no
# record of its own until something happens to it (a record each was 12 MB of a 100 000-track mount).
Entry: TypeAlias = "TrackRecord | Track"


def listed_record(track: Track) -> TrackRecord:
    """The record of a track nothing has happened to since it was listed: a cloud track pending, a local one
    local, a missing one missing with its reason (a cloud track the cache held is listed with a record)."""
    return TrackRecord(*_listed_values(track))


def _listed_values(track: Track) -> tuple[Any, ...]:
    """:func:`listed_record`'s fields, in ``RECORD_FIELDS``' order."""
    source = track.kind.value  # the track's kind names its source: local, cloud, missing
    if source == "missing":
        return track.id, track.name, source, Status.MISSING, None, None, track.reason, 0, None, None, None
    status = Status.LOCAL if source == "local" else Status.PENDING
    return track.id, track.name, source, status, track.size, None, None, 0, None, None, None


def as_record(entry: Entry) -> TrackRecord:
    return entry if isinstance(entry, TrackRecord) else listed_record(entry)


def record_dict(record: Entry) -> dict[str, Any]:
    """A record as the report's JSON holds it (a shallow copy: the fields are plain values)."""
    values = _record_values(record) if isinstance(record, TrackRecord) else _listed_values(record)
    return dict(zip(RECORD_FIELDS, values, strict=True))


def default_report_path(cache_dir: Path, session_name: str, mountpoint_key: str | None = None) -> Path:
    """Where a report goes unless ``--report`` says: ``<cache>/reports/<session>--<mount>.json`` for a mount
    (one file per mountpoint: two mounts of one session never share a report), ``<session>.json`` for a
    command that is no mount."""
    name = slug(session_name)
    return cache_dir / "reports" / (f"{name}.json" if mountpoint_key is None else
                                    f"{name}--{mount_tag(mountpoint_key)}.json")


def reports_of_session(cache_dir: Path, session_name: str) -> list[Path]:
    """The mount reports a session's name may have in ``cache_dir`` (one per mountpoint, and the one older
    versions wrote per session), newest first."""
    name = slug(session_name)
    folder = cache_dir / "reports"
    found = [*folder.glob(f"{glob.escape(name)}--*.json"), folder / f"{name}.json"]
    dated = []
    for path in found:
        try:
            dated.append((path.stat().st_mtime, path))
        except OSError:
            continue
    return [path for _, path in sorted(dated, reverse=True)]


def utc_stamp(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Report:
    def __init__(self, path: Path, *, session: str, mountpoint: str, records: Sequence[Entry],
                 manifest: str | None = None, publish_later: bool = False) -> None:
        """``publish_later``: nothing is written until :meth:`publish` (a mount's report, once its folder is live:
        a mount that never happened leaves no report, nor overwrites the last one); the path is checked writable
        now."""
        self.path = path
        self.session = session
        self._header: dict[str, Any] = {"session": session, "mountpoint": mountpoint, "started": utc_stamp()}
        self.unwritten: str | None = None  # why the final report could not be written (close), else None
        self._failing: str | None = None  # why the last write failed, while writes fail (logged once)
        if manifest is not None:  # `mixvfs check-export REPORT` finds the local tracks' sources through it
            self._header["manifest"] = manifest
        # In session order (a change keeps its place). Found by the track's place in its manifest, which is its
        # place here (a map by id was 3.8 MB of a 100 000-track mount); by id only where the place does not
        # hold it (an id given alone, a track of the listing before a reload), through a map made then.
        self._records: list[Entry] = list(records)
        self._places: dict[str, int] | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer at a time (see _write_locked)
        self._dirty = threading.Event()
        self._last_write_seconds = 0.0
        # Versions: every change to a record bumps ``_version``; ``_written`` is the version the file holds;
        # ``_shown_at[id]`` is when the track's status or error last changed (what an urgent update must
        # see on disk before it returns).
        self._version = 0
        self._written = 0
        self._eio: dict[str, int] = {}  # EIO answers given to programs, per track id ("" for none)
        self._shown_at: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flusher, name="report", daemon=True)
        self._unpublished = publish_later
        path.parent.mkdir(parents=True, exist_ok=True)
        if publish_later:
            probe = self._temp_path()
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
            os.unlink(probe)
            return
        self.write()
        self._thread.start()

    def writes_quickly(self) -> bool:
        """Whether a write costs little whatever the machine's load: a report of at most ``QUICK_RECORDS`` tracks
        (a few milliseconds to write)."""
        return len(self._records) <= QUICK_RECORDS

    def publish(self) -> None:
        """Write the report and keep it current from now on (one made with publish_later; at once for any other)."""
        if self._unpublished:
            self._unpublished = False
            self.write()
            self._thread.start()

    def _temp_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")

    def _place(self, key: str | Track) -> int | None:
        """Where the record of ``key`` (a track, or a track's id) is; None: not in this session. Under the lock."""
        records = self._records
        if isinstance(key, str):
            track_id = key
        else:
            track_id, at = key.id, key.spec.index
            if at < len(records) and records[at].id == track_id:
                return at
        if self._places is None:
            self._places = {r.id: i for i, r in enumerate(records)}
        return self._places.get(track_id)

    def record(self, key: str | Track) -> TrackRecord:
        """The record of a track (or of a track's id); KeyError if the session has none."""
        with self._lock:
            at = self._place(key)
            if at is None:
                raise KeyError(key if isinstance(key, str) else key.id)
            entry = self._records[at]
        return copy.copy(entry) if isinstance(entry, TrackRecord) else listed_record(entry)

    def has(self, key: str | Track) -> bool:
        with self._lock:
            return self._place(key) is not None

    def update(self, key: str | Track, *, urgent: bool = False, **fields: Any) -> None:
        """Change a track's record (``key``: the track, or its id). ``urgent`` (a failure, a refusal): return only
        once the file on disk shows the record's status, error and note — the reader's EIO comes after this
        returns."""
        track_id = key if isinstance(key, str) else key.id
        with self._lock:
            at = self._place(key)
            if at is None:
                return  # a track removed from the session by a live reload; its download may still finish
            entry = self._records[at]
            record = as_record(entry)
            shown = (record.status, record.error, record.note)
            changed = dataclasses.replace(record, **fields)  # an unknown field name is a TypeError, not a new key
            if changed != record:
                self._records[at] = record = changed
                self._version += 1
                if (record.status, record.error, record.note) != shown:
                    self._shown_at[track_id] = self._version
            needed = self._shown_at.get(track_id, 0)
        if urgent:
            self._write_through(needed)
        if self._version > self._written:
            self._dirty.set()  # the rest (attempts, other tracks' progress) goes with the next batch

    def _write_through(self, needed: int) -> None:
        """Return once the file holds version ``needed``: at once if a write already did (a repeated
        identical failure), else after our write — or after another thread's, if it took our change."""
        if self._written >= needed or self._unpublished:
            return
        try:
            with self._write_lock:
                if self._written < needed:
                    self._write_locked()
        except OSError as exc:  # a full disk must not turn the reader's EIO into another errno
            self._write_failed(exc, logging.ERROR)

    def answered_eio(self, track_id: str | None) -> None:
        """One more EIO answered to a program about ``track_id`` (None: about no track). Batched: the reason
        was written (urgently) before the answer left."""
        with self._lock:
            key = track_id or ""
            self._eio[key] = self._eio.get(key, 0) + 1
            self._version += 1
        self._dirty.set()

    def replace_records(self, records: Sequence[Entry]) -> None:
        """A new track list (the manifest changed while mounted)."""
        with self._lock:
            self._records = list(records)
            self._places = None
            self._version += 1
            self._shown_at = {}
        self.write()

    def snapshot(self) -> dict[str, Any]:
        header, records, _ = self._records_now()
        return {**header, "tracks": [record_dict(r) for r in records]}

    def records(self) -> list[TrackRecord]:
        """The records in session order, as they are now (a record is replaced on change, never altered)."""
        return [as_record(entry) for entry in self._records_now()[1]]

    def _records_now(self) -> tuple[dict[str, Any], list[Entry], int]:
        with self._lock:
            header = {**self._header, "eio_answers": dict(self._eio)}
            return header, list(self._records), self._version

    def write(self, **extra: Any) -> None:
        if self._unpublished:
            return  # not published yet: the mount is not live (and may never be)
        with self._write_lock:
            self._write_locked(**extra)

    def _write_locked(self, **extra: Any) -> None:
        # Snapshot and rename under one lock: else a batched write holding an older snapshot could land
        # after an urgent one and put a failed track back to "fetching".
        started = time.monotonic()
        header, records, version = self._records_now()
        header.update(extra)
        tmp = self._temp_path()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileNotFoundError:  # its folder was removed while mounted (by default it is in the cache folder)
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, flags, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                # json.dumps (C) per chunk: json.dump streams through the pure-Python encoder, 10x slower.
                opening = json.dumps({**header, "tracks": []}, ensure_ascii=False)
                handle.write(opening[:-2])  # the object without its closing "]}": the tracks follow
                for start in range(0, len(records), WRITE_CHUNK):
                    chunk = [record_dict(r) for r in records[start:start + WRITE_CHUNK]]
                    handle.write(("" if start == 0 else ", ") + json.dumps(chunk, ensure_ascii=False)[1:-1])
                handle.write("]}")
            os.replace(tmp, self.path)
        except BaseException:
            # A full disk fails the write or the close: the half-written temporary file must not stay (one per
            # batch of a whole export filled the report folder with them).
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._written = version
        self._last_write_seconds = time.monotonic() - started
        if self._failing is not None:
            self._failing = None
            log.info("the report %s is written again", self.path)

    @property
    def behind(self) -> str | None:
        """Why the file on disk is behind the mount (its last write failed: a full disk, a folder made
        unwritable), else None: what ``mixvfs status`` and ``mixvfs report MOUNTPOINT`` then say."""
        return None if self._failing is None else f"cannot write the report {self.path}: {self._failing}"

    def _write_failed(self, exc: OSError, level: int) -> None:
        """Logged once per cause, not once per track: a report folder unreadable for the length of an export
        would otherwise put a line in the log for every track; a write that succeeds again says so."""
        why = str(exc.strerror or exc)
        if self._failing != why:
            self._failing = why
            log.log(level, "cannot write the report %s: %s (said once until it is written again)", self.path, why)

    def close(self, **extra: Any) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self.write(**extra)
        except OSError as exc:  # the caller still has a cache to close
            self.unwritten = f"cannot write the final report {self.path}: {exc.strerror or exc}"
            log.error("%s", self.unwritten)

    def _flusher(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            # Batch harder when the report is big: writing takes at most ~10 % of the time, so a
            # 10 000-track session's report never starves the threads that serve the mount.
            # A wait on the stop event, not time.sleep: close ends it at once (and writes the last report
            # itself), and it never fails (time.sleep under libfaketime, as the clock-step tests run the
            # daemon, fails with EINVAL and took this thread down).
            if self._stop.wait(max(FLUSH_INTERVAL, 10 * self._last_write_seconds)):
                return
            self._dirty.clear()
            try:
                self.write()
            except OSError as exc:  # e.g. a full disk: try again with the next batch, never stop flushing
                self._write_failed(exc, logging.WARNING)


def load_report(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        data = json.load(handle)
    # A session manifest is JSON with "tracks" too; a report's tracks carry a status.
    tracks = data.get("tracks") if isinstance(data, dict) else None
    if not isinstance(tracks, list) or not all(isinstance(t, dict) and "status" in t for t in tracks):
        raise ValueError("not a mixvfs report (a report's tracks each have a status)")
    return dict(data)


def reader_failure(track: dict[str, Any]) -> str | None:
    """The text for a track whose reader got EIO though the track did not fail (its copy may be missing)."""
    error = track.get("reader_error")
    return f"a reader got an input/output error: {error}" if error else None


def has_problem(track: dict[str, Any]) -> bool:
    """Failed or missing, or a reader of it was given EIO: the export may lack it."""
    return track.get("status") in FAILED_STATUSES or bool(track.get("reader_error"))


def format_report(data: dict[str, Any]) -> str:
    """The per-track table of ``mixvfs report`` (and the summary of ``cachectl warm``)."""
    tracks = data.get("tracks", [])
    where = f" at {data['mountpoint']}" if data.get("mountpoint") else ""
    lines = [f"session {data.get('session')!r}{where} (started {data.get('started')})"]
    width = min(60, max([len(str(t.get("name", ""))) for t in tracks] + [4]))
    team = any(t.get("via") for t in tracks)  # a team cache was set: say where each track's bytes came from
    via_head = f" {'FROM':<15}" if team else ""
    lines.append(f"{'NAME':<{width}}  {'SOURCE':<7} {'STATUS':<8} {'BYTES':>10} {'TRIES':>5}{via_head}  ERROR")
    for t in tracks:
        name = str(t.get("name", ""))
        name = name if len(name) <= width else name[: width - 1] + "…"
        size = format_size(t["bytes"]) if isinstance(t.get("bytes"), int) else "-"
        via = f" {t.get('via') or '-':<15}" if team else ""
        lines.append(f"{name:<{width}}  {t.get('source', ''):<7} {t.get('status', ''):<8} {size:>10} "
                     f"{t.get('attempts', 0):>5}{via}  {t.get('error') or reader_failure(t) or ''}")
    counts: dict[str, int] = {}
    for t in tracks:
        counts[t.get("status", "?")] = counts.get(t.get("status", "?"), 0) + 1
    lines.append(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no tracks")
    return "\n".join(lines)
