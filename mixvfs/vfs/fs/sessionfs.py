"""The session filesystem without FUSE: names, attributes, open/read/release and prefetch.

The FUSE adapter (:mod:`mixvfs.vfs.adapter.fuse_ops`) is a thin shell over this class; everything here can be driven
by unit tests without a kernel. Failures are raised as :class:`mixvfs.cache.errors.FetchError` (the adapter's
errno table turns them into EIO) and recorded per track in the report first — never silently.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from mixvfs.cache.defaults import QUESTIONS
from mixvfs.cache.download import Download, Event, State
from mixvfs.cache.errors import (
    CacheError,
    Cancelled,
    ContentChanged,
    FetchError,
    NotForPreview,
    RequestWaitExceeded,
    ServerAskedToWait,
    SourceMissing,
)
from mixvfs.cache.fetcher import Fetcher, Foreground
from mixvfs.cache.http import Freshness
from mixvfs.cache.remote import Source
from mixvfs.vfs.fs.backing import BackingTable
from mixvfs.vfs.fs.pages import PageTable, Version
from mixvfs.vfs.fs.report import FAILED_STATUSES, Report, Status, TrackRecord
from mixvfs.vfs.session.tracks import Kind, Track, local_problem

log = logging.getLogger(__name__)

T = TypeVar("T")
BLOCK_SIZE = 1 << 20  # st_blksize: `cp` sizes its buffer from it (128 KiB by default)
# A cached track confirmed by the server without an open asking (its download just ended, or the look-ahead
# revalidated it) counts as revalidated for this long; an open after that asks again (a mount may live for days).
CONFIRMED_FOR = 60.0
# How many tracks (in session order) past the furthest one a reader opened the look-ahead prepares: enough to keep
# QUESTIONS revalidations in flight ahead of a fast exporter, few enough that what it confirmed is read within
# CONFIRMED_FOR (else the open asks again).
LOOK_AHEAD = 4 * QUESTIONS
MAX_STATUS_FAILURES = 100  # an xattr value is at most 64 KiB on Linux: list this many failures, count the rest


class Handle:
    """An open file of the mount."""

    track: Track
    name: str  # the file's name when it was opened (the kernel's file; a live reload may rename the track)
    pinned: bool = False  # counted as a page-cached reader in the page table
    backing: int | None = None  # the passthrough backing file this open was given (see vfs/fs/backing.py)
    counted: bool = False  # counted in the backing table: release it there

    def span(self, size: int, offset: int) -> tuple[int, int]:
        """(descriptor, byte count) that hold bytes [offset, offset+size) now, for a zero-copy reply:
        libfuse reads them from the descriptor itself, without the GIL and without Python bytes."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class BlobHandle(Handle):
    """A stored blob: immutable bytes, plain ``pread`` on a descriptor held for the life of the handle."""

    def __init__(self, track: Track, fd: int) -> None:
        self.track, self.name, self.fd = track, track.name, fd

    def span(self, size: int, offset: int) -> tuple[int, int]:
        return self.fd, size  # a short read at the end of the file is the end of the file

    def close(self) -> None:
        os.close(self.fd)


class LocalHandle(BlobHandle):
    """A local file, which its owner may rewrite while we read it: every read first checks that the file
    is still the version that was opened (a file replaced by rename keeps reading the old one whole)."""

    def __init__(self, track: Track, fd: int, stamp: tuple[int, ...]) -> None:
        super().__init__(track, fd)
        self.stamp = stamp

    def span(self, size: int, offset: int) -> tuple[int, int]:
        if file_stamp(os.fstat(self.fd)) != self.stamp:
            raise ContentChanged(f"local file {self.track.local_path} changed while it was being read")
        return self.fd, size


class StreamHandle(Handle):
    """A cloud track still downloading: reads wait for just the bytes they need."""

    def __init__(self, track: Track, download: Download, fd: int, fetcher: Fetcher,
                 request_wait: float | None = None) -> None:
        self.track, self.name = track, track.name
        self.download = download
        self.fd = fd
        self.fetcher = fetcher
        self.request_wait = request_wait

    def span(self, size: int, offset: int) -> tuple[int, int]:
        return self.fd, self.download.wait_for(size, offset, deadline_after(self.request_wait)) - offset

    def close(self) -> None:
        os.close(self.fd)
        self.fetcher.release(self.download)


class FailedHandle(Handle):
    """A track known to fail right now: every read gets the same error at once (no new download)."""

    def __init__(self, track: Track, error: FetchError) -> None:
        self.track, self.name = track, track.name
        self.error = error

    def span(self, size: int, offset: int) -> tuple[int, int]:
        raise FetchError(self.error.reason)


def deadline_after(wait: float | None) -> float | None:
    """The ``time.monotonic()`` by which a request waiting now must be answered (None: no bound)."""
    return None if wait is None else time.monotonic() + wait


