"""The fetcher: which downloads run. One :class:`~mixvfs.cache.download.Download` per source version at a
time, shared by every reader; at most ``jobs`` running; readers' tracks first, then prefetch in session
order (a reader's track pauses the least urgent prefetch rather than waiting behind it). Subscribers hear
every download's events (:meth:`Fetcher.subscribe`).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mixvfs.cache import defaults
from mixvfs.cache.bwlimit import Budget
from mixvfs.cache.concurrency import START, Concurrency
from mixvfs.cache.digest import hash_fd
from mixvfs.cache.download import DEMAND, Download, Event, State, Wiring
from mixvfs.cache.errors import Cancelled, FetchError, NoSpace
from mixvfs.cache.http import Freshness, HttpClient
from mixvfs.cache.index import SourceEntry, SourceIndex
from mixvfs.cache.policy import Limits, RetryPolicy
from mixvfs.cache.remote import RemoteInfo, Source
from mixvfs.cache.store import BlobStore
from mixvfs.cache.tail import TAIL_SHARE

log = logging.getLogger(__name__)

Subscriber = Callable[[Download, Event], None]


class Foreground:
    """When somebody last browsed the mount (listing, stat) and when somebody last read from it.

    Background prefetch steps aside for a moment while the folder is browsed but nothing is read: in one
    Python process every FUSE request needs the GIL, and a few prefetch threads busy in httpx made `ls -l`
    of a 10 000-track session 5 times slower. While an exporter copies (reads keep coming), prefetch is
    exactly what it needs, so it is never held back then; demand downloads are never held back at all.
    """

    def __init__(self, quiet: float = 0.02, copying: float = 0.25, patience: float = 1.0) -> None:
        self.quiet = quiet
        self.copying = copying
        # The longest a prefetch step waits for browsing to pause: about one `ls -l` of 10 000 tracks, so a
        # listing is not slowed by downloads (each one's httpx work holds the GIL every FUSE answer needs),
        # while a folder browsed without end (a file manager polling it) still lets prefetch go on.
        self.patience = patience
        self.last_browse = 0.0
        self.last_read = 0.0

    def touch(self) -> None:
        self.last_browse = time.monotonic()

    def reading(self) -> None:
        self.last_read = time.monotonic()

    def wait_quiet(self) -> None:
        deadline = time.monotonic() + self.patience
        while True:
            now = time.monotonic()
            idle = now - self.last_browse
            if idle >= self.quiet or now - self.last_read < self.copying or now >= deadline:
                return
            time.sleep(min(self.quiet - idle, deadline - now))


@dataclass
class Acquired:
    """What a reader gets: a stored blob's descriptor, or a download to read through (with its own fd)."""

    fd: int
    download: Download | None
    entry: SourceEntry | None
    unrecorded: str | None = None  # a stored blob served whose use the cache database would not record: why


