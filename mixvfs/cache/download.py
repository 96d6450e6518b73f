"""One download, the whole state machine: PENDING → FETCHING → DONE | FAILED (and back to PENDING when a
prefetch pauses for a reader's track).

A :class:`Download` streams a URL into a private staging file while hashing it (xxh3-128), lets readers
wait for just the bytes they need (progressive reads), resumes a cut-off body (``Range``, ``If-Range``
only with a strong validator; bytes already held are compared with the server's, never trusted blindly),
retries transient failures with backoff through stamina, and commits — blob by rename and its index
entry, together — only once the body is complete and consistent. Every step is announced as an
:class:`Event` to the one callback it was given (the scheduler, which fans events out to subscribers).
The scheduler (:mod:`mixvfs.cache.scheduler`) decides which downloads run.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import errno
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import stamina

from mixvfs.cache import defaults
from mixvfs.cache.bwlimit import Budget
from mixvfs.cache.concurrency import Concurrency
from mixvfs.cache.digest import hash_prefix, new_hasher
from mixvfs.cache.errors import (
    BadBody,
    CacheError,
    Cancelled,
    ContentChanged,
    FetchError,
    LengthMismatch,
    NetworkError,
    NoSpace,
    RequestWaitExceeded,
    ServerBusy,
    StallTimeout,
    TransientError,
)
from mixvfs.cache.http import HttpClient
from mixvfs.cache.index import SourceEntry, SourceIndex
from mixvfs.cache.origin_wait import origin_key
from mixvfs.cache.remote import Source
from mixvfs.cache.store import BlobStore

log = logging.getLogger(__name__)

_SERIALS = itertools.count(1)
DEMAND = 0  # queue priority of a download somebody is reading right now; prefetch uses 1 + session order


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = defaults.RETRIES
    total_timeout: float = 120.0
    wait_initial: float = defaults.RETRY_WAIT
    wait_max: float = 8.0
    wait_jitter: float = defaults.RETRY_WAIT
    stall_timeout: float = defaults.STALL_TIMEOUT
    verify_hash_below: int = 16 << 20  # blobs up to this size are fully re-hashed on open (xxh3: ~ms)


class State(enum.Enum):
    PENDING = "pending"  # queued (or paused for a reader's track)
    FETCHING = "fetching"
    DONE = "done"  # blob and index entry committed
    FAILED = "failed"  # ``error`` says why (Cancelled when the last reader went away)


class Event(enum.Enum):
    """What a download announces: every state change, and each attempt (a try, counted for the report)."""

    ATTEMPT = "attempt"
    SERVER_WAIT = "server_wait"  # the next request waits: the server asked for it (Retry-After)
    FETCHING = "fetching"
    DONE = "done"
    FAILED = "failed"


STATE_EVENTS = {State.FETCHING: Event.FETCHING, State.DONE: Event.DONE, State.FAILED: Event.FAILED}
Notify = Callable[["Download", Event], None]


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


@dataclass(eq=False)
class Download:
    source: Source
    store: BlobStore
    index: SourceIndex
    http: HttpClient
    policy: RetryPolicy
    notify: Notify  # the scheduler's: it fans each event out to the subscribers
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
    stopped: bool = False  # the process is stopping: waits fail at once, nothing revives it (see stop())
    priority: int = DEMAND  # its place in the queue: DEMAND for readers, 1 + session order for prefetch
    yield_requested: bool = False  # a reader's track needs this prefetch's worker: pause, resume later
    resuming: bool = False  # the next request continues after a pause: not a new attempt
    fd: int = -1
    path: Path | None = None
    etag: str | None = None
    last_modified: str | None = None
    encoding: str | None = None  # a Content-Encoding the server applied anyway (we stored the decoded bytes)
    via: str | None = None  # where the last request's bytes came from: the origin or the team cache (hit/miss)
    recheck: bool = False  # the bytes held are not known to be of the server's current version
    last_progress: float = 0.0  # monotonic time of the last byte or attempt: waits end only without it
    server_wait_until: float = 0.0  # waiting until then (the http client's monotonic clock): the server asked
    server_wait_asked: float = 0.0  # and how long it asked for, as it said it
    serial: int = field(default_factory=lambda: next(_SERIALS))  # names this download's bytes (page cache)
    started: float = 0.0
    finished: float = 0.0
    foreground: Foreground = field(default_factory=Foreground)
    budget: Budget | None = None  # the bandwidth cap shared by every download of the process (bwlimit)
    meter: Concurrency | None = None  # told of bytes, round trips and push-back: how many downloads fill the link
    cond: threading.Condition = field(default_factory=threading.Condition)
    # Set once the download is cached or failed: for waiters that do not care about each chunk (the
    # prefetcher's slots), so they are not woken by every notify on ``cond``.
    ended: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.total = self.source.size
        self.etag = self.source.etag
        self.fd, self.path = self.store.new_staging_file()
        self._hasher = new_hasher()
        self._wait_urls: dict[str, str] = {}  # origins besides the source's that asked this download to wait
        self.last_progress = time.monotonic()

    # -- worker side -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Fetch, verify and commit. Never raises: the outcome is in ``state``/``error``."""
        try:
            self._check_cancel()
            self._set_state(State.FETCHING)
            self._fetch_with_retries()
            if self.available == 0:  # a track is never empty: a 200 with no body is a broken server or CDN
                raise BadBody("the server sent an empty body (0 bytes) instead of the track")
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
                self._honour_server_wait()
                if not self.resuming:
                    self.attempts += 1
                    self._progress()
                    self._announce(Event.ATTEMPT)
                self.resuming = False
                try:
                    self._attempt()
                except ServerBusy as exc:
                    if self.meter is not None:
                        self.meter.pushed_back()
                    if exc.wait_url is not None:  # a redirect's target (a CDN) may be the origin that said wait
                        self._wait_urls[origin_key(exc.wait_url)] = exc.wait_url
                    raise

    def _honour_server_wait(self) -> None:
        """No request before the time the origin named (429/503 with Retry-After, this track's or another's):
        wait for it here, cancellable, and counted as progress (a reader waiting on this download is not
        stalled by the server's own word). A wait longer than ``server_wait_max`` fails the track now."""
        waits = self.http.waits
        urls = [self.source.url, *self._wait_urls.values()]
        try:
            while (pending := max(filter(None, map(waits.left, urls)), default=None,
                                  key=lambda p: p[0])) is not None:
                too_long = next(filter(None, map(waits.too_long, urls)), None)
                if too_long is not None:
                    raise too_long
                announce = not self.server_wait_until
                with self.cond:
                    self.server_wait_until = waits.clock() + pending[0]
                    self.server_wait_asked = pending[1].seconds
                    self.last_progress = time.monotonic()
                if announce:
                    self._announce(Event.SERVER_WAIT)
                with self.cond:
                    if not self.cancelled:  # a cancel or a stop notifies; the timeout only re-checks
                        self.cond.wait(timeout=min(pending[0], 1.0))
                self._check_cancel()
        finally:
            self.server_wait_until = 0.0

    def server_wait_left(self) -> float | None:
        """Seconds this download still waits because the server asked it to, None when it does not."""
        left = self.server_wait_until - self.http.waits.clock()
        return left if self.server_wait_until and left > 0 else None

    def _attempt(self) -> None:
        """One request. Bytes already held are never trusted on the server's word alone: a body that
        starts before ``available`` (a server ignoring Range, a 206 rounded down, an encoded body, a
        re-check after the validator changed) is compared with them byte for byte, and the download
        continues from where they differ — so the file is one version, whole, or the download fails."""
        # Resume where we are only with an ETag to hold the server to (strong: If-Range; weak: compared
        # below); a server that gives none is read again from the start and compared byte for byte, or a
        # change between the two requests would be stitched into one file.
        start = self.available if self.etag and not self.recheck else 0
        asked = time.monotonic()
        with self.http.get(self.source.url, start=start, if_range=self.etag if start else None,
                           size=self.source.size) as body:
            if self.meter is not None:
                self.meter.answered_after(time.monotonic() - asked)
            self.via = body.via
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
                self._pace(len(chunk))
        self.recheck = False
        if self.total is None:
            self.total = self.available  # no length was ever advertised: the body is what it is
        if self.available != self.total:
            raise NetworkError(f"the body ended after {self.available} of {self.total} bytes")

    def _pace(self, count: int) -> None:
        """Under a bandwidth cap, wait before reading on (the server is slowed by TCP's flow control meanwhile);
        a cancel, a stop or a reader's claim on this worker ends the wait (the next chunk's check acts on it)."""
        if self.budget is None:
            return
        deadline = time.monotonic() + self.budget.spend(count)
        with self.cond:
            while not (self.cancelled or self.stopped or self.yield_requested):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.1))
            self.last_progress = time.monotonic()  # waiting for the cap is no stall: readers keep waiting

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
            self.foreground.wait_quiet()
        with self.cond:
            if self.cancelled:
                self.dying = True
                raise Cancelled("the reader went away")
            if self.yield_requested and self.readers == 0:
                raise Yielded

    def revive(self) -> bool:
        """A reader (or prefetch) wants this download again. False if it is already being torn down."""
        with self.cond:
            if self.dying or self.stopped or self.fd < 0:
                return False
            self.cancelled = False
            return True

    def attach(self) -> int | None:
        """Revive and give a reader its own descriptor, atomically; None if the download is over."""
        with self.cond:
            if self.dying or self.stopped or self.fd < 0:
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
        if self.meter is not None:
            self.meter.received(len(chunk))
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
        """Blob and index entry together, before anyone hears DONE: whoever then opens the source finds
        it stored."""
        assert self.path is not None and self.total is not None
        self.digest = str(self._hasher.hexdigest())
        with self.store.restaged(self.fd, self.path, self.total) as staged:
            self.store.commit(staged, self.digest, self.total)  # rename: a blob in the store is always whole
        self.path = None  # now owned by the store
        entry = SourceEntry(self.digest, self.total, self.content_type, self.etag, self.last_modified)
        self.index.record(self.source.ident, entry)
        # Another commit (ours or another process's) may have evicted the blob between the rename and this
        # row: its eviction could not remove a row not yet written, so remove it now.
        if not self.store.has(self.digest):
            self.index.forget(self.source.ident)

    def _fail(self, exc: FetchError) -> None:
        self.error = exc
        self._set_state(State.FAILED)

    def _set_state(self, state: State) -> None:
        with self.cond:
            self.state = state
            self.cond.notify_all()
        if state in (State.DONE, State.FAILED):
            self.ended.set()
        self._announce(STATE_EVENTS[state])

    def _announce(self, event: Event) -> None:
        try:
            self.notify(self, event)
        except Exception:  # a subscriber's bug must not kill a worker thread or hide the outcome
            log.exception("download event %s of %s: a subscriber failed", event.value, self.source.label)

    def stop(self) -> None:
        """The process is stopping (a stop signal, an unmount): every reader waiting for bytes fails now,
        and the worker gives up at its next chunk. libfuse's loop ends only once each request under way is
        answered, and a slow but steady server would otherwise keep a reader (and the stop) waiting for as
        long as the bytes it asked for take to come. For good: no reader or prefetch revives it."""
        with self.cond:
            self.stopped = True
            self.cancelled = True
            self.cond.notify_all()

    # -- reader side -----------------------------------------------------------------------------------

    def wait_for(self, size: int, offset: int, deadline: float | None = None) -> int:
        """Wait until bytes [offset, offset+size) (or the end) are in the staging file; returns their end.

        Bytes already held are served even after the download failed (they were checked as they came),
        unless the failure says the body itself is wrong. A wait ends on the download's failure, on a lack
        of progress, or at ``deadline`` (``time.monotonic()``; None: none) with RequestWaitExceeded: a slow
        but steady download is otherwise waited for as long as it takes, and a download still queued
        behind others is not stalled."""
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
                if self.stopped:
                    raise Cancelled("the mount stopped (a stop signal or an unmount) before these bytes came")
                if self.state is State.PENDING:
                    self.last_progress = time.monotonic()
                elif time.monotonic() - self.last_progress > patience:
                    raise StallTimeout("no progress on the download for "
                                       f"{patience:.0f} s while waiting for the bytes being read")
                wait = 2.0  # every change notifies; the timeout only re-checks progress
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise RequestWaitExceeded(
                            "a read waited the longest one request may (request_timeout) for the download "
                            f"({'still queued' if self.state is State.PENDING else 'under way'}); "
                            "the track is not failed: read it again")
                self.cond.wait(timeout=wait)
            self.served_upto = max(self.served_upto, end)
        return max(end, offset)


class Yielded(Exception):  # control flow, not an error: never leaves this module
    """A prefetch pauses so that its worker can serve a track somebody is reading."""