def file_stamp(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file's bytes may have: a rewrite in place changes size or mtime; a replacement
    by rename changes the inode. (Not ctime: unlinking the replaced file changes it, not its bytes.)"""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def blob_key(digest: str) -> str:
    return f"blob:{digest}"


def download_key(download: Download) -> str:
    return f"download:{download.serial}"


@dataclass(frozen=True)
class Opened:
    handle: Handle
    keep_cache: bool  # the kernel may keep the pages it has: they are of this very version
    direct_io: bool  # read to the end of this version, whatever size the kernel holds
    stale: bool = False  # the kernel's size or pages of this file may be another version's: drop them now
    backing: int | None = None  # FUSE passthrough: the kernel reads this open from that backing file


class KernelCache(Protocol):
    """What the kernel caches about the folder's names and attributes (the adapter tells it through libfuse)."""

    def forget(self, names: list[str]) -> None:
        """Drop these names of the folder, and the folder's attributes: the next ``stat`` asks the daemon."""


def stat_key(track: Track) -> tuple[object, ...]:
    """What ``stat`` of a track's file shows and which bytes it is: a name whose key changed is another file."""
    return (track.kind, track.size, track.mtime, track.source.ident if track.source else None, track.local_path)


def stale_names(old: list[Track], new: list[Track]) -> list[str]:
    """The names of ``old`` the kernel may hold wrongly once ``new`` is the listing: gone (removed, renamed)
    or now another file (size, mtime or source changed; a cloud track's mtime is the manifest's, so after a
    reload that is every cloud track)."""
    by_name = {t.name: t for t in new}
    return [t.name for t in old if t.name not in by_name or stat_key(by_name[t.name]) != stat_key(t)]


class Walk:
    """The tracks handed out in order to several workers, each track once."""

    def __init__(self, tracks: list[Track]) -> None:
        self._items = enumerate(tracks)
        self._lock = threading.Lock()

    def take(self) -> tuple[int, Track] | None:
        with self._lock:
            return next(self._items, None)


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
        failed_for: float = 60.0,
        prefetch: bool = True,
        confirm_ahead: bool = False,
        mtime: float = 0.0,
        foreground: Foreground | None = None,
        attr_timeout: float = 1.0,
        now: Callable[[], float] = time.monotonic,  # durations only: a wall-clock step must not move them
        request_wait: float | None = None,
    ) -> None:
        self.fetcher = fetcher
        # The longest one FUSE request may wait for a download (None: as long as it progresses); macFUSE
        # ejects the volume when a request outlives its daemon_timeout.
        self.request_wait = request_wait
        # Told when the folder is browsed or read, so prefetch steps aside while it is only browsed.
        self.foreground = foreground or fetcher.foreground
        self.mtime = mtime
        self.report = report
        self.failed_for = failed_for
        self.attr_timeout = attr_timeout  # how long the kernel keeps an answer of ours about a file
        # Tracks of unknown size answered as 0 bytes from a remembered failure: until when the kernel may hold
        # that 0 (their opens fail until then, so no size-driven copier ever copies 0 bytes of them).
        self._zero_shown: dict[str, float] = {}
        self.prefetch_enabled = prefetch
        self.confirm_ahead = confirm_ahead and prefetch
        self.now = now
        self._lock = threading.Lock()
        self._failures: dict[str, Failure] = {}
        self._track_locks: dict[str, threading.Lock] = {}
        self.pages = PageTable()
        self.backings: BackingTable | None = None  # set by the adapter when the kernel does FUSE passthrough
        self.kernel: KernelCache | None = None  # set by the adapter when libfuse can tell the kernel of reloads
        self._set_tracks(tracks)
        self._unsubscribe = fetcher.subscribe(self._on_download_event)
        self._prefetch_stop = threading.Event()
        self._prefetch_thread: threading.Thread | None = None
        self._sizes_thread: threading.Thread | None = None
        self._prefetch_slots = threading.Semaphore(fetcher.jobs)
        self._prefetching: set[Download] = set()
        self._ahead: Walk | None = None  # the look-ahead's pass over the tracks (a reload starts a new one)
        self._reader_at = -1  # the furthest session position a reader opened (the look-ahead keeps ahead of it)
        self._reader_moved = threading.Condition()

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
            self._position = {id(t): i for i, t in enumerate(tracks)}

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
        previous = self.tracks
        self._set_tracks(tracks)
        if mtime is not None:
            self.mtime = mtime  # the folder's mtime changes too: tools that cache listings by mtime notice
        if self.kernel is not None:
            # After the swap, so that a LOOKUP the notice provokes gets the new answer. A listing (READDIRPLUS)
            # made the kernel cache every name with its attributes: without this a removed track would answer
            # ``stat`` — and a changed one show its old size — for the entry timeout. reload() runs on the
            # manifest watcher's thread, never in a FUSE request (see KernelEntries: that would deadlock).
            self.kernel.forget(stale_names(previous, tracks))
        self.report.replace_records(records)
        if self._prefetch_thread is not None and not self._prefetch_stop.is_set():
            self._prefetch_thread = None  # the running pass walks the old list; a new pass covers the new tracks
            self._ahead = None
            self.start_prefetch()

    def live_status(self) -> dict[str, object]:
        """What ``mixvfs status`` shows (the root's ``user.mixvfs.status``): downloads in flight and failures."""
        names: dict[str, str] = {}
        for track in self.tracks:
            if track.source is not None:
                names.setdefault(track.source.ident, track.name)
        now = time.monotonic()
        downloading = [
            {"name": names.get(d.source.ident, d.source.label), "available": d.available, "total": d.total,
             "attempts": d.attempts, "state": d.state.value, **({"via": d.via} if d.via else {}),
             **({"server_wait": math.ceil(wait)} if (wait := d.server_wait_left()) is not None else {}),
             "rate": d.available / (now - d.started) if d.started and now > d.started else None}
            for d in self.fetcher.active() if d.state in (State.PENDING, State.FETCHING)
        ]
        records = self.report.records()
        counts: dict[str, int] = {}
        failed = []
        via: dict[str, dict[str, str]] = {}
        for record in records:
            counts[record.status] = counts.get(record.status, 0) + 1
            if record.status in FAILED_STATUSES:
                failed.append({"name": record.name, "error": record.error})
            if record.via:
                via[record.id] = {"name": record.name, "via": record.via}
        status: dict[str, object] = {"session": self.report.session, "tracks": len(records),
                                     "counts": counts, "downloading": downloading,
                                     "failed": failed[:MAX_STATUS_FAILURES], "failed_total": len(failed)}
        waits = self.fetcher.http.waits.active()
        if waits:  # an origin that answered 429/503 with Retry-After: nothing is asked of it until then
            status["server_waits"] = waits
        team = self.fetcher.http.team
        if team is not None:  # per cache: up or down; per track downloaded: team cache (hit/miss) or origin
            status["team_cache"] = team.state()
            status["via"] = list(via.values())
        return status

    def names_of(self, source: Source) -> list[str]:
        """The files (one per track; several tracks may share a source) that ``source`` is the bytes of."""
        return [t.name for t in self._by_ident.get(source.ident, [])]

    def names(self) -> list[str]:
        self.foreground.touch()
        return [t.name for t in self.tracks]

    def browsing(self) -> None:
        """Someone is looking at the folder (a listing, ``ls -l``'s xattr questions): prefetch steps aside."""
        self.foreground.touch()

    def listing(self) -> list[Track]:
        """The tracks in listing order (one snapshot: a live reload swaps the whole list)."""
        self.foreground.touch()
        return self.tracks

    def lookup(self, name: str) -> Track | None:
        self.foreground.touch()  # someone is looking at the folder: prefetch steps aside
        return self._by_name.get(name)

    def total_size(self) -> int:
        return sum(t.size or 0 for t in self.tracks)

    def track_xattrs(self, track: Track) -> dict[str, str]:
        """What ``getfattr`` shows for a file: ``user.mixvfs.<key>``. From memory (the report), never the
        network; a track a live reload just replaced answers from its initial record."""
        record = self.report.record(track.id) if self.report.has(track.id) else self._initial_record(track)
        return {"status": record.status, "source": record.source, "error": record.error or "",
                "digest": record.digest or "", "id": track.id}

    def initial_records(self) -> list[TrackRecord]:
        indexed = self.fetcher.indexed()  # one query: only the tracks it names are looked up one by one
        return [self._initial_record(t, indexed) for t in self.tracks]

    def _initial_record(self, track: Track, indexed: set[str] | None = None) -> TrackRecord:
        if track.kind is Kind.LOCAL:
            return TrackRecord(track.id, track.name, "local", Status.LOCAL, bytes=track.size)
        if track.kind is Kind.MISSING:
            return TrackRecord(track.id, track.name, "missing", Status.MISSING, error=track.reason)
        assert track.source is not None
        unknown = indexed is not None and track.source.ident not in indexed
        entry = None if unknown else self.fetcher.cached(track.source)
        if entry is not None:
            return TrackRecord(track.id, track.name, "cloud", Status.CACHED, bytes=entry.size, digest=entry.digest)
        return TrackRecord(track.id, track.name, "cloud", Status.PENDING, bytes=track.size)

    # -- attributes ----------------------------------------------------------------------------------

    def attributes(self, track: Track) -> tuple[int, float]:
        """(size, mtime) of a file as ``stat`` should see it now. A local file is looked at again (its
        owner may have re-rendered it); a cloud track of unknown size is asked about, or fetched, rather
        than shown as empty. While a page-cached reader is open, its version's answer stays (see
        :mod:`mixvfs.vfs.fs.pages`)."""
        with self._reported(track):
            answer = self._attributes(track, ask_server=True)
        assert answer is not None
        return answer

    def answered_eio(self, track: Track | None, operation: str) -> None:
        """A program was answered EIO about ``track`` (None: no track): counted in the report, whose track must
        say why (status, error or reader_error) — the invariant the mount's tests check."""
        if track is None:
            log.error("%s answered EIO about no track", operation)
        self.report.answered_eio(track.id if track is not None else None)

    @contextlib.contextmanager
    def _reported(self, track: Track) -> Iterator[None]:
        """Whatever fails a program's stat, open or read of ``track`` is in the report before its EIO: the
        cache's own failures (its folder gone and not to be made again, its database refusing) and anything
        unforeseen, besides the track failures each path records itself. They fail this reader, not the track:
        the next access tries again."""
        try:
            yield
        except FetchError:
            raise
        except CacheError as exc:
            error = FetchError(str(exc))
            self._record_failure(track, error, track_failed=False)
            raise error from exc
        except Exception as exc:
            log.exception("%s: unexpected error", track.name)
            error = FetchError(f"internal error ({type(exc).__name__}: {exc}); see the log")
            self._record_failure(track, error, track_failed=False)
            raise error from exc

    def known_attributes(self, track: Track) -> tuple[int, float] | None:
        """:meth:`attributes` when answering needs no request to a server, so that a listing may hand them
        to the kernel beside the name; None for a cloud track whose size is still unknown (``stat`` asks), and
        for one a live reload replaced since the listing began (a listing read in parts keeps its snapshot:
        the kernel would cache a name the reload already told it to forget)."""
        if self._by_name.get(track.name) is not track:
            return None
        return self._attributes(track, ask_server=False)

    def _attributes(self, track: Track, *, ask_server: bool) -> tuple[int, float] | None:
        if self.pages.pinned(track.name):
            size, mtime = self.pages.answer(track.name, None, track.mtime)  # that reader's version
            return size or 0, mtime
        if track.kind is Kind.LOCAL:
            if not self._restat_local(track, record=ask_server):
                return None
            size = track.size or 0
        elif track.kind is Kind.CLOUD:
            if track.size is None and not ask_server:
                return None
            size = self._cloud_size(track)
        else:
            # Like a cloud track the server lacks: no size at all, so that no copier makes an empty stand-in.
            if not ask_server:
                return None
            raise SourceMissing(track.reason or "missing")
        answered, mtime = self.pages.answer(track.name, size, track.mtime)
        return answered or 0, mtime

    def _restat_local(self, track: Track, *, record: bool) -> bool:
        """Look at a local file again: its size and mtime now. A file gone, unreadable or no longer a regular
        file fails ``stat`` (recorded in the report when ``record``) rather than showing a size no open can
        deliver; one put back is served again."""
        assert track.local_path is not None
        problem, st = local_problem(track.local_path)
        if st is None:
            if not record:
                return False
            error = SourceMissing(problem or f"local file {track.local_path} cannot be used")
            self._record_failure(track, error)
            raise error
        track.size, track.mtime = st.st_size, st.st_mtime
        if self._failures.pop(track.id, None) is not None:
            self.report.update(track.id, status=Status.LOCAL, error=None, bytes=st.st_size)
        return True

    def _cloud_size(self, track: Track) -> int:
        """The size of a cloud track, never a made-up 0: the manifest's, the server's (HEAD, else a
        one-byte ranged GET), or — for a server that says nothing about lengths — the downloaded file's."""
        if track.size is not None:
            return track.size
        assert track.source is not None
        if self._failed_now(track) is not None:
            # It failed moments ago (its size, or its download): answer from memory, without asking the
            # server again, so that getfattr, ls -l and `mixvfs status` can say why. 0 is never served as the
            # track's size: its opens fail (EIO) as long as the kernel may hold this answer (see open).
            self._zero_shown[track.id] = self.now() + self.attr_timeout
            return 0
        deadline = deadline_after(self.request_wait)
        lock = self._track_lock(track)
        if not lock.acquire(timeout=-1 if self.request_wait is None else self.request_wait):
            error = RequestWaitExceeded("the size is unknown: another request asking for it took longer than one "
                                        f"request may wait ({self.request_wait:g} s, request_timeout)")
            self._record_failure(track, error, track_failed=False)
            raise error
        try:
            if track.size is None:
                try:
                    track.size = self.fetcher.probe(track.source).size
                    if track.size is None:
                        track.size = self._download_for_size(track, deadline)
                except (RequestWaitExceeded, ServerAskedToWait) as exc:
                    # This request's bound, or a request not sent while the origin's wait runs: this reader's
                    # failure, not the track's, so a stat after the wait asks again (failed_for may be longer).
                    self._record_failure(track, FetchError(f"the size is unknown: {exc.reason}"), track_failed=False)
                    raise
                except FetchError as exc:
                    self._record_failure(track, FetchError(f"the size is unknown: {exc.reason}"))
                    raise
        finally:
            lock.release()
        return track.size or 0

    def _download_for_size(self, track: Track, deadline: float | None) -> int:
        assert track.source is not None
        acquired = self.fetcher.acquire(track.source)
        try:
            if acquired.download is None:
                return os.fstat(acquired.fd).st_size
            acquired.download.wait_for(1 << 62, 0, deadline)
            return acquired.download.total or 0
        finally:
            os.close(acquired.fd)
            if acquired.download is not None:
                self.fetcher.release(acquired.download)

    def _track_lock(self, track: Track) -> threading.Lock:
        with self._lock:
            return self._track_locks.setdefault(track.id, threading.Lock())

    # -- reading -------------------------------------------------------------------------------------

    def _failed_now(self, track: Track) -> FetchError | None:
        """The failure a track is remembered by, while ``failed_for`` runs."""
        failure = self._failures.get(track.id)
        if failure is None or self.now() - failure.at >= self.failed_for:
            return None
        return failure.error

    def _sizeless_refusal(self, track: Track) -> FetchError | None:
        """Why a cloud track of unknown size cannot be opened now: it failed moments ago (its ``stat`` said 0
        bytes from memory), or the kernel may still hold that 0. A copier that sizes its copy from ``stat``
        (rsync, sendfile) would otherwise copy nothing and succeed; failing the open, no empty stand-in
        reaches the export (``cp`` opens its source before it creates the copy)."""
        if track.kind is not Kind.CLOUD:
            return None
        failure = self._failures.get(track.id)
        shown = self.now() < self._zero_shown.get(track.id, 0.0)
        if track.size is not None or failure is None:
            if not shown:
                return None
            # The size was learned meanwhile (a probe in the background, another reader's download), but the
            # kernel may still give this opener the 0 bytes it was told moments ago: once that has expired.
            return FetchError("the size was unknown a moment ago and the system may still say 0 bytes: "
                              "open it again in a second")
        if self._failed_now(track) is None and not shown:
            return None
        return FetchError(failure.error.reason, failure.error.status)

    def open(self, track: Track, *, previewer: str | None = None) -> Opened:
        """``previewer``: the name of a Spotlight or QuickLook process opening it (vfs/fs/finder.py), served
        stored bytes only."""
        with self._reported(track):
            return self._open(track, previewer)

    def _open(self, track: Track, previewer: str | None) -> Opened:
        if track.kind is Kind.MISSING:  # the report says so from the start: nothing more to record
            raise SourceMissing(track.reason or "missing")
        refusal = self._sizeless_refusal(track)
        if refusal is not None:
            self._record_failure(track, refusal, track_failed=False)  # this program's EIO, in the report too
            raise refusal
        try:
            if track.kind is Kind.LOCAL:
                handle, version = self._open_local(track)
            elif previewer is not None:
                handle, version = self._open_for_preview(track, previewer)
            else:
                handle, version = self._open_cloud(track)
        except NotForPreview as exc:
            self.report.update(track.id, urgent=True, note=exc.reason)  # a line, the track's status untouched
            raise
        except FetchError as exc:
            self._record_failure(track, exc)
            raise
        if isinstance(handle, FailedHandle):
            return Opened(handle, keep_cache=False, direct_io=True)
        try:
            admission = self.pages.admit(handle.name, version)
        except FetchError as exc:
            handle.close()
            self._record_failure(track, exc, track_failed=False)
            raise
        handle.pinned = admission.pinned
        if self.backings is not None:
            try:
                handle.backing = self._passthrough(handle, version)
            except FetchError as exc:
                self.release(handle)
                self._record_failure(track, exc, track_failed=False)
                raise
            if handle.backing is not None:  # keep_cache or direct_io with passthrough: EIO, or daemon reads
                return Opened(handle, keep_cache=False, direct_io=False, stale=admission.stale,
                              backing=handle.backing)
        return Opened(handle, admission.keep_cache, admission.direct_io, admission.stale)

    def _passthrough(self, handle: Handle, version: Version) -> int | None:
        """The backing file the kernel may read this open from, or None (served normally). Only a whole,
        verified blob of the cache (not a download, nor a local file its owner may rewrite under the reader)."""
        assert self.backings is not None
        blob_fd = handle.fd if isinstance(handle, BlobHandle) and not isinstance(handle, LocalHandle) else None
        backing = self.backings.open(handle.name, version.key, blob_fd)
        handle.counted = True
        return backing

    def _open_local(self, track: Track) -> tuple[Handle, Version]:
        assert track.local_path is not None
        try:
            # O_NONBLOCK: if the file was swapped for a FIFO since the mount, open must not wait for a writer.
            fd = os.open(track.local_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceMissing(f"local file {track.local_path} cannot be opened: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise SourceMissing(f"local file {track.local_path} is no longer a regular file")
        track.size, track.mtime = st.st_size, st.st_mtime
        if self._failures.pop(track.id, None) is not None:
            self.report.update(track.id, status=Status.LOCAL, error=None, bytes=st.st_size)
        stamp = file_stamp(st)
        return LocalHandle(track, fd, stamp), Version("file:" + ":".join(map(str, stamp)), st.st_size, st.st_mtime)

    def _open_cloud(self, track: Track) -> tuple[Handle, Version]:
        assert track.source is not None
        self._reader_reached(track)
        failed = self._failed_now(track)
        if failed is not None:
            return FailedHandle(track, failed), Version("failed", None, track.mtime)
        self._revalidate_once(track)
        held = self.backings.held(track.name) if self.backings is not None else None
        if held is not None:  # another program reads this version by passthrough: the same bytes, evicted or not
            key, fd = held
            return BlobHandle(track, fd), Version(key, os.fstat(fd).st_size, track.mtime)
        acquired = self.fetcher.acquire(track.source)
        if acquired.download is None:
            assert acquired.entry is not None
            version = Version(blob_key(acquired.entry.digest), acquired.entry.size, track.mtime)
            return BlobHandle(track, acquired.fd), version
        download = acquired.download
        handle = StreamHandle(track, download, acquired.fd, self.fetcher, self.request_wait)
        return handle, Version(download_key(download), download.total or track.size, track.mtime)

    def _open_for_preview(self, track: Track, previewer: str) -> tuple[Handle, Version]:
        """The stored blob as it is (no revalidation: no request to the server); nothing is downloaded."""
        assert track.source is not None
        acquired = self.fetcher.acquire_stored(track.source)
        if acquired is None or acquired.entry is None:
            raise NotForPreview(f"not downloaded for {previewer} (a Spotlight or QuickLook preview): "
                                "previews get cached tracks only")
        version = Version(blob_key(acquired.entry.digest), acquired.entry.size, track.mtime)
        return BlobHandle(track, acquired.fd), version

    def _revalidate_once(self, track: Track) -> None:
        """At a cached track's first open in this mount, ask the server (one conditional request) whether
        the stored version is still its version; never at listing time. A changed track is downloaded
        again; an unreachable server means the cached copy is served, and the report says so. Not asked
        again when the server confirmed the version moments ago (a download, the look-ahead)."""
        if self._confirmed(track):
            return
        assert track.source is not None
        with self._track_lock(track):
            if self._confirmed(track):
                return
            try:
                freshness = self.fetcher.revalidate(track.source)
            except FetchError as exc:
                self.report.update(track.id, note=f"served from cache, not revalidated: {exc.reason}")
                log.warning("%s: served from cache, not revalidated: %s", track.name, exc.reason)
            else:
                self._apply_freshness(track, freshness)
            track.validated = True

    def _confirmed(self, track: Track) -> bool:
        return track.validated or (track.confirmed_at is not None
                                   and time.monotonic() - track.confirmed_at < CONFIRMED_FOR)

    def _apply_freshness(self, track: Track, freshness: Freshness) -> None:
        if freshness is Freshness.CHANGED:
            # a new version (an mtime, so wall time): tools comparing mtimes see it
            track.mtime = max(track.mtime, time.time())
            self.report.update(track.id, status=Status.PENDING, digest=None,
                               note="the server's copy changed since it was cached; downloaded again")
            log.info("%s: the server's copy changed; downloading it again", track.name)
        elif freshness is Freshness.UNKNOWN:
            self.report.update(track.id, note="served from cache; the server gives no ETag or "
                                              "Last-Modified to revalidate it with")

    def read_span(self, handle: Handle, size: int, offset: int) -> tuple[int, int]:
        """The one read path: (descriptor, byte count) holding bytes [offset, offset+size) now — after
        waiting for a download to reach them, or checking that a local file is still the version opened."""
        return self._reading(handle, lambda: handle.span(size, offset))

    def read(self, handle: Handle, size: int, offset: int) -> bytes:
        """:meth:`read_span`, as bytes (for a binding without ``read_buf``, and for tests)."""
        fd, count = self.read_span(handle, size, offset)
        try:
            return os.pread(fd, count, offset) if count > 0 else b""
        except OSError as exc:
            error = FetchError(f"reading {handle.track.name} failed: {exc.strerror}")
            self._record_failure(handle.track, error)
            raise error from None

    def read_into(self, handle: Handle, buffer: memoryview, offset: int) -> int:
        """:meth:`read` into ``buffer`` (libfuse's reply buffer): the same checks, one copy less."""
        fd, count = self.read_span(handle, len(buffer), offset)
        if count <= 0:
            return 0
        try:
            return os.preadv(fd, [buffer[:count]], offset)
        except OSError as exc:
            error = FetchError(f"reading {handle.track.name} failed: {exc.strerror}")
            self._record_failure(handle.track, error)
            raise error from None

    def _reading(self, handle: Handle, action: Callable[[], T]) -> T:
        self.foreground.reading()
        with self._reported(handle.track):
            return self._read_recorded(handle, action)

    def _read_recorded(self, handle: Handle, action: Callable[[], T]) -> T:
        try:
            return action()
        except FetchError as exc:
            if isinstance(handle, FailedHandle) and self.report.has(handle.track.id):
                self.report.update(handle.track.id, urgent=True, reader_error=exc.reason)
            if not isinstance(handle, FailedHandle):
                # A reader that gave up on a download that is still going (or on a changed local file)
                # fails alone: the track and the bytes already held stay good for everybody else.
                alone = isinstance(handle, LocalHandle) or (
                    isinstance(handle, StreamHandle) and handle.download.error is None)
                self._record_failure(handle.track, exc, track_failed=not alone)
            raise
        except OSError as exc:
            error = FetchError(f"reading {handle.track.name} failed: {exc.strerror}")
            self._record_failure(handle.track, error)
            raise error from None

    def release(self, handle: Handle) -> None:
        if handle.pinned:
            self.pages.release(handle.name)
        if handle.counted and self.backings is not None:
            self.backings.release(handle.name, handle.backing)
        handle.close()

    # -- prefetch --------------------------------------------------------------------------------------

    def start_prefetch(self) -> None:
        """Once the folder is live: learn the sizes the mount could not learn, and prefetch."""
        if self._sizes_thread is None:
            self._sizes_thread = threading.Thread(target=self._learn_sizes, name="sizes", daemon=True)
            self._sizes_thread.start()
        self.start_revalidating()
        if not self.prefetch_enabled or self._prefetch_thread is not None:
            return
        self._prefetch_thread = threading.Thread(target=self._prefetch_all, name="prefetch", daemon=True)
        self._prefetch_thread.start()

    def start_revalidating(self) -> None:
        """Start the look-ahead (with prefetch): called before the folder goes live, so the first round trips
        overlap the mount's own start rather than follow it; again by :meth:`start_prefetch` (a no-op then)."""
        if self.confirm_ahead and self._ahead is None and not self._prefetch_stop.is_set():
            walk = self._ahead = Walk(list(self.tracks))
            for number in range(QUESTIONS):
                threading.Thread(target=self._look_ahead, args=(walk,), name=f"look-ahead-{number}",
                                 daemon=True).start()

    # -- look-ahead: what a cached track's first open would do, done just before it -------------------

    def _reader_reached(self, track: Track) -> None:
        position = self._position.get(id(track), -1)
        if position > self._reader_at:
            with self._reader_moved:
                self._reader_at = max(self._reader_at, position)
                self._reader_moved.notify_all()

    def _look_ahead(self, walk: Walk) -> None:
        """One of QUESTIONS workers keeping the cached tracks up to LOOK_AHEAD past the furthest one being read
        revalidated and their blobs checked, taken in session order: the same conditional request and the same
        check their first open would make, made before the exporter opens them. Each request costs a round
        trip, so one after another they held a warm export of 200 tracks at 80 ms to 16 s; QUESTIONS at once,
        from the mount's start, each open finds its answer in, or waits for its own request only (it holds the
        track's lock). Trusted for CONFIRMED_FOR."""
        while not self._prefetch_stop.is_set() and walk is self._ahead:
            taken = walk.take()
            if taken is None:
                return
            position, track = taken
            if track.kind is not Kind.CLOUD or track.source is None:
                continue
            with self._reader_moved:
                while position > self._reader_at + LOOK_AHEAD and not self._prefetch_stop.is_set():
                    self._reader_moved.wait(timeout=1.0)
            if self._prefetch_stop.is_set() or walk is not self._ahead:
                return
            self.foreground.wait_quiet()  # a listing goes first
            try:
                self._confirm_ahead(track)
            except Exception:  # the look-ahead only saves time: whatever it meets, the open does it all again
                log.exception("look-ahead of %s failed", track.name)

    def _confirm_ahead(self, track: Track) -> None:
        assert track.source is not None
        if self.fetcher.cached(track.source) is None:
            return  # nothing stored: a download will be the server's answer
        with self._track_lock(track):
            if not self._confirmed(track):
                try:
                    freshness = self.fetcher.revalidate(track.source)
                except FetchError:
                    return  # the open asks again, and notes it if the server cannot answer then either
                self._apply_freshness(track, freshness)
                track.confirmed_at = time.monotonic()
        self.fetcher.check_stored(track.source)

    def _learn_sizes(self) -> None:
        """Ask again, with growing pauses, about tracks whose size the mount-time probe could not learn
        (a 503 blip, a timeout), so a later listing shows it without waiting. A lookup asks at once too."""
        pause = 1.0
        while not self._prefetch_stop.wait(pause):
            unknown = [t for t in self.tracks if t.kind is Kind.CLOUD and t.size is None
                       and t.source is not None and t.probe_failure is not None]
            if not unknown:
                return
            for track in unknown:
                assert track.source is not None
                with contextlib.suppress(FetchError):
                    info = self.fetcher.probe(track.source)
                    track.size = track.size if track.size is not None else info.size
                    track.probe_failure = None  # answered: a server that gives no size is not asked again
            pause = min(pause * 2, 60.0)

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
                self._record_failure(track, exc, seen_by_reader=False)
                download = None
            else:
                if download is None:
                    self._stored_meanwhile(track)
            with self._lock:
                # Nothing to fetch, or already over (its end event came before we could hold it).
                if download is None or download.ended.is_set():
                    self._prefetch_slots.release()
                else:
                    self._prefetching.add(download)

    def _stored_meanwhile(self, track: Track) -> None:
        """Nothing to prefetch: the track is in the cache — maybe put there by another process sharing it
        (a second mount, `cachectl warm`) since the report was made. Say so, or it stays "pending" forever."""
        assert track.source is not None
        entry = self.fetcher.cached(track.source)
        if entry is not None and self.report.has(track.id) and self.report.record(track.id).status is not Status.CACHED:
            self.report.update(track.id, status=Status.CACHED, bytes=entry.size, digest=entry.digest, error=None)

    def stop_now(self) -> None:
        """The mount is ending (a stop signal or an unmount, as the adapter learns from libfuse): every read
        waiting for a download fails now — EIO, and a ``reader_error`` in the report — and the downloads
        are cancelled. libfuse ends its loop only once each request under way is answered; without this a
        reader waiting on a slow but steady download held the stop (and a killed reader's read-ahead the
        unmount) for as long as its bytes took to come. Reads of bytes already held are still served."""
        self._prefetch_stop.set()
        with self._reader_moved:
            self._reader_moved.notify_all()  # the look-ahead sees the stop now, not at its next timeout
        waiting = sum(d.readers for d in self.fetcher.active())
        self.fetcher.stop()
        log.info("the mount is ending: downloads cancelled, %d open files still downloading fail", waiting)

    def close(self, wait: float | None = None) -> None:
        self._prefetch_stop.set()
        self.fetcher.close(wait)
        self._unsubscribe()

    # -- events --------------------------------------------------------------------------------------

    def _on_download_event(self, download: Download, event: Event) -> None:
        if event is Event.DONE and download.digest is not None:
            self.pages.relabel(download_key(download), blob_key(download.digest))
        if event in (Event.DONE, Event.FAILED):
            with self._lock:
                if download in self._prefetching:
                    self._prefetching.remove(download)
                    self._prefetch_slots.release()
        for track in self._by_ident.get(download.source.ident, []):
            if event is Event.ATTEMPT:
                self.report.update(track.id, status=Status.FETCHING, attempts=download.attempts)
            elif event is Event.DONE:
                if track.size is None:
                    track.size = download.total
                # The server just sent this version whole: the confirmation a first open's HEAD would ask
                # for. Without this, every track prefetch finished cost the exporter's open one more request
                # (~1-2 ms on its serial path: BENCHMARKS.md). For CONFIRMED_FOR: a mount may live for days.
                track.confirmed_at = time.monotonic()
                self._failures.pop(track.id, None)
                self.report.update(track.id, status=Status.CACHED, bytes=download.total, digest=download.digest,
                                   error=None, attempts=download.attempts, via=download.via)
            elif event is Event.FAILED and download.error is not None:
                if isinstance(download.error, Cancelled):
                    self.report.update(track.id, status=Status.PENDING, error=None)
                else:
                    self._record_failure(track, download.error, seen_by_reader=False)

    def _record_failure(self, track: Track, error: FetchError, *, track_failed: bool = True,
                        seen_by_reader: bool = True) -> None:
        """Into the report (on disk before the reader sees EIO) and the log. ``track_failed``: the track
        itself fails for ``failed_for`` (else only this reader failed, e.g. it gave up waiting).
        ``seen_by_reader``: a program got this error (stat, open, read) — kept as ``reader_error`` even when
        the track is had later, since that program may have skipped it (a prefetch's failure is not)."""
        previous = self._failures.get(track.id)
        first = previous is None or previous.error.reason != error.reason
        if track_failed:
            self._failures[track.id] = Failure(error, self.now())
        if not self.report.has(track.id):
            log.error("%s (removed from the session): %s", track.name, error.reason)
            return
        record = self.report.record(track.id)
        if track_failed:
            seen = {"reader_error": error.reason} if seen_by_reader else {}
            self.report.update(track.id, urgent=True, status=Status.FAILED, error=error.reason,
                               attempts=max(record.attempts, 1), **seen)
        else:
            self.report.update(track.id, urgent=True, error=error.reason, reader_error=error.reason)
        if first:
            log.error("%s: %s", track.name, error.reason)
