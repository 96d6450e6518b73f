"""The session filesystem without FUSE: names, attributes, open/read/release and prefetch.

The FUSE adapter (:mod:`vfs.fuse_ops`) is a thin shell over this class; everything here can be driven
by unit tests without a kernel. Failures are raised as :class:`cache.errors.FetchError` (the adapter's
errno table turns them into EIO) and recorded per track in the report first — never silently.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cache.errors import Cancelled, FetchError, SourceMissing
from cache.fetch import Download, Fetcher, State
from vfs.report import Report, TrackRecord
from vfs.tracks import Kind, Track

log = logging.getLogger(__name__)

T = TypeVar("T")
BLOCK_SIZE = 1 << 20  # st_blksize: `cp` sizes its buffer from it (128 KiB by default)
MAX_STATUS_FAILURES = 100  # an xattr value is at most 64 KiB on Linux: list this many failures, count the rest


class Handle:
    """An open file of the mount."""

    track: Track

    def read(self, size: int, offset: int) -> bytes:
        raise NotImplementedError

    def span(self, size: int, offset: int) -> tuple[int, int]:
        """(descriptor, byte count) that hold bytes [offset, offset+size) now, for a zero-copy reply:
        libfuse reads them from the descriptor itself, without the GIL and without Python bytes."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FdHandle(Handle):
    """A local file or a stored blob: plain ``pread`` on a descriptor held for the life of the handle."""

    def __init__(self, track: Track, fd: int) -> None:
        self.track = track
        self.fd = fd

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def span(self, size: int, offset: int) -> tuple[int, int]:
        return self.fd, size  # a short read at the end of the file is the end of the file

    def close(self) -> None:
        os.close(self.fd)


class StreamHandle(Handle):
    """A cloud track still downloading: reads wait for just the bytes they need."""

    def __init__(self, track: Track, download: Download, fd: int, fetcher: Fetcher) -> None:
        self.track = track
        self.download = download
        self.fd = fd
        self.fetcher = fetcher

    def read(self, size: int, offset: int) -> bytes:
        return self.download.read(self.fd, size, offset)

    def span(self, size: int, offset: int) -> tuple[int, int]:
        return self.fd, self.download.wait_for(size, offset) - offset

    def close(self) -> None:
        os.close(self.fd)
        self.fetcher.release(self.download)


class FailedHandle(Handle):
    """A track known to fail right now: every read gets the same error at once (no new download)."""

    def __init__(self, track: Track, error: FetchError) -> None:
        self.track = track
        self.error = error

    def read(self, size: int, offset: int) -> bytes:
        raise FetchError(self.error.reason)

    def span(self, size: int, offset: int) -> tuple[int, int]:
        raise FetchError(self.error.reason)


@dataclass(frozen=True)
class Opened:
    handle: Handle
    keep_cache: bool  # immutable bytes: let the kernel keep its page cache across opens
    direct_io: bool  # size unknown: bypass st_size so readers still get every byte


@dataclass
class Failure:
    error: FetchError
    at: float


