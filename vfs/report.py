"""The per-track report: JSON, mode 0600, rewritten atomically (temp + rename) as events happen, so it can
be read in the middle of an export. Failures are written at once while the report is small (a few ms to
write); other events, and everything in very large sessions, are batched so that writing takes at most
about a tenth of the time (a 10 000-track session would otherwise rewrite megabytes per event and starve
the threads serving the mount)."""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cache.units import format_size

FLUSH_INTERVAL = 0.2
URGENT_WRITE_MAX = 0.005  # seconds: reports that write faster than this are rewritten at once on failure


@dataclass
class TrackRecord:
    id: str
    name: str
    source: str  # local | cloud | missing
    status: str  # local | pending | fetching | cached | failed | missing
    bytes: int | None = None
    digest: str | None = None
    error: str | None = None
    attempts: int = 0
    note: str | None = None  # not a failure, but worth knowing: e.g. served from cache without revalidation


def utc_stamp(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Report:
    def __init__(self, path: Path, *, session: str, mountpoint: str, records: list[TrackRecord]) -> None:
        self.path = path
        self._header: dict[str, Any] = {"session": session, "mountpoint": mountpoint, "started": utc_stamp()}
        self._records = {r.id: r for r in records}
        self._order = [r.id for r in records]
        self._lock = threading.Lock()
        # Snapshot and rename under one lock: else a batched write holding an older snapshot can land
        # after an urgent one and put a failed track back to "fetching".
        self._write_lock = threading.Lock()
        self._dirty = threading.Event()
        self._last_write_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flusher, name="report", daemon=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write()
        self._thread.start()

    def record(self, track_id: str) -> TrackRecord:
        with self._lock:
            return copy.copy(self._records[track_id])

    def has(self, track_id: str) -> bool:
        with self._lock:
            return track_id in self._records

    def update(self, track_id: str, *, urgent: bool = False, **fields: Any) -> None:
        with self._lock:
            record = self._records.get(track_id)
            if record is None:
                return  # a track removed from the session by a live reload; its download may still finish
            for key, value in fields.items():
                setattr(record, key, value)
        if urgent and self._last_write_seconds < URGENT_WRITE_MAX:
            self.write()  # a failure is on disk before the reader sees its EIO
        else:
            self._dirty.set()  # big reports (10 000 tracks): batched, or a failure storm would stall the mount

    def replace_records(self, records: list[TrackRecord]) -> None:
        """A new track list (the manifest changed while mounted)."""
        with self._lock:
            self._records = {r.id: r for r in records}
            self._order = [r.id for r in records]
        self.write()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            # Shallow copies (the fields are plain values): asdict's deep copy costs 10x on big sessions.
            return {**self._header, "tracks": [dict(vars(self._records[i])) for i in self._order]}

    def write(self, **extra: Any) -> None:
        started = time.monotonic()
        self._write(**extra)
        self._last_write_seconds = time.monotonic() - started

    def _write(self, **extra: Any) -> None:
        with self._write_lock:
            doc = {**self.snapshot(), **extra}
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(doc, handle, ensure_ascii=False)
            os.replace(tmp, self.path)

    def close(self, **extra: Any) -> None:
        self._stop.set()
        self._dirty.set()
        self._thread.join(timeout=5)
        self.write(**extra)

    def _flusher(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            # Batch harder when the report is big: writing takes at most ~10 % of the time, so a
            # 10 000-track session's report never starves the threads that serve the mount.
            time.sleep(max(FLUSH_INTERVAL, 10 * self._last_write_seconds))
            self._dirty.clear()
            self.write()


def load_report(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a mixvfs report")
    return data


def format_report(data: dict[str, Any]) -> str:
    """The per-track table of ``mixvfs report`` (and the summary of ``cachectl warm``)."""
    tracks = data.get("tracks", [])
    where = f" at {data['mountpoint']}" if data.get("mountpoint") else ""
    lines = [f"session {data.get('session')!r}{where} (started {data.get('started')})"]
    width = min(60, max([len(str(t.get("name", ""))) for t in tracks] + [4]))
    lines.append(f"{'NAME':<{width}}  {'SOURCE':<7} {'STATUS':<8} {'BYTES':>10} {'TRIES':>5}  ERROR")
    for t in tracks:
        name = str(t.get("name", ""))
        name = name if len(name) <= width else name[: width - 1] + "…"
        size = format_size(t["bytes"]) if isinstance(t.get("bytes"), int) else "-"
        lines.append(f"{name:<{width}}  {t.get('source', ''):<7} {t.get('status', ''):<8} {size:>10} "
                     f"{t.get('attempts', 0):>5}  {t.get('error') or ''}")
    counts: dict[str, int] = {}
    for t in tracks:
        counts[t.get("status", "?")] = counts.get(t.get("status", "?"), 0) + 1
    lines.append(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no tracks")
    return "\n".join(lines)