class Fetcher:
    def __init__(
        self,
        store: BlobStore,
        index: SourceIndex,
        http: HttpClient,
        *,
        jobs: int = defaults.JOBS,
        retry: RetryPolicy | None = None,
        limits: Limits | None = None,
        foreground: Foreground | None = None,
        budget: Budget | None = None,
        adaptive: bool = False,
        start: int = START,
    ) -> None:
        self.store = store
        self.budget = budget  # bwlimit: one cap for all downloads
        self.index = index
        self.http = http
        self.jobs = max(1, jobs)
        self.limits = limits or Limits()
        # When the mount is browsed or read: prefetch steps aside while it is only browsed.
        self.foreground = foreground or Foreground()
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # a running download ended or paused
        self._pick = threading.Lock()  # held by the one worker taking the next item from the queue
        # adaptive: how many of the ``jobs`` may run is measured (cache/concurrency.py), from ``start``; else all.
        self.concurrency = Concurrency(self.jobs, start=start) if adaptive else None
        if self.concurrency is not None:
            http.on_handshake = self.concurrency.handshake_took
        self._wiring = Wiring(store, index, http, self._on_event, retry=retry or RetryPolicy(), limits=self.limits,
                              step_aside=self.foreground.wait_quiet, budget=budget, meter=self.concurrency,
                              in_tail=self._in_tail)
        self._active: dict[str, Download] = {}
        # Downloads that just stored their source, out of ``_active`` until every subscriber has heard DONE (a
        # mount notes the track as confirmed then): in between, the blob is in the index and the track looks
        # merely cached, and an open's revalidation asked the server about bytes it had just sent (1-7 HEADs of
        # a cold export of 200 tracks, each a round trip on the exporter's path).
        self._ending: dict[str, Download] = {}
        self._queue: queue.PriorityQueue[tuple[int, int, Download | None]] = queue.PriorityQueue()
        self._running: set[Download] = set()
        # Readers' downloads queued but not yet taken by a worker: their slots are spoken for, so a prefetch does
        # not take the one a paused prefetch just gave back.
        self._demanded: set[Download] = set()
        self._seq = itertools.count()
        self._workers: list[threading.Thread] = []
        self._closed = False
        # digest -> the blob file's stamp when this process last knew its bytes to be the digest's (it wrote
        # and hashed them, or hashed them at an open): an open that finds the same stamp skips the re-hash.
        self._intact: dict[str, tuple[int, ...]] = {}

    # -- what readers and the prefetcher call ---------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Hear every download's events (in the worker's thread: be quick); returns the unsubscribe call."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def expect_tracks(self, sizes: list[int]) -> None:
        """The sizes (those known) of the tracks this fetcher is about to download: long tracks begin with fewer
        downloads at once (cache/concurrency.py)."""
        if self.concurrency is not None:
            self.concurrency.expect_tracks(sizes)

    def indexed(self) -> set[str]:
        """The URLs of the sources the index maps (a superset of what :meth:`cached` finds whole)."""
        return self.index.source_urls()

    def _find(self, source: Source) -> tuple[str, SourceEntry] | None:
        """The stored version of ``source`` and the identity it is stored under (see ``SourceIndex.find``)."""
        return self.index.find(source.url, etag=source.etag, size=source.size)

    def cached(self, source: Source) -> SourceEntry | None:
        found = self._find(source)
        if found is None or not self.store.has(found[1].digest):
            return None  # evicted or pruned: the mapping is stale
        return found[1]

    def check_stored(self, source: Source) -> None:
        """The open's check of a stored blob (size; hash of a small one), made ahead of the open: a blob found
        intact is remembered, so its open does not read it again; a damaged one is left for the open, which
        removes it and downloads the track again. Records no use of the blob (the open does)."""
        found = self._find(source)
        entry = None if found is None else found[1]
        info = None if entry is None else self.store.info(entry.digest)
        if entry is None or info is None:
            return
        try:
            fd = os.open(self.store.path_of(info), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # evicted meanwhile: the open downloads it
        try:
            self._blob_intact(fd, entry)
        finally:
            os.close(fd)

    def probe(self, source: Source) -> RemoteInfo:
        """What the server says about ``source`` now (size, validators), without its body."""
        return self.http.probe(source.url)

    def revalidate(self, source: Source) -> Freshness:
        """Is the stored version of ``source`` still the server's? A changed one is forgotten, so the
        next :meth:`acquire` downloads the new version. Raises FetchError when the server cannot say."""
        if self._downloading(source):
            # Its version is the one being (or just) downloaded: current as of that download's start, which is
            # what a revalidation would learn (a copy is never older than its download's start).
            return Freshness.UNCHANGED
        found = self._find(source)
        if found is None or not self.store.has(found[1].digest):
            return Freshness.UNCHANGED  # nothing stored: a download fetches whatever is current
        ident, entry = found
        freshness = self.http.revalidate(source.url, entry.etag, entry.last_modified, entry.size)
        if freshness is Freshness.CHANGED:
            self.index.forget(ident)
        return freshness

    def acquire(self, source: Source) -> Acquired:
        """Open ``source`` for reading: its verified blob if stored, else a (shared) download, reader first."""
        with self._lock:
            download = self._active.get(source.ident)
            fd = download.attach_reader() if download is not None else None
            if download is None or fd is None:
                opened = self._open_stored(source)
                if opened is not None:
                    return opened
                download = self._start(source)
                fd = download.attach_reader()
                assert fd is not None  # a new download's staging file is open
            self._enqueue(download, DEMAND)
            return Acquired(fd, download, None)

    def acquire_stored(self, source: Source) -> Acquired | None:
        """Like :meth:`acquire`, for a stored blob only: None (and nothing started) when it is not stored."""
        with self._lock:
            return self._open_stored(source)

    def release(self, download: Download) -> None:
        """A reader closed its file. The last reader leaving cancels the download unless prefetch wants it."""
        download.release_reader()

    def prefetch(self, source: Source, order: int) -> Download | None:
        with self._lock:
            download = self._active.get(source.ident)
            if download is None or not download.want_prefetch(order):
                if self.cached(source) is not None:
                    return None
                download = self._start(source)
                download.want_prefetch(order)
            self._enqueue(download, download.priority)
            return download

    def _downloading(self, source: Source) -> bool:
        """A download of ``source`` is running, queued, or has stored it and is still being told."""
        with self._lock:
            return source.ident in self._active or source.ident in self._ending

    def busy(self) -> bool:
        """Whether any download is queued or running."""
        with self._lock:
            return bool(self._active)

    def active(self) -> list[Download]:
        with self._lock:
            return list(self._active.values())

    def stop(self) -> None:
        """Stop now, without waiting: no new download, every reader waiting for bytes fails at once, every
        download is cancelled (its worker gives up at its next chunk), and every connection is shut down: a
        request waiting for a server that sends no headers (a download's, a ``stat``'s size probe) ends now
        instead of at its stall timeout, which held the unmount and the stop for seconds. Idempotent;
        :meth:`close` does it too."""
        with self._lock:
            self._closed = True
            downloads = list(self._active.values())
        for download in downloads:
            download.stop()
        self.http.cut_connections()

    def close(self, wait: float | None = None) -> None:
        """:meth:`stop`, then wait for the workers: at most ``wait`` seconds in all (default 3)."""
        self.stop()
        for _ in self._workers:
            self._queue.put((-1, next(self._seq), None))
        # Bounded: a worker stuck in a stalled read notices the cancel only at its next chunk. Workers are
        # daemon threads, and a staging file left by an exiting process is removed at the next mount.
        deadline = time.monotonic() + (3.0 if wait is None else wait)
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- internals -------------------------------------------------------------------------------------

    def _open_stored(self, source: Source) -> Acquired | None:
        found = self._find(source)
        if found is None:
            return None
        ident, entry = found
        fd = self.store.open_blob(entry.digest)
        if fd is None:
            self.index.forget(ident)
            return None
        if not self._blob_intact(fd, entry):
            os.close(fd)
            log.warning("blob %s of %s was damaged on disk; removed, fetching again", entry.digest,
                        source.label)
            self.store.remove(entry.digest)
            self.index.forget(ident)
            return None
        return Acquired(fd, None, entry, self.store.use_refused)

    def _blob_intact(self, fd: int, entry: SourceEntry) -> bool:
        """The size always; the full hash of a small blob, unless this process already knows these bytes:
        it wrote them (hashing as they came) or hashed them at an earlier open, and the file is the same
        one, unchanged since (same inode, size, mtime and ctime: any write, truncate or chmod changes the
        ctime, and no program can set it back). Re-hashing a 4 MiB blob the prefetch had just stored read
        every byte once more at the exporter's open (BENCHMARKS.md, per-track cost)."""
        st = os.fstat(fd)
        if st.st_size != entry.size:
            return False
        if st.st_size > self.limits.verify_hash_below:
            return True
        stamp = blob_stamp(st)
        if self._intact.get(entry.digest) == stamp:
            return True
        if hash_fd(fd) != entry.digest:
            return False
        self._intact[entry.digest] = stamp
        return True

    def _remember_intact(self, download: Download) -> None:
        """A download just committed: its descriptor is now the blob's file (renamed into the store), whose
        bytes are the ones hashed while streaming. Not when the store already had them (the staging file
        was then unlinked, nlink 0: the blob is another file)."""
        if download.digest is None or download.fd < 0:
            return
        try:
            st = os.fstat(download.fd)
        except OSError:
            return
        if st.st_nlink > 0:
            self._intact[download.digest] = blob_stamp(st)

    def _start(self, source: Source) -> Download:
        if self._closed:
            raise Cancelled("the mount is shutting down")
        try:
            download = Download(source, self._wiring)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace("no space left on the cache disk") from exc
            raise FetchError(f"cannot create a staging file: {exc.strerror}") from exc
        self._active[source.ident] = download
        self._ensure_workers()
        return download

    def _enqueue(self, download: Download, priority: int) -> None:
        """Queue a pending download (callers hold ``_lock``). A reader's track never waits behind
        prefetches: when every worker is busy, the least urgent prefetch pauses (and resumes later with
        Range), so at most ``jobs`` downloads run at once and the reader still starts at once."""
        if download.state is not State.PENDING:
            return
        if priority == DEMAND:
            self._demanded.add(download)
        self._queue.put((priority, next(self._seq), download))
        if priority == DEMAND and len(self._running) >= self._limit():
            idle = [d for d in self._running if d.readers == 0 and not d.yield_requested]
            if idle:
                max(idle, key=lambda d: d.priority).ask_to_yield()

    def _in_tail(self) -> bool:
        """The export's last downloads: none waits for a slot, and few run (a quarter of the measured number at
        most). Before that, downloads that crawl together are the link's state (losses), not a connection's."""
        with self._lock:
            return self._queue.empty() and len(self._running) <= max(1, self._limit() // TAIL_SHARE)

    def _limit(self, *, waiting: bool = False) -> int:
        """How many downloads may run now (callers hold ``_lock``)."""
        return self.jobs if self.concurrency is None else min(self.jobs, self.concurrency.limit(waiting=waiting))

    def _ensure_workers(self) -> None:
        while len(self._workers) < self.jobs:
            worker = threading.Thread(target=self._work, name=f"fetch-{len(self._workers)}", daemon=True)
            self._workers.append(worker)
            worker.start()

    def _work(self) -> None:
        while True:
            # One worker at a time takes an item and decides on it: the queue's order (readers first, then session
            # order) is the order downloads start in, even with more workers than the measured number.
            with self._pick:
                _, _, download = self._queue.get()
                if download is None:
                    return
                with self._lock:
                    if download.state is not State.PENDING or self._active.get(download.source.ident) is not download:
                        self._demanded.discard(download)
                        continue  # a duplicate queue entry (priority bump) of a download already taken
                    no_slot = (download.priority != DEMAND and not self._closed
                               and len(self._running) + len(self._demanded) >= self._limit(waiting=True))
                    if no_slot:
                        # Back in the queue, where a reader's track would be taken first, until a download ends or
                        # the measured number grows (asked again at least every 0.1 s).
                        self._queue.put((download.priority, next(self._seq), download))
                    else:
                        self._demanded.discard(download)
                        if download.begin():
                            self._running.add(download)
                        else:
                            continue
            if no_slot:
                with self._lock:
                    self._freed.wait(timeout=0.1)
                continue
            try:
                download.run()
            except Exception:  # run() reports its own failures; this is the last guard of the worker
                log.exception("worker crashed on %s; the track fails, the worker goes on", download.source.label)
                with contextlib.suppress(Exception):
                    download.abandon(FetchError("internal error in the download worker"))
            finally:
                with self._lock:
                    self._running.discard(download)
                    self._freed.notify()
                    if download.state is State.PENDING and self._active.get(download.source.ident) is download:
                        self._queue.put((download.priority, next(self._seq), download))  # paused: resume later

    def _on_event(self, download: Download, event: Event) -> None:
        if event is Event.DONE:
            self._remember_intact(download)  # before anyone hears DONE and opens the blob
        ident = download.source.ident
        if event in (Event.DONE, Event.FAILED):
            with self._lock:  # over: a new reader of this source opens the blob, or starts anew
                self._demanded.discard(download)
                if self._active.get(ident) is download:
                    del self._active[ident]
                    if event is Event.DONE:
                        self._ending[ident] = download
        with self._lock:
            subscribers = list(self._subscribers)
        try:
            for subscriber in subscribers:
                try:
                    subscriber(download, event)
                except Exception:  # one subscriber's bug must not keep the others from hearing
                    log.exception("a subscriber failed on %s of %s", event.value, download.source.label)
        finally:
            if event is Event.DONE:
                with self._lock:
                    if self._ending.get(ident) is download:
                        del self._ending[ident]


def blob_stamp(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file's bytes may have. ctime included: unlike mtime, no program can set it back."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