class SessionFS:
    def __init__(
        self,
        tracks: list[Track],
        fetcher: Fetcher,
        report: Report,
        *,
        retry_after: float = 60.0,
        prefetch: bool = True,
        mtime: float = 0.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.fetcher = fetcher
        self.mtime = mtime
        self.report = report
        self.retry_after = retry_after
        self.prefetch_enabled = prefetch
        self.now = now
        self._lock = threading.Lock()
        self._failures: dict[str, Failure] = {}
        self._set_tracks(tracks)
        fetcher.listener = self._on_download_event
        self._prefetch_stop = threading.Event()
        self._prefetch_thread: threading.Thread | None = None
        self._prefetch_slots = threading.Semaphore(fetcher.jobs)
        self._prefetching: set[Download] = set()

    # -- listing -------------------------------------------------------------------------------------

    def _set_tracks(self, tracks: list[Track]) -> None:
        by_ident: dict[str, list[Track]] = {}
        for track in tracks:
            if track.source is not None:
                by_ident.setdefault(track.source.ident, []).append(track)
        with self._lock:
            self.tracks = tracks
            self._by_name = {t.name: t for t in tracks}
            self._by_ident = by_ident

    def reload(self, tracks: list[Track], *, mtime: float | None = None) -> None:
        """The manifest changed while mounted: swap the listing in one step. Open handles hold their Track
        (and descriptor or download), so files already open keep reading; a track that stays keeps its
        report record (status, attempts), under its new name if it was renamed."""
        records = []
        for track in tracks:
            old = self.report.record(track.id) if self.report.has(track.id) else None
            if old is not None and old.source == track.kind.value:
                old.name = track.name
                records.append(old)
            else:
                records.append(self._initial_record(track))
        self._set_tracks(tracks)
        if mtime is not None:
            self.mtime = mtime  # the folder's mtime changes too: tools that cache listings by mtime notice
        self.report.replace_records(records)
        if self._prefetch_thread is not None and not self._prefetch_stop.is_set():
            self._prefetch_thread = None  # the running pass walks the old list; a new pass covers the new tracks
            self.start_prefetch()

    def live_status(self) -> dict[str, object]:
        """What ``mixvfs status`` shows (the root's ``user.mixvfs.status``): downloads in flight and failures."""
        names: dict[str, str] = {}
        for track in self.tracks:
            if track.source is not None:
                names.setdefault(track.source.ident, track.name)
        downloading = [
            {"name": names.get(d.source.ident, d.source.label), "available": d.available, "total": d.total,
             "attempts": d.attempts, "state": d.state.value}
            for d in self.fetcher.active() if d.state in (State.PENDING, State.FETCHING)
        ]
        snapshot = self.report.snapshot()
        counts: dict[str, int] = {}
        failed = []
        for record in snapshot["tracks"]:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
            if record["status"] in ("failed", "missing"):
                failed.append({"name": record["name"], "error": record["error"]})
        return {"session": snapshot["session"], "tracks": len(snapshot["tracks"]), "counts": counts,
                "downloading": downloading, "failed": failed[:MAX_STATUS_FAILURES],
                "failed_total": len(failed)}

    def names(self) -> list[str]:
        self.fetcher.foreground.touch()
        return [t.name for t in self.tracks]

    def lookup(self, name: str) -> Track | None:
        self.fetcher.foreground.touch()  # someone is looking at the folder: prefetch steps aside
        return self._by_name.get(name)

    def total_size(self) -> int:
        return sum(t.size or 0 for t in self.tracks)

    def track_xattrs(self, track: Track) -> dict[str, str]:
        """What ``getfattr`` shows for a file: ``user.mixvfs.<key>``."""
        record = self.report.record(track.id)
        return {"status": record.status, "source": record.source, "error": record.error or "",
                "digest": record.digest or "", "id": track.id}

    def initial_records(self) -> list[TrackRecord]:
        return [self._initial_record(t) for t in self.tracks]

    def _initial_record(self, track: Track) -> TrackRecord:
        if track.kind is Kind.LOCAL:
            return TrackRecord(track.id, track.name, "local", "local", bytes=track.size)
        if track.kind is Kind.MISSING:
            return TrackRecord(track.id, track.name, "missing", "missing", error=track.reason)
        assert track.source is not None
        entry = self.fetcher.cached(track.source)
        if entry is not None:
            return TrackRecord(track.id, track.name, "cloud", "cached", bytes=entry.size, digest=entry.digest)
        return TrackRecord(track.id, track.name, "cloud", "pending", bytes=track.size)

    # -- reading -------------------------------------------------------------------------------------

    def open(self, track: Track) -> Opened:
        if track.kind is Kind.MISSING:
            return Opened(FailedHandle(track, SourceMissing(track.reason or "missing")), False, True)
        if track.kind is Kind.LOCAL:
            return self._open_local(track)
        return self._open_cloud(track)

    def _open_local(self, track: Track) -> Opened:
        assert track.local_path is not None
        try:
            # O_NONBLOCK: if the file was swapped for a FIFO since the mount, open must not wait for a writer.
            fd = os.open(track.local_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            error = SourceMissing(f"local file {track.local_path} cannot be opened: {exc.strerror}")
            self._record_failure(track, error)
            raise error from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            error = SourceMissing(f"local file {track.local_path} is no longer a regular file")
            self._record_failure(track, error)
            raise error
        return Opened(FdHandle(track, fd), keep_cache=True, direct_io=False)

    def _open_cloud(self, track: Track) -> Opened:
        assert track.source is not None
        failure = self._failures.get(track.id)
        if failure is not None and self.now() - failure.at < self.retry_after:
            return Opened(FailedHandle(track, failure.error), False, True)
        try:
            acquired = self.fetcher.acquire(track.source)
        except FetchError as exc:
            self._record_failure(track, exc)
            raise
        if acquired.download is None:
            return Opened(FdHandle(track, acquired.fd), keep_cache=True, direct_io=track.size is None)
        handle = StreamHandle(track, acquired.download, acquired.fd, self.fetcher)
        return Opened(handle, keep_cache=track.size is not None, direct_io=track.size is None)

    def read(self, handle: Handle, size: int, offset: int) -> bytes:
        return self._reading(handle, lambda: handle.read(size, offset))

    def read_span(self, handle: Handle, size: int, offset: int) -> tuple[int, int]:
        """Like :meth:`read`, but (descriptor, count) for the adapter's zero-copy reply."""
        return self._reading(handle, lambda: handle.span(size, offset))

    def _reading(self, handle: Handle, action: Callable[[], T]) -> T:
        self.fetcher.foreground.reading()
        try:
            return action()
        except FetchError as exc:
            if not isinstance(handle, FailedHandle):
                self._record_failure(handle.track, exc)
            raise
        except OSError as exc:
            error = FetchError(f"reading {handle.track.name} failed: {exc.strerror}")
            self._record_failure(handle.track, error)
            raise error from None

    def release(self, handle: Handle) -> None:
        handle.close()

    # -- prefetch --------------------------------------------------------------------------------------

    def start_prefetch(self) -> None:
        if not self.prefetch_enabled or self._prefetch_thread is not None:
            return
        self._prefetch_thread = threading.Thread(target=self._prefetch_all, name="prefetch", daemon=True)
        self._prefetch_thread.start()

    def _prefetch_all(self) -> None:
        """Queue cloud tracks in session order, keeping only ``jobs`` prefetches in flight at a time so
        a 10 000-track session does not open 10 000 staging files. A slot is given back when its download
        ends (see ``_on_download_event``)."""
        for order, track in enumerate(list(self.tracks)):
            if track.source is None or track.id in self._failures:
                continue
            while not self._prefetch_slots.acquire(timeout=0.5):
                if self._prefetch_stop.is_set():
                    return
            if self._prefetch_stop.is_set():
                return
            try:
                download = self.fetcher.prefetch(track.source, order)
            except FetchError as exc:
                self._record_failure(track, exc)
                download = None
            with self._lock:
                # Nothing to fetch, or already over (its end event came before we could hold it).
                if download is None or download.ended.is_set():
                    self._prefetch_slots.release()
                else:
                    self._prefetching.add(download)

    def close(self, wait: float | None = None) -> None:
        self._prefetch_stop.set()
        self.fetcher.close(wait)

    # -- events --------------------------------------------------------------------------------------

    def _on_download_event(self, download: Download, event: str) -> None:
        if event in (State.DONE.value, State.FAILED.value):
            with self._lock:
                if download in self._prefetching:
                    self._prefetching.remove(download)
                    self._prefetch_slots.release()
        for track in self._by_ident.get(download.source.ident, []):
            if event == "attempt":
                self.report.update(track.id, status="fetching", attempts=download.attempts)
            elif event == State.DONE.value:
                if track.size is None:
                    track.size = download.total
                self._failures.pop(track.id, None)
                self.report.update(track.id, status="cached", bytes=download.total, digest=download.digest,
                                   error=None, attempts=download.attempts)
            elif event == State.FAILED.value and download.error is not None:
                if isinstance(download.error, Cancelled):
                    self.report.update(track.id, status="pending", error=None)
                else:
                    self._record_failure(track, download.error)

    def _record_failure(self, track: Track, error: FetchError) -> None:
        first = track.id not in self._failures or self._failures[track.id].error.reason != error.reason
        self._failures[track.id] = Failure(error, self.now())
        if not self.report.has(track.id):
            log.error("%s (removed from the session): %s", track.name, error.reason)
            return
        record = self.report.record(track.id)
        self.report.update(track.id, urgent=True, status="failed", error=error.reason,
                           attempts=max(record.attempts, 1))
        if first:
            log.error("%s: %s", track.name, error.reason)
