"""Downloads: one per source version at a time, shared by every reader, bounded across sources.

A :class:`Download` streams a URL into a private staging file while hashing it, lets readers wait for
just the bytes they need (progressive reads), resumes a cut-off body with ``Range``/``If-Range``,
retries transient failures with backoff through stamina, and commits the file to the store by rename
only once it is complete and consistent. A :class:`Fetcher` owns the worker threads (``jobs``), the
queue (readers first, then prefetch in session order) and the map of downloads in flight.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import errno
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import stamina

from mixvfs.cache.errors import (
    BadBody,
    CacheError,
    Cancelled,
    ContentChanged,
    FetchError,
    LengthMismatch,
    NetworkError,
    NoSpace,
    StallTimeout,
    TransientError,
)
from mixvfs.cache.http import Freshness, HttpClient
from mixvfs.cache.index import SourceEntry, SourceIndex, identity
from mixvfs.cache.remote import RemoteInfo
from mixvfs.cache.store import BlobStore, hash_fd, hash_prefix, new_hasher

log = logging.getLogger(__name__)

_SERIALS = itertools.count(1)
DEMAND = 0  # queue priority of a download somebody is reading right now; prefetch uses 1 + session order


@dataclass(frozen=True)
class Source:
    """A remote file version as far as we know it before downloading."""

    url: str
    size: int | None = None
    etag: str | None = None
    label: str = ""

    @property
    def ident(self) -> str:
        return identity(self.url, etag=self.etag, size=self.size)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    total_timeout: float = 120.0
    wait_initial: float = 0.5
    wait_max: float = 8.0
    wait_jitter: float = 0.5
    stall_timeout: float = 30.0
    verify_hash_below: int = 16 << 20  # blobs up to this size are fully re-hashed on open (xxh3: ~ms)


class State(enum.Enum):
    PENDING = "pending"
    FETCHING = "fetching"
    DONE = "cached"
    FAILED = "failed"


Listener = Callable[["Download", str], None]


class Foreground:
    """When somebody last browsed the mount (listing, stat) and when somebody last read from it.

    Background prefetch steps aside for a moment while the folder is browsed but nothing is read: in one
    Python process every FUSE request needs the GIL, and a few prefetch threads busy in httpx made `ls -l`
    of a 10 000-track session 5 times slower. While an exporter copies (reads keep coming), prefetch is
    exactly what it needs, so it is never held back then; demand downloads are never held back at all.
    """

    def __init__(self, quiet: float = 0.02, copying: float = 0.25) -> None:
        self.quiet = quiet
        self.copying = copying
        self.last_browse = 0.0
        self.last_read = 0.0

    def touch(self) -> None:
        self.last_browse = time.monotonic()

    def reading(self) -> None:
        self.last_read = time.monotonic()

    def wait_quiet(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while True:
            now = time.monotonic()
            idle = now - self.last_browse
            if idle >= self.quiet or now - self.last_read < self.copying or now >= deadline:
                return
            time.sleep(min(self.quiet - idle, deadline - now))


@dataclass(eq=False)
class Download:
    source: Source
    store: BlobStore
    http: HttpClient
    policy: RetryPolicy
    listener: Listener
    state: State = State.PENDING
    available: int = 0
    total: int | None = None
    digest: str | None = None
    content_type: str | None = None
    error: FetchError | None = None
    attempts: int = 0
    readers: int = 0
    prefetch_wanted: bool = False
    served_upto: int = 0
    cancelled: bool = False
    dying: bool = False  # the worker saw the cancel and is tearing down: too late to revive
    priority: int = DEMAND  # its place in the queue: DEMAND for readers, 1 + session order for prefetch
    yield_requested: bool = False  # a reader's track needs this prefetch's worker: pause, resume later
    resuming: bool = False  # the next request continues after a pause: not a new attempt
    fd: int = -1
    path: Path | None = None
    etag: str | None = None
    last_modified: str | None = None
    encoding: str | None = None  # a Content-Encoding the server applied anyway (we stored the decoded bytes)
    recheck: bool = False  # the bytes held are not known to be of the server's current version
    last_progress: float = 0.0  # monotonic time of the last byte or attempt: waits end only without it
    serial: int = field(default_factory=lambda: next(_SERIALS))  # names this download's bytes (page cache)
    started: float = 0.0
    finished: float = 0.0
    foreground: Foreground = field(default_factory=Foreground)
    cond: threading.Condition = field(default_factory=threading.Condition)
    # Set once the download is cached or failed: for waiters that do not care about each chunk (the
    # prefetcher's slots), so they are not woken by every notify on ``cond``.
    ended: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.total = self.source.size
        self.etag = self.source.etag
        self.fd, self.path = self.store.new_staging_file()
        self._hasher = new_hasher()
        self.last_progress = time.monotonic()

    # -- worker side -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Fetch, verify and commit. Never raises: the outcome is in ``state``/``error``."""
        try:
            self._check_cancel()
            self._set_state(State.FETCHING)
            self._fetch_with_retries()
            self._commit()
        except Yielded:
            # Paused for a reader's track: keep the staging file and the hash state; the fetcher queues
            # this download again and the next request resumes with Range from ``available``.
            with self.cond:
                self.state = State.PENDING
                self.yield_requested = False
                self.resuming = True
            return
        except FetchError as exc:
            self._finish(exc)
        except CacheError as exc:
            self._finish(FetchError(f"the cache could not take the download: {exc}"))
        except Exception as exc:  # a bug must still end as a failed track, never a hung reader
            log.exception("download of %s crashed", self.source.label)
            self._finish(FetchError(f"internal error: {type(exc).__name__}: {exc}"))
        else:
            self._finish(None)

    def _finish(self, error: FetchError | None) -> None:
        # A failed body leaves the disk before the outcome is announced, so whoever hears it sees the
        # final state of the staging folder (readers keep their own descriptors). The path may already
        # be gone (the store took it by rename, then failed): never let that end the worker thread.
        self.finished = time.monotonic()
        if error is not None and self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.path = None
        if error is None:
            self._set_state(State.DONE)
        else:
            self._fail(error)
        # Closed only after the announcement took the download out of the fetcher's map: a descriptor
        # closed while still findable could be reused by an unrelated open and handed to a new reader.
        with self.cond:
            if self.fd >= 0:
                os.close(self.fd)
            self.fd = -1

    def _fetch_with_retries(self) -> None:
        policy = self.policy
        for attempt in stamina.retry_context(
            on=TransientError,
            attempts=policy.attempts,
            timeout=policy.total_timeout,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
            wait_jitter=policy.wait_jitter,
        ):
            with attempt:
                self._check_cancel()
                if not self.resuming:
                    self.attempts += 1
                    self._progress()
                    self.listener(self, "attempt")
                self.resuming = False
                self._attempt()

    def _attempt(self) -> None:
        """One request. Bytes already held are never trusted on the server's word alone: a body that
        starts before ``available`` (a server ignoring Range, a 206 rounded down, an encoded body, a
        re-check after the validator changed) is compared with them byte for byte, and the download
        continues from where they differ — so the file is one version, whole, or the download fails."""
        start = 0 if self.recheck else self.available
        with self.http.get(self.source.url, start=start, if_range=self.etag if start else None) as body:
            changed = bool(body.etag and self.etag and body.etag != self.etag)
            if changed and body.start > 0:
                # A new version continued mid-file (no If-Range: weak or no validator): what we hold
                # may be of the old one. Read it again from the start and compare.
                self.etag = body.etag
                self.recheck = True
                raise NetworkError("the server's copy changed; reading it again from the start")
            if body.start > self.available:
                raise NetworkError(f"the server resumed at byte {body.start}, after the {self.available} bytes held")
            if changed:
                self.total = self.source.size  # the new version has a length of its own
            self._check_total(body.total)
            self.etag = body.etag or self.etag
            self.last_modified = body.last_modified or self.last_modified
            self.content_type = self.content_type or body.content_type
            self.encoding = body.encoding
            position = body.start
            for chunk in body.chunks:
                self._check_cancel()
                fresh = self._skip_held(chunk, position) if position < self.available else chunk
                position += len(chunk)
                if position >= self.available:
                    self.recheck = False
                if fresh:
                    self._append(fresh)
        self.recheck = False
        if self.total is None:
            self.total = self.available  # no length was ever advertised: the body is what it is
        if self.available != self.total:
            raise NetworkError(f"the body ended after {self.available} of {self.total} bytes")

    def _skip_held(self, chunk: bytes, position: int) -> bytes:
        """The part of ``chunk`` (at ``position``) beyond the bytes held, after checking the overlap."""
        count = min(len(chunk), self.available - position)
        held = os.pread(self.fd, count, position)
        if held == chunk[:count]:
            return chunk[count:]
        differs = next(i for i in range(count) if i >= len(held) or held[i] != chunk[i])
        self._diverge(position + differs)
        return chunk[differs:]

    def _diverge(self, at: int) -> None:
        """The server's bytes differ from ours from ``at`` on: keep the common start, drop the rest."""
        if at < self.served_upto:
            raise ContentChanged("the server's copy changed after part of it was already read")
        log.info("%s: the server's copy differs from byte %d on; continuing from there", self.source.label, at)
        os.ftruncate(self.fd, at)
        self._hasher = hash_prefix(self.fd, at)
        with self.cond:
            self.available = at

    def _check_cancel(self) -> None:
        """Between chunks: stop if cancelled, pause if a reader's track needs this worker, step aside
        briefly while the mount is being listed (prefetch only)."""
        if self.readers == 0:
            self.foreground.wait_quiet(limit=0.1)
        with self.cond:
            if self.cancelled:
                self.dying = True
                raise Cancelled("the reader went away")
            if self.yield_requested and self.readers == 0:
                raise Yielded

    def revive(self) -> bool:
        """A reader (or prefetch) wants this download again. False if it is already being torn down."""
        with self.cond:
            if self.dying or self.fd < 0:
                return False
            self.cancelled = False
            return True

    def attach(self) -> int | None:
        """Revive and give a reader its own descriptor, atomically; None if the download is over."""
        with self.cond:
            if self.dying or self.fd < 0:
                return None
            self.cancelled = False
            return os.dup(self.fd)

    def _check_total(self, total: int | None) -> None:
        if total is None:
            return
        if self.total is not None and total != self.total:
            raise LengthMismatch(
                f"length mismatch: the server sends {total} bytes where {self.total} were advertised")
        self.total = total

    def _progress(self) -> None:
        self.last_progress = time.monotonic()

    def _append(self, chunk: bytes) -> None:
        if self.total is not None and self.available + len(chunk) > self.total:
            raise LengthMismatch(f"length mismatch: the server sends more than the advertised {self.total} bytes")
        view = memoryview(chunk)
        offset = self.available
        try:
            while view:
                written = os.pwrite(self.fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace("no space left on the cache disk while downloading") from None
            raise FetchError(f"cannot write the download: {exc.strerror}") from None
        self._hasher.update(chunk)
        with self.cond:
            self.available = offset
            self.last_progress = time.monotonic()
            self.cond.notify_all()

    def _commit(self) -> None:
        assert self.path is not None and self.total is not None
        self.digest = str(self._hasher.hexdigest())
        self.store.commit(self.path, self.digest, self.total)  # rename: a blob in the store is always whole
        self.path = None  # now owned by the store

    def _fail(self, exc: FetchError) -> None:
        self.error = exc
        self._set_state(State.FAILED)

    def _set_state(self, state: State) -> None:
        with self.cond:
            self.state = state
            self.cond.notify_all()
        if state in (State.DONE, State.FAILED):
            self.ended.set()
        try:
            self.listener(self, state.value)
        except Exception:  # a listener's bug must not kill a worker thread or hide the outcome
            log.exception("download listener failed on %s", state.value)

    # -- reader side -----------------------------------------------------------------------------------

    def read(self, fd: int, size: int, offset: int) -> bytes:
        """Wait for bytes [offset, offset+size) (or the end) and return them. Raises the download's error."""
        end = self.wait_for(size, offset)
        return os.pread(fd, end - offset, offset) if end > offset else b""

    def wait_for(self, size: int, offset: int) -> int:
        """Wait until bytes [offset, offset+size) (or the end) are in the staging file; returns their end.

        Bytes already held are served even after the download failed (they were checked as they came),
        unless the failure says the body itself is wrong. A wait ends only on the download's failure or
        on a lack of progress: a slow but steady download is waited for as long as it takes, and a
        download still queued behind others is not stalled."""
        end = offset + size
        patience = 2 * self.policy.stall_timeout + self.policy.wait_max
        with self.cond:
            while True:
                if self.total is not None:
                    end = min(end, self.total)
                if self.available >= end and not isinstance(self.error, BadBody):
                    break
                if self.error is not None:
                    raise copy.copy(self.error)  # one exception object per raising thread
                if self.state is State.DONE:
                    break
                if self.state is State.PENDING:
                    self.last_progress = time.monotonic()
                elif time.monotonic() - self.last_progress > patience:
                    raise StallTimeout("no progress on the download for "
                                       f"{patience:.0f} s while waiting for the bytes being read")
                self.cond.wait(timeout=2.0)  # every change notifies; the timeout only re-checks progress
            self.served_upto = max(self.served_upto, end)
        return max(end, offset)


class Yielded(Exception):  # control flow, not an error: never leaves this module
    """A prefetch pauses so that its worker can serve a track somebody is reading."""


@dataclass
class Acquired:
    """What a reader gets: a stored blob's descriptor, or a download to read through (with its own fd)."""

    fd: int
    download: Download | None
    entry: SourceEntry | None


class Fetcher:
    def __init__(
        self,
        store: BlobStore,
        index: SourceIndex,
        http: HttpClient,
        *,
        jobs: int = 3,
        policy: RetryPolicy | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.http = http
        self.jobs = max(1, jobs)
        self.policy = policy or RetryPolicy()
        self.listener: Listener = listener or (lambda download, event: None)
        self._lock = threading.Lock()
        self._active: dict[str, Download] = {}
        self._queue: queue.PriorityQueue[tuple[int, int, Download | None]] = queue.PriorityQueue()
        self._running: set[Download] = set()
        self.foreground = Foreground()
        self._seq = itertools.count()
        self._workers: list[threading.Thread] = []
        self._closed = False

    # -- what readers and the prefetcher call ---------------------------------------------------------

    def cached(self, source: Source) -> SourceEntry | None:
        entry = self.index.lookup(source.ident)
        if entry is not None and not self.store.has(entry.digest):
            return None  # evicted or pruned: the mapping is stale
        return entry

    def probe(self, source: Source) -> RemoteInfo:
        """What the server says about ``source`` now (size, validators), without its body."""
        return self.http.probe(source.url)

    def revalidate(self, source: Source) -> Freshness:
        """Is the stored version of ``source`` still the server's? A changed one is forgotten, so the
        next :meth:`acquire` downloads the new version. Raises FetchError when the server cannot say."""
        entry = self.cached(source)
        if entry is None:
            return Freshness.UNCHANGED  # nothing stored: a download fetches whatever is current
        freshness = self.http.revalidate(source.url, entry.etag, entry.last_modified, entry.size)
        if freshness is Freshness.CHANGED:
            self.index.forget(source.ident)
        return freshness

    def acquire(self, source: Source) -> Acquired:
        """Open ``source`` for reading: its verified blob if stored, else a (shared) download, reader first."""
        with self._lock:
            download = self._active.get(source.ident)
            fd = download.attach() if download is not None else None
            if download is None or fd is None:
                opened = self._open_stored(source)
                if opened is not None:
                    return opened
                download = self._start(source)
                fd = download.attach()
                assert fd is not None  # a new download's staging file is open
            download.readers += 1
            self._enqueue(download, DEMAND)
            return Acquired(fd, download, None)

    def release(self, download: Download) -> None:
        """A reader closed its file. The last reader leaving cancels the download unless prefetch wants it."""
        with self._lock:
            download.readers -= 1
            complete = download.total is not None and download.available >= download.total
            if download.readers <= 0 and not download.prefetch_wanted and not complete and download.state in (
                State.PENDING, State.FETCHING
            ):
                with download.cond:
                    download.cancelled = True

    def prefetch(self, source: Source, order: int) -> Download | None:
        with self._lock:
            download = self._active.get(source.ident)
            if download is not None and not download.revive():
                download = None
            if download is None:
                if self.cached(source) is not None:
                    return None
                download = self._start(source)
            download.prefetch_wanted = True
            if download.readers == 0:
                download.priority = 1 + order
            self._enqueue(download, download.priority)
            return download

    def active(self) -> list[Download]:
        with self._lock:
            return list(self._active.values())

    def close(self, wait: float | None = None) -> None:
        """Cancel every download and wait for the workers: at most ``wait`` seconds in all (default 3)."""
        with self._lock:
            self._closed = True
            for download in self._active.values():
                download.cancelled = True
        for _ in self._workers:
            self._queue.put((-1, next(self._seq), None))
        # Bounded: a worker stuck in a stalled read notices the cancel only at its next chunk. Workers are
        # daemon threads, and a staging file left by an exiting process is removed at the next mount.
        deadline = time.monotonic() + (3.0 if wait is None else wait)
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- internals -------------------------------------------------------------------------------------

    def _open_stored(self, source: Source) -> Acquired | None:
        entry = self.index.lookup(source.ident)
        if entry is None:
            return None
        fd = self.store.open_blob(entry.digest)
        if fd is None:
            self.index.forget(source.ident)
            return None
        if not self._blob_intact(fd, entry):
            os.close(fd)
            log.warning("blob %s of %s was damaged on disk; removed, fetching again", entry.digest,
                        source.label)
            self.store.remove(entry.digest)
            self.index.forget(source.ident)
            return None
        return Acquired(fd, None, entry)

    def _blob_intact(self, fd: int, entry: SourceEntry) -> bool:
        size = os.fstat(fd).st_size
        if size != entry.size:
            return False
        if size <= self.policy.verify_hash_below:
            return hash_fd(fd) == entry.digest
        return True

    def _start(self, source: Source) -> Download:
        if self._closed:
            raise Cancelled("the mount is shutting down")
        try:
            download = Download(source, self.store, self.http, self.policy, self._on_event,
                                foreground=self.foreground)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace("no space left on the cache disk") from None
            raise FetchError(f"cannot create a staging file: {exc.strerror}") from None
        self._active[source.ident] = download
        self._ensure_workers()
        return download

    def _enqueue(self, download: Download, priority: int) -> None:
        """Queue a pending download (callers hold ``_lock``). A reader's track never waits behind
        prefetches: when every worker is busy, the least urgent prefetch pauses (and resumes later with
        Range), so at most ``jobs`` downloads run at once and the reader still starts at once."""
        if priority == DEMAND:
            download.priority = DEMAND
        if download.state is not State.PENDING:
            return
        self._queue.put((priority, next(self._seq), download))
        if priority == DEMAND and len(self._running) >= self.jobs:
            paused = [d for d in self._running if d.readers == 0 and not d.yield_requested]
            if paused:
                victim = max(paused, key=lambda d: d.priority)
                with victim.cond:
                    victim.yield_requested = True

    def _ensure_workers(self) -> None:
        while len(self._workers) < self.jobs:
            worker = threading.Thread(target=self._work, name=f"fetch-{len(self._workers)}", daemon=True)
            self._workers.append(worker)
            worker.start()

    def _work(self) -> None:
        while True:
            _, _, download = self._queue.get()
            if download is None:
                return
            with self._lock:
                if download.state is not State.PENDING or self._active.get(download.source.ident) is not download:
                    continue  # a duplicate queue entry (priority bump) of a download already taken
                download.started = time.monotonic()
                download.state = State.FETCHING
                self._running.add(download)
            try:
                download.run()
            except Exception:  # run() reports its own failures; this is the last guard of the worker
                log.exception("worker crashed on %s; the track fails, the worker goes on", download.source.label)
                if not download.ended.is_set():
                    with contextlib.suppress(Exception):
                        download._finish(FetchError("internal error in the download worker"))
            finally:
                with self._lock:
                    self._running.discard(download)
                    if download.state is State.PENDING and self._active.get(download.source.ident) is download:
                        self._queue.put((download.priority, next(self._seq), download))  # paused: resume later

    def _on_event(self, download: Download, event: str) -> None:
        if event in (State.DONE.value, State.FAILED.value):
            if download.state is State.DONE and download.digest is not None and download.total is not None:
                entry = SourceEntry(download.digest, download.total, download.content_type, download.etag,
                                    download.last_modified)
                self.index.record(download.source.ident, entry)
            with self._lock:
                if self._active.get(download.source.ident) is download:
                    del self._active[download.source.ident]
        self.listener(download, event)
