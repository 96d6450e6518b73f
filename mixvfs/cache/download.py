"""One download, the whole state machine: PENDING → FETCHING → DONE | FAILED (and back to PENDING when a
prefetch pauses for a reader's track).

A :class:`Download` streams a URL into a private staging file while hashing it (xxh3-128), lets readers
wait for just the bytes they need (progressive reads), resumes a cut-off body (``Range``, ``If-Range``
only with a strong validator; bytes already held are compared with the server's, never trusted blindly),
retries transient failures with backoff through stamina, and commits — blob by rename and its index
entry, together — only once the body is complete and consistent. Every step is announced as an
:class:`Event` to the one callback it was given (the fetcher, which fans events out to subscribers).
The fetcher (:mod:`mixvfs.cache.fetcher`) decides which downloads run; it changes a download only through
the methods below (a reader attached or released, a prefetch's claim, a request to yield, the worker's begin),
each of which makes its transition under the download's one lock, ``cond``.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import errno
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import stamina
import stamina.instrumentation

from mixvfs.cache.bwlimit import Budget
from mixvfs.cache.concurrency import Concurrency
from mixvfs.cache.digest import hash_prefix, new_hasher
from mixvfs.cache.errors import (
    BadBody,
    CacheError,
    Cancelled,
    CertificateNotTrusted,
    ContentChanged,
    FetchError,
    LengthMismatch,
    NetworkError,
    NoSpace,
    NotKept,
    RequestWaitExceeded,
    ServerBusy,
    StallTimeout,
    TransientError,
)
from mixvfs.cache.http import Body, HttpClient
from mixvfs.cache.index import SourceEntry, SourceIndex
from mixvfs.cache.origin_wait import origin_key
from mixvfs.cache.policy import Limits, RetryPolicy
from mixvfs.cache.remote import Source
from mixvfs.cache.store import BlobStore
from mixvfs.cache.tail import MOST_RECONNECTS, TailWatch
from mixvfs.cache.team import VIA_HIT, VIA_ORIGIN

log = logging.getLogger(__name__)
retry_log = log.getChild("retries")  # one line per retry; `cachectl warm` silences it (the report counts tries)
_retrying = threading.local()  # the download whose attempt just failed, in the thread that retries it


def worth_another_attempt(exc: Exception) -> bool:
    """What the download tries again: a transient failure, but not a certificate that is not trusted (no request
    reached the server, and asking again will not change its certificate: it was tried 5 times, ~8 s of EIO to
    come, for an answer known at the first)."""
    return isinstance(exc, TransientError) and not isinstance(exc, CertificateNotTrusted)


def _say_retry(details: stamina.instrumentation.RetryDetails) -> None:
    download: Download | None = getattr(_retrying, "download", None)
    cause = details.caused_by
    reason = cause.reason if isinstance(cause, FetchError) else f"{type(cause).__name__}: {cause}"
    retry_log.info("%s: attempt %d failed (%s); trying again in %.1f s", download.source.label if download else
                   details.name, details.retry_num, reason, details.wait_for)


@functools.cache
def say_retries_in_our_words() -> None:
    """stamina's own hook logs a bare "stamina.retry_scheduled" per retry (its facts ride in ``extra``, which a
    plain log format drops): 128 such lines in one log said nothing. One line of ours instead, naming the track
    and the cause. Set when the first download runs (stamina's hooks are the process's), never at import."""
    stamina.instrumentation.set_on_retry_hooks([_say_retry])

_SERIALS = itertools.count(1)
DEMAND = 0  # queue priority of a download somebody is reading right now; prefetch uses 1 + session order


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


class Cancel(enum.Enum):
    """Whether the download is wanted: the three ways it may not be, each stronger than the one before."""

    NONE = "none"
    ASKED = "asked"  # the last reader left: the worker stops at its next chunk, unless someone revives it first
    DYING = "dying"  # the worker saw the cancel and is tearing down: too late to revive
    STOPPED = "stopped"  # the process is stopping: waits fail at once, nothing revives it (see stop())


@dataclass
class Claims:
    """Who wants the download, which decides its place in the fetcher's queue. Written under ``cond`` only."""

    readers: int = 0
    prefetch: bool = False
    priority: int = DEMAND  # DEMAND for readers, 1 + session order for prefetch
    yield_asked: bool = False  # a reader's track needs this prefetch's worker: pause, resume later


@dataclass
class Said:
    """What the server said of the version being fetched: it is what the index records with the blob."""

    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None


@dataclass
class ServerWait:
    """A wait the server asked for (Retry-After), while it lasts."""

    until: float = 0.0  # the http client's monotonic clock; 0: not waiting
    asked: float = 0.0  # how long the server asked for, as it said it


def _go_on() -> None:
    """The default step aside: none."""


@dataclass(frozen=True)
class Wiring:
    """What every download of one fetcher shares: the cache, the HTTP client, the policies, the one callback."""

    store: BlobStore
    index: SourceIndex
    http: HttpClient
    notify: Notify  # the fetcher's: it fans each event out to the subscribers
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: Limits = field(default_factory=Limits)
    # Called between chunks while nobody reads the download: background prefetch steps aside (the fetcher's
    # Foreground) while the mount is browsed.
    step_aside: Callable[[], None] = _go_on
    budget: Budget | None = None  # the bandwidth cap shared by every download of the process (bwlimit)
    meter: Concurrency | None = None  # told of bytes, round trips and push-back: how many downloads fill the link
    # The fetcher's word: these are the export's last downloads. Only then is a crawl a connection's, worth a new
    # one (cache/tail.py).
    in_tail: Callable[[], bool] = lambda: False


class Download:
    def __init__(self, source: Source, wiring: Wiring) -> None:
        self.source = source
        self.wiring = wiring
        self.cond = threading.Condition()  # the one lock of every transition below
        # Set once the download is cached or failed: for waiters that do not care about each chunk (the
        # prefetcher's slots), so they are not woken by every notify on ``cond``.
        self.ended = threading.Event()
        self.state = State.PENDING
        self.cancel = Cancel.NONE
        self.claims = Claims()
        self.error: FetchError | None = None
        self.attempts = 0
        self.available = 0
        self.served_upto = 0
        self.total = source.size
        self.digest: str | None = None
        self.said = Said(etag=source.etag)
        self.via: str | None = None  # where the last request's bytes came from: the origin or the team cache
        self.recheck = False  # the bytes held are not known to be of the server's current version
        self.resuming = False  # the next request continues after a pause: not a new attempt
        self.reconnects = 0  # times the rest was asked on a new connection because this download crawled
        self.server_wait = ServerWait()
        self.serial = next(_SERIALS)  # names this download's bytes (page cache)
        self.started = 0.0
        self.finished = 0.0
        self.last_progress = time.monotonic()  # of the last byte or attempt: waits end only without it
        self.path: Path | None
        self.fd, self.path = wiring.store.new_staging_file()
        self._hasher = new_hasher()
        self._wait_urls: dict[str, str] = {}  # origins besides the source's that asked this download to wait

    # -- what the fetcher reads ------------------------------------------------------------------------

    @property
    def readers(self) -> int:
        return self.claims.readers

    @property
    def priority(self) -> int:
        return self.claims.priority

    @property
    def yield_requested(self) -> bool:
        return self.claims.yield_asked

    @property
    def cancelled(self) -> bool:
        return self.cancel is not Cancel.NONE

    @property
    def dying(self) -> bool:
        return self.cancel is Cancel.DYING

    @property
    def server_wait_asked(self) -> float:
        return self.server_wait.asked

    # -- the fetcher's transitions (each under ``cond``) -----------------------------------------------

    def _revivable(self) -> bool:
        return self.cancel in (Cancel.NONE, Cancel.ASKED) and self.fd >= 0

    def revive(self) -> bool:
        """Wanted again (a reader or prefetch). False if it is already being torn down or is over."""
        with self.cond:
            if not self._revivable():
                return False
            self.cancel = Cancel.NONE
            return True

    def attach_reader(self) -> int | None:
        """A reader joins: revived, first in the queue, and given its own descriptor, atomically; None (and
        nothing changed) when the download is over or being torn down."""
        with self.cond:
            if not self._revivable():
                return None
            fd = os.dup(self.fd)
            self.cancel = Cancel.NONE
            self.claims.readers += 1
            self.claims.priority = DEMAND
            return fd

    def had_readers(self) -> bool:
        """Whether a reader has this download's bytes or is attached to it (its own descriptor of the staging
        file, from which it reads on to the end after a :class:`NotKept` failure)."""
        with self.cond:
            return self.claims.readers > 0 or self.served_upto > 0

    def release_reader(self) -> None:
        """A reader left. The last one leaving cancels a download that prefetch does not want and that still
        has bytes to fetch."""
        with self.cond:
            self.claims.readers -= 1
            complete = self.total is not None and self.available >= self.total
            if (self.claims.readers <= 0 and not self.claims.prefetch and not complete
                    and self.state in (State.PENDING, State.FETCHING) and self.cancel is Cancel.NONE):
                self.cancel = Cancel.ASKED
                self.cond.notify_all()

    def want_prefetch(self, order: int) -> bool:
        """Prefetch wants it, at ``order`` in the session (a reader's claim keeps it first). False when it is
        already being torn down or is over."""
        with self.cond:
            if not self._revivable():
                return False
            self.cancel = Cancel.NONE
            self.claims.prefetch = True
            if self.claims.readers == 0:
                self.claims.priority = 1 + order
            return True

    def ask_to_yield(self) -> bool:
        """A reader's track needs this worker: a download nobody reads pauses at its next chunk (and is
        queued again). False when it has readers or was already asked."""
        with self.cond:
            if self.claims.readers or self.claims.yield_asked:
                return False
            self.claims.yield_asked = True
            self.cond.notify_all()  # a wait for the bandwidth cap ends now
            return True

    def begin(self) -> bool:
        """A worker takes the download. False when it is no longer pending (taken, or over)."""
        with self.cond:
            if self.state is not State.PENDING:
                return False
            self.started = time.monotonic()
            self.state = State.FETCHING
            return True

    def abandon(self, error: FetchError) -> None:
        """The worker's last guard: end as failed, unless the download already ended."""
        if not self.ended.is_set():
            self._finish(error)

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
                self.claims.yield_asked = False
                self.resuming = True
            return
        except FetchError as exc:
            self._finish(exc)
        except CacheError as exc:
            whole = self.total is not None and self.available >= self.total  # verified: the commit follows it
            error = NotKept if whole else FetchError
            self._finish(error(f"the cache could not take the download: {exc}"))
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
                self.wiring.store.discard_staging(self.path)
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
        policy = self.wiring.retry
        say_retries_in_our_words()
        _retrying.download = self
        # Once an attempt met a stall (for a silent origin: no headers in time), the next ones are never the
        # origin's check: the reader would wait a second stall timeout for a question asked after its own went
        # unanswered.
        stalled = False
        for attempt in stamina.retry_context(
            on=worth_another_attempt,
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
                    with self.wiring.http.silences.no_check(stalled):
                        self._attempt()
                except StallTimeout:
                    stalled = True
                    raise
                except ServerBusy as exc:
                    if self.wiring.meter is not None:
                        self.wiring.meter.pushed_back()
                    if exc.wait_url is not None:  # a redirect's target (a CDN) may be the origin that said wait
                        self._wait_urls[origin_key(exc.wait_url)] = exc.wait_url
                    raise

    def _honour_server_wait(self) -> None:
        """No request before the time the origin named (429/503 with Retry-After, this track's or another's):
        wait for it here, cancellable, and counted as progress (a reader waiting on this download is not
        stalled by the server's own word). A wait longer than ``server_wait_max`` fails the track now."""
        waits = self.wiring.http.waits
        urls = [self.source.url, *self._wait_urls.values()]
        try:
            while (pending := max(filter(None, map(waits.left, urls)), default=None,
                                  key=lambda p: p[0])) is not None:
                too_long = next(filter(None, map(waits.too_long, urls)), None)
                if too_long is not None:
                    raise too_long
                announce = not self.server_wait.until
                with self.cond:
                    self.server_wait.until = waits.clock() + pending[0]
                    self.server_wait.asked = pending[1].seconds
                    self.last_progress = time.monotonic()
                if announce:
                    self._announce(Event.SERVER_WAIT)
                with self.cond:
                    if self.cancel is Cancel.NONE:  # a cancel or a stop notifies; the timeout only re-checks
                        self.cond.wait(timeout=min(pending[0], 1.0))
                self._check_cancel()
        finally:
            self.server_wait.until = 0.0

    def server_wait_left(self) -> float | None:
        """Seconds this download still waits because the server asked it to, None when it does not."""
        until = self.server_wait.until
        left = until - self.wiring.http.waits.clock()
        return left if until and left > 0 else None

    def _attempt(self) -> None:
        """One request. Bytes already held are never trusted on the server's word alone: a body that
        starts before ``available`` (a server ignoring Range, a 206 rounded down, an encoded body, a
        re-check after the validator changed) is compared with them byte for byte, and the download
        continues from where they differ — so the file is one version, whole, or the download fails."""
        # Resume where we are only with an ETag to hold the server to (strong: If-Range; weak: compared
        # below); a server that gives none is read again from the start and compared byte for byte, or a
        # change between the two requests would be stitched into one file.
        said = self.said
        start = self.available if said.etag and not self.recheck else 0
        asked = time.monotonic()
        with contextlib.ExitStack() as held:  # the request being read: another one may take its place (_switch)
            body = held.enter_context(self.wiring.http.get(self.source.url, start=start,
                                                           if_range=said.etag if start else None,
                                                           size=self.source.size))
            if self.wiring.meter is not None:
                self.wiring.meter.answered_after(time.monotonic() - asked, nearby=body.via == VIA_HIT)
            self.via = body.via
            changed = bool(body.etag and said.etag and body.etag != said.etag)
            if changed and body.start > 0:
                # A new version continued mid-file (no If-Range: weak or no validator): what we hold
                # may be of the old one. Read it again from the start and compare.
                said.etag = body.etag
                self.recheck = True
                raise NetworkError("the server's copy changed; reading it again from the start")
            if body.start > self.available:
                raise NetworkError(f"the server resumed at byte {body.start}, after the {self.available} bytes held")
            if changed:
                self.total = self.source.size  # the new version has a length of its own
            self._check_total(body.total)
            said.etag = body.etag or said.etag
            said.last_modified = body.last_modified or said.last_modified
            said.content_type = said.content_type or body.content_type
            watch = self._tail_watch(body.via)
            position = body.start
            chunks = body.chunks
            while (chunk := next(chunks, None)) is not None:
                self._check_cancel()
                fresh = self._skip_held(chunk, position) if position < self.available else chunk
                position += len(chunk)
                if position >= self.available:
                    self.recheck = False
                if fresh:
                    self._append(fresh)
                self._pace(len(chunk))
                if watch is not None and self.total is not None and watch.crawling(len(chunk), self.total - position):
                    watch = None
                    rest = self._switch(held) if position == self.available else None
                    if rest is not None:
                        chunks, position = rest.chunks, rest.start
        self.recheck = False
        if self.total is None:
            self.total = self.available  # no length was ever advertised: the body is what it is
        if self.available != self.total:
            raise NetworkError(f"the body ended after {self.available} of {self.total} bytes")

    def _switch(self, held: contextlib.ExitStack) -> Body | None:
        """This download crawls at the export's end (cache/tail.py): ask for the rest of the track on a new
        connection, while the crawling request stays open. Taken only if the answer is exactly that rest — from
        the byte held, of the same version (its ETag), of the same length: the crawling request is then closed
        (in ``held``) and the new one read on; a body that breaks after that is resumed as any other. Any other
        answer (an error, another version, a whole body) is dropped and the crawling request read on as if nothing
        had been asked."""
        self.reconnects += 1
        log.info("%s: %d of %d bytes, crawling at the end of the export; asking for the rest on a new connection",
                 self.source.label, self.available, self.total)
        fresh = contextlib.ExitStack()
        try:
            body = fresh.enter_context(self.wiring.http.get(self.source.url, start=self.available,
                                                            if_range=self.said.etag, size=self.source.size,
                                                            new_connection=True))
            if body.start != self.available or body.etag != self.said.etag or body.total != self.total:
                raise NetworkError(f"it was not the rest of this version (from byte {body.start}, ETag {body.etag}, "
                                   f"{body.total} bytes)")
        except FetchError as exc:
            fresh.close()
            log.info("%s: the new connection's answer is not used (%s); reading on the first", self.source.label,
                     exc)
            return None
        except BaseException:
            fresh.close()
            raise
        held.close()  # the crawling request: its connection goes
        held.enter_context(fresh.pop_all())
        return body

    def _tail_watch(self, via: str | None) -> TailWatch | None:
        """A watch for a crawl while the link has room (the export's end), where asking again can help: a request
        at the origin itself (a team cache's own fetch from the origin would go on), of a version it can be held
        to (an ETag: the rest is asked with If-Range), with no bandwidth cap (under a cap, slow is what was asked
        for), once."""
        meter = self.wiring.meter
        if (meter is None or self.wiring.budget is not None or via not in (None, VIA_ORIGIN) or not self.said.etag
                or self.reconnects >= MOST_RECONNECTS):
            return None
        return TailWatch(best_goodput=lambda: meter.best_goodput, round_trip=lambda: meter.round_trip,
                         link_goodput=meter.recent_goodput, in_tail=self.wiring.in_tail, clock=meter.clock)

    def _pace(self, count: int) -> None:
        """Under a bandwidth cap, wait before reading on (the server is slowed by TCP's flow control meanwhile);
        a cancel, a stop or a reader's claim on this worker ends the wait (the next chunk's check acts on it)."""
        budget = self.wiring.budget
        if budget is None:
            return
        deadline = time.monotonic() + budget.spend(count)
        with self.cond:
            while self.cancel is Cancel.NONE and not self.claims.yield_asked:
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
        if self.claims.readers == 0:
            self.wiring.step_aside()
        with self.cond:
            if self.cancel is Cancel.ASKED:
                self.cancel = Cancel.DYING
            if self.cancel is not Cancel.NONE:
                raise Cancelled("the reader went away")
            if self.claims.yield_asked and self.claims.readers == 0:
                raise Yielded

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
        if self.wiring.meter is not None:
            self.wiring.meter.received(len(chunk), nearby=self.via == VIA_HIT)
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
                raise NoSpace("no space left on the cache disk while downloading") from exc
            raise FetchError(f"cannot write the download: {exc.strerror}") from exc
        self._hasher.update(chunk)
        with self.cond:
            self.available = offset
            self.last_progress = time.monotonic()
            self.cond.notify_all()

    def _commit(self) -> None:
        """Blob and index entry together, before anyone hears DONE: whoever then opens the source finds
        it stored."""
        assert self.path is not None and self.total is not None
        store, index = self.wiring.store, self.wiring.index
        self.digest = str(self._hasher.hexdigest())
        with store.restaged(self.fd, self.path, self.total) as staged:
            store.commit(staged, self.digest, self.total)  # rename: a blob in the store is always whole
        self.path = None  # now owned by the store
        said = self.said
        entry = SourceEntry(self.digest, self.total, said.content_type, said.etag, said.last_modified)
        try:
            index.record(self.source.ident, entry)
        finally:
            # False when another process's commit evicted the blob between the rename and this row: its
            # eviction could not remove a row not yet written, so remove it now.
            stored = store.settle(self.digest)
        if not stored:
            index.forget(self.source.ident)

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
            self.wiring.notify(self, event)
        except Exception:  # a subscriber's bug must not kill a worker thread or hide the outcome
            log.exception("download event %s of %s: a subscriber failed", event.value, self.source.label)

    def stop(self) -> None:
        """The process is stopping (a stop signal, an unmount): every reader waiting for bytes fails now,
        and the worker gives up at its next chunk. libfuse's loop ends only once each request under way is
        answered, and a slow but steady server would otherwise keep a reader (and the stop) waiting for as
        long as the bytes it asked for take to come. For good: no reader or prefetch revives it."""
        with self.cond:
            self.cancel = Cancel.STOPPED
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
        patience = 2 * self.wiring.limits.stall_timeout + self.wiring.retry.wait_max
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
                if self.cancel is Cancel.STOPPED:
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


