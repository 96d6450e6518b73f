"""The session filesystem without FUSE: names, attributes, open/read/release, revalidation at an open. It owns
and starts the mount's background work: prefetch (prefetch.py), the look-ahead (lookahead.py) and sizes learned
late (sizes.py); what it learns of tracks is in its MountState, the report kept by its Recorder.

The FUSE adapter (:mod:`mixvfs.vfs.adapter.fuse_ops`) is a thin shell over this class; everything here can be driven
by unit tests without a kernel. Failures are raised as :class:`mixvfs.cache.errors.FetchError` (the adapter's
errno table turns them into EIO) and recorded per track in the report first — never silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

from mixvfs.cache.defaults import FAILED_FOR
from mixvfs.cache.download import Download, Event
from mixvfs.cache.errors import (
    CacheError,
    FetchError,
    NotForPreview,
    RequestWaitExceeded,
    ServerAskedToWait,
    SourceMissing,
    TransientError,
)
from mixvfs.cache.fetcher import Fetcher, Foreground
from mixvfs.cache.http import Freshness
from mixvfs.cache.remote import RemoteInfo
from mixvfs.vfs.fs.backing import BackingTable
from mixvfs.vfs.fs.handles import (
    BlobHandle,
    Handle,
    LocalHandle,
    Opened,
    StreamHandle,
    deadline_after,
    file_stamp,
)
from mixvfs.vfs.fs.live_status import live_status
from mixvfs.vfs.fs.lookahead import LookAhead
from mixvfs.vfs.fs.mount_state import MountState
from mixvfs.vfs.fs.pages import PageTable, Version, blob_key, download_key
from mixvfs.vfs.fs.prefetch import Prefetcher
from mixvfs.vfs.fs.recorder import Recorder
from mixvfs.vfs.fs.report import Entry, Report, Status, listed_record
from mixvfs.vfs.fs.server_word import ServerWord
from mixvfs.vfs.fs.sizes import learn_sizes
from mixvfs.vfs.session.late_answers import LateAnswers
from mixvfs.vfs.session.tracks import TRACK_NAME, Kind, SortedTracks, SourceTracks, Track, local_problem

log = logging.getLogger(__name__)

T = TypeVar("T")
BLOCK_SIZE = 1 << 20  # st_blksize: `cp` sizes its buffer from it (128 KiB by default)


class KernelCache(Protocol):
    """What the kernel caches about the folder's names and attributes (the adapter tells it through libfuse)."""

    def forget(self, names: list[str]) -> None:
        """Drop these names of the folder, and the folder's attributes: the next ``stat`` asks the daemon."""


class SessionFS:
    def __init__(
        self,
        tracks: list[Track],
        fetcher: Fetcher,
        report: Report,
        *,
        failed_for: float = FAILED_FOR,
        prefetch: bool = True,
        confirm_ahead: bool = False,
        mtime: float = 0.0,
        foreground: Foreground | None = None,
        attr_timeout: float = 1.0,
        now: Callable[[], float] = time.monotonic,  # durations only: a wall-clock step must not move them
        request_wait: float | None = None,
        late: LateAnswers | None = None,
    ) -> None:
        self.fetcher = fetcher
        # The longest one FUSE request may wait for a download (None: as long as it progresses); macFUSE
        # ejects the volume when a request outlives its daemon_timeout.
        self.request_wait = request_wait
        # Told when the folder is browsed or read, so prefetch steps aside while it is only browsed.
        self.foreground = foreground or fetcher.foreground
        self.mtime = mtime
        self.report = report
        self.recorder = Recorder(report, fetcher, failed_for=failed_for, now=now)
        self.server = ServerWord(lambda t: t.source is not None and fetcher.cached(t.source) is not None)
        self.attr_timeout = attr_timeout  # how long the kernel keeps an answer of ours about a file
        # Tracks of unknown size answered as 0 bytes from a remembered failure: until when the kernel may hold
        # that 0 (their opens fail until then, so no size-driven copier ever copies 0 bytes of them).
        self.prefetch_enabled = prefetch
        self.confirm_ahead = confirm_ahead and prefetch
        self.now = now
        self._lock = threading.Lock()
        self.state = MountState()  # what this mount learned of the tracks since they were listed
        self.pages = PageTable()
        self.backings: BackingTable | None = None  # set by the adapter when the kernel does FUSE passthrough
        self.kernel: KernelCache | None = None  # set by the adapter when libfuse can tell the kernel of reloads
        self._set_tracks(tracks)
        self._unsubscribe = fetcher.subscribe(self._on_download_event)
        self._prefetch_stop = threading.Event()  # the background work ends: sizes, look-ahead, prefetch
        self.prefetcher = Prefetcher(fetcher, self.recorder)
        self._sizes_thread: threading.Thread | None = None
        self.look_ahead = LookAhead(fetcher, self.state, self.foreground, self._apply_freshness, self._prefetch_stop)
        # The mount's questions still open when the folder went live: their answers are kept as they come, and a
        # stat of such a track waits for its question rather than asking again.
        self.late = late or LateAnswers()
        self.late.listen(self._late_answer)

    def _late_answer(self, place: int, url: str, answer: RemoteInfo | FetchError) -> None:
        tracks = self.tracks
        track = tracks[place] if place < len(tracks) else None
        if track is None or track.source is None or track.source.url != url or isinstance(answer, FetchError):
            return  # a reload changed the listing, or no answer: the sizes thread and a stat ask again
        self.state.learn_size(track, answer.size)
        self.state.answered(track)

    # -- listing -------------------------------------------------------------------------------------

    def _set_tracks(self, tracks: list[Track]) -> None:
        by_source, by_name = SourceTracks(tracks), SortedTracks(tracks, TRACK_NAME)
        with self._lock:
            self.tracks = tracks
            self._by_name = by_name
            self._by_source = by_source

    def reload(self, tracks: list[Track], *, mtime: float | None = None) -> None:
        """The manifest changed while mounted: swap the listing in one step. Open handles hold their Track
        (and descriptor or download), so files already open keep reading; a track that stays keeps its
        report record (status, attempts), under its new name if it was renamed."""
        records: list[Entry] = []
        for track in tracks:
            old = self.report.record(track) if self.report.has(track) else None
            if old is not None and old.source == track.kind.value:
                old.name = track.name
                # The track itself where its record is still the one its listing implies (no record of its own).
                records.append(track if old == listed_record(track) else old)
            else:
                records.append(self.recorder.listed_entry(track))
        previous = self.tracks
        self._set_tracks(tracks)
        if mtime is not None:
            self.mtime = mtime  # the folder's mtime changes too: tools that cache listings by mtime notice
        if self.kernel is not None:
            # After the swap, so that a LOOKUP the notice provokes gets the new answer. A listing (READDIRPLUS)
            # made the kernel cache every name with its attributes: without this a removed track would answer
            # ``stat`` — and a changed one show its old size — for the entry timeout. reload() runs on the
            # manifest watcher's thread, never in a FUSE request (see KernelEntries: that would deadlock).
            self.kernel.forget(self._stale_names(previous, tracks))
        self.state.listed(tracks)
        self.report.replace_records(records)
        if self.prefetcher.running:
            if self.confirm_ahead:
                self.look_ahead.restart(tracks)
            self.prefetcher.restart(tracks)

    def _stat_key(self, track: Track) -> tuple[object, ...]:
        """What ``stat`` of a track's file shows and which bytes it is: a name whose key changed is another file."""
        return (track.kind, self.state.size(track), self.state.mtime(track),
                track.source.ident if track.source else None, track.local_path)

    def _stale_names(self, old: list[Track], new: list[Track]) -> list[str]:
        """The names of ``old`` the kernel may hold wrongly once ``new`` is the listing: gone (removed, renamed)
        or now another file (size, mtime or source changed; a cloud track's mtime is the manifest's, so after a
        reload that is every cloud track)."""
        by_name = {t.name: t for t in new}
        return [t.name for t in old if t.name not in by_name or self._stat_key(by_name[t.name]) != self._stat_key(t)]

    def live_status(self) -> dict[str, object]:
        """What ``mixvfs status`` shows (the root's ``user.mixvfs.status``): downloads in flight and failures."""
        return live_status(self.tracks, self.fetcher, self.report, server=self.server.text(self.tracks))

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
        return sum(self.state.size(t) or 0 for t in self.tracks)

    def track_xattrs(self, track: Track) -> dict[str, str]:
        """What ``getfattr`` shows for a file: ``user.mixvfs.<key>``. From memory (the report), never the
        network; a track a live reload just replaced answers from its initial record."""
        record = self.recorder.record_of(track)
        return {"status": record.status, "source": record.source, "error": record.error or "",
                "digest": record.digest or "", "id": track.id}

    def initial_records(self) -> list[Entry]:
        return self.recorder.initial_records(self.tracks)

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
            self.recorder.record_failure(track, error, track_failed=False)
            raise error from exc
        except Exception as exc:
            log.exception("%s: unexpected error", track.name)
            error = FetchError(f"internal error ({type(exc).__name__}: {exc}); see the log")
            self.recorder.record_failure(track, error, track_failed=False)
            raise error from exc

    def known_attributes(self, track: Track) -> tuple[int, float] | None:
        """:meth:`attributes` when answering needs no request to a server, so that a listing may hand them
        to the kernel beside the name; None for a cloud track whose size is still unknown (``stat`` asks), and
        for one a live reload replaced since the listing began (a listing read in parts keeps its snapshot:
        the kernel would cache a name the reload already told it to forget)."""
        if not self._listed(track):
            return None
        return self._attributes(track, ask_server=False)

    def _listed(self, track: Track) -> bool:
        """Whether ``track`` is in the listing now: at its manifest index (a listing holds each track there;
        no search per entry of a listing), else under its name."""
        tracks, at = self.tracks, track.spec.index
        return (at < len(tracks) and tracks[at] is track) or self._by_name.get(track.name) is track

    def _attributes(self, track: Track, *, ask_server: bool) -> tuple[int, float] | None:
        if self.pages.pinned(track.name):
            size, mtime = self.pages.answer(track.name, None, self.state.mtime(track))  # that reader's version
            return size or 0, mtime
        if track.kind is Kind.LOCAL:
            if not self._restat_local(track, record=ask_server):
                return None
            size = self.state.size(track) or 0
        elif track.kind is Kind.CLOUD:
            if self.state.size(track) is None and not ask_server:
                return None
            size = self._cloud_size(track)
        else:
            # Like a cloud track the server lacks: no size at all, so that no copier makes an empty stand-in.
            if not ask_server:
                return None
            raise SourceMissing(track.reason or "missing")
        answered, mtime = self.pages.answer(track.name, size, self.state.mtime(track))
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
            self.recorder.record_failure(track, error)
            raise error
        self.state.local_file(track, st.st_size, st.st_mtime)
        self.recorder.local_again(track, st.st_size)
        return True

    def _cloud_size(self, track: Track) -> int:
        """The size of a cloud track, never a made-up 0: the manifest's, the server's (HEAD, else a
        one-byte ranged GET), or — for a server that says nothing about lengths — the downloaded file's."""
        known = self.state.size(track)
        if known is not None:
            return known
        assert track.source is not None
        if self.recorder.failed_now(track) is not None:
            # It failed moments ago (its size, or its download): answer from memory, without asking the
            # server again, so that getfattr, ls -l and `mixvfs status` can say why. 0 is never served as the
            # track's size: its opens fail (EIO) as long as the kernel may hold this answer (see open).
            self.state.showed_zero(track, self.now() + self.attr_timeout)
            return 0
        deadline = deadline_after(self.request_wait)
        lock = self.state.question_lock(track)
        if not lock.acquire(timeout=-1 if self.request_wait is None else self.request_wait):
            error = RequestWaitExceeded("the size is unknown: another request asking for it took longer than one "
                                        f"request may wait ({self.request_wait:g} s, request_timeout)")
            self.recorder.record_failure(track, error, track_failed=False)
            raise error
        try:
            if self.state.size(track) is None and self.late.pending(track.spec.index, track.source.url):
                # The mount's own question about it is still open: its answer, not a second question.
                self.late.wait(track.spec.index, track.source.url, self.request_wait)
            if self.state.size(track) is None:
                try:
                    self.state.learn_size(track, self.fetcher.probe(track.source).size)
                    if self.state.size(track) is None:
                        self.state.learn_size(track, self._download_for_size(track, deadline))
                except (RequestWaitExceeded, ServerAskedToWait) as exc:
                    # This request's bound, or a request not sent while the origin's wait runs: this reader's
                    # failure, not the track's, so a stat after the wait asks again (failed_for may be longer).
                    failure = FetchError(f"the size is unknown: {exc.reason}")
                    self.recorder.record_failure(track, failure, track_failed=False)
                    raise
                except FetchError as exc:
                    # The server down, busy or silent: a track the cache holds is served from the cache (its
                    # first open revalidates it once the server answers), so its size is the stored one.
                    stored = self.fetcher.cached(track.source) if isinstance(exc, TransientError) else None
                    if stored is None:
                        self.recorder.record_failure(track, FetchError(f"the size is unknown: {exc.reason}"))
                        raise
                    self.state.learn_size(track, stored.size)
        finally:
            lock.release()
        return self.state.size(track) or 0

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

    # -- reading -------------------------------------------------------------------------------------

    def _known_failure(self, track: Track) -> FetchError | None:
        """A cloud track that failed moments ago (within ``failed_for``) fails its open at once, whatever size
        ``stat`` shows (the manifest's): an open that succeeded would let ``cp`` create its copy and leave it
        empty at the first read's EIO."""
        if track.kind is not Kind.CLOUD:
            return None
        failed = self.recorder.failed_now(track)
        if failed is None:
            return None
        self._reader_reached(track)  # a copier going past failed tracks moves the look-ahead on all the same
        return FetchError(failed.reason, failed.status)

    def _sizeless_refusal(self, track: Track) -> FetchError | None:
        """Why a cloud track of unknown size cannot be opened now: it failed moments ago (its ``stat`` said 0
        bytes from memory), or the kernel may still hold that 0. A copier that sizes its copy from ``stat``
        (rsync, sendfile) would otherwise copy nothing and succeed; failing the open, no empty stand-in
        reaches the export (``cp`` opens its source before it creates the copy)."""
        if track.kind is not Kind.CLOUD:
            return None
        failure = self.recorder.failure(track)
        shown = self.now() < self.state.zero_shown_until(track)
        if self.state.size(track) is not None or failure is None:
            if not shown:
                return None
            # The size was learned meanwhile (a probe in the background, another reader's download), but the
            # kernel may still give this opener the 0 bytes it was told moments ago: once that has expired.
            return FetchError("the size was unknown a moment ago and the system may still say 0 bytes: "
                              "open it again in a second")
        if self.recorder.failed_now(track) is None and not shown:
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
        refusal = self._known_failure(track) or self._sizeless_refusal(track)
        if refusal is not None:
            self.recorder.record_failure(track, refusal, track_failed=False)  # this program's EIO, in the report too
            raise refusal
        try:
            if track.kind is Kind.LOCAL:
                handle, version = self._open_local(track)
            elif previewer is not None:
                handle, version = self._open_for_preview(track, previewer)
            else:
                handle, version = self._open_cloud(track)
        except NotForPreview as exc:
            self.report.update(track, urgent=True, note=exc.reason)  # a line, the track's status untouched
            raise
        except FetchError as exc:
            self.recorder.record_failure(track, exc)
            raise
        try:
            admission = self.pages.admit(handle.name, version)
        except FetchError as exc:
            handle.close()
            self.recorder.record_failure(track, exc, track_failed=False)
            raise
        handle.pinned = admission.pinned
        if self.backings is not None:
            try:
                handle.backing = self._passthrough(handle, version)
            except FetchError as exc:
                self.release(handle)
                self.recorder.record_failure(track, exc, track_failed=False)
                raise
            if handle.backing is not None:  # keep_cache or direct_io with passthrough: EIO, or daemon reads
                return Opened(handle, keep_cache=False, direct_io=False, stale=admission.stale,
                              backing=handle.backing)
        return Opened(handle, admission.keep_cache, admission.direct_io, admission.stale)

    def _passthrough(self, handle: Handle, version: Version) -> int | None:
        """The backing file the kernel may read this open from, or None (served normally). Only a whole,
        verified blob of the cache (not a download, nor a local file its owner may rewrite under the reader)."""
        assert self.backings is not None
        backing = self.backings.open(handle.name, version.key, handle.backing_fd)
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
        self.state.local_file(track, st.st_size, st.st_mtime)
        self.recorder.local_again(track, st.st_size)
        stamp = file_stamp(st)
        return LocalHandle(track, fd, stamp), Version("file:" + ":".join(map(str, stamp)), st.st_size, st.st_mtime)

    def _open_cloud(self, track: Track) -> tuple[Handle, Version]:
        assert track.source is not None
        self._reader_reached(track)
        self._revalidate_once(track)
        held = self.backings.held(track.name) if self.backings is not None else None
        if held is not None:  # another program reads this version by passthrough: the same bytes, evicted or not
            key, fd = held
            return BlobHandle(track, fd), Version(key, os.fstat(fd).st_size, self.state.mtime(track))
        acquired = self.fetcher.acquire(track.source)
        if acquired.download is None:
            assert acquired.entry is not None
            if acquired.unrecorded is not None:
                self.report.update(track, note=f"served from cache; its use was not recorded: {acquired.unrecorded}")
            version = Version(blob_key(acquired.entry.digest), acquired.entry.size, self.state.mtime(track))
            return BlobHandle(track, acquired.fd), version
        download = acquired.download
        handle = StreamHandle(track, download, acquired.fd, self.fetcher, self.request_wait)
        return handle, Version(download_key(download), download.total or self.state.size(track),
                               self.state.mtime(track))

    def _open_for_preview(self, track: Track, previewer: str) -> tuple[Handle, Version]:
        """The stored blob as it is (no revalidation: no request to the server); nothing is downloaded."""
        assert track.source is not None
        acquired = self.fetcher.acquire_stored(track.source)
        if acquired is None or acquired.entry is None:
            raise NotForPreview(f"not downloaded for {previewer} (a Spotlight or QuickLook preview): "
                                "previews get cached tracks only")
        version = Version(blob_key(acquired.entry.digest), acquired.entry.size, self.state.mtime(track))
        return BlobHandle(track, acquired.fd), version

    def _revalidate_once(self, track: Track) -> None:
        """At a cached track's first open in this mount, ask the server (one conditional request) whether
        the stored version is still its version; never at listing time. A changed track is downloaded
        again; an unreachable server means the cached copy is served, and the report says so. Not asked
        again when the server confirmed the version moments ago (a download, the look-ahead)."""
        if self.state.fresh(track):
            return
        assert track.source is not None
        with self.state.question_lock(track):
            if self.state.fresh(track):
                return
            try:
                freshness = self.fetcher.revalidate(track.source)
            except FetchError as exc:
                self.report.update(track, note=f"served from cache, not revalidated: {exc.reason}")
                log.warning("%s: served from cache, not revalidated: %s", track.name, exc.reason)
            else:
                self._apply_freshness(track, freshness)
            self.state.revalidated(track)

    def _apply_freshness(self, track: Track, freshness: Freshness) -> None:
        if freshness is Freshness.CHANGED:
            # a new version (an mtime, so wall time): tools comparing mtimes see it
            self.state.changed(track, time.time())
            self.report.update(track, status=Status.PENDING, digest=None,
                               note="the server's copy changed since it was cached; downloaded again")
            log.info("%s: the server's copy changed; downloading it again", track.name)
        elif freshness is Freshness.UNKNOWN:
            self.report.update(track, note="served from cache; the server gives no ETag or "
                                              "Last-Modified to revalidate it with")

    def read_span(self, handle: Handle, size: int, offset: int) -> tuple[int, int]:
        """The one read path: (descriptor, byte count) holding bytes [offset, offset+size) now — after
        waiting for a download to reach them, or checking that a local file is still the version opened."""
        return self._reading(handle, lambda: handle.span(size, offset))

    def read(self, handle: Handle, size: int, offset: int) -> bytes:
        """:meth:`read_span`, as bytes (the tests read this way; the mount reads by :meth:`read_into`)."""
        fd, count = self.read_span(handle, size, offset)
        try:
            return os.pread(fd, count, offset) if count > 0 else b""
        except OSError as exc:
            error = FetchError(f"reading {handle.track.name} failed: {exc.strerror}")
            self.recorder.record_failure(handle.track, error)
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
            self.recorder.record_failure(handle.track, error)
            raise error from None

    def _reading(self, handle: Handle, action: Callable[[], T]) -> T:
        self.foreground.reading()
        with self._reported(handle.track):
            return self._read_recorded(handle, action)

    def _read_recorded(self, handle: Handle, action: Callable[[], T]) -> T:
        try:
            return action()
        except FetchError as exc:
            self.recorder.record_failure(handle.track, exc, track_failed=not handle.fails_alone())
            raise
        except OSError as exc:
            error = FetchError(f"reading {handle.track.name} failed: {exc.strerror}")
            self.recorder.record_failure(handle.track, error)
            raise error from None

    def release(self, handle: Handle) -> None:
        if handle.pinned:
            self.pages.release(handle.name)
        if handle.counted and self.backings is not None:
            self.backings.release(handle.name, handle.backing)
        handle.close()

    # -- prefetch --------------------------------------------------------------------------------------

    def start_prefetch(self) -> None:
        """Learn the sizes the mount could not learn, revalidate ahead and prefetch: called while libfuse mounts
        (the daemon does not wait for the folder to be live), so the first round trips overlap the mount's start."""
        if self._sizes_thread is None:
            # How long the tracks are sets how many downloads begin at once (cache/concurrency.py).
            self.fetcher.expect_tracks([size for t in self.tracks if t.kind is Kind.CLOUD
                                        and (size := self.state.size(t)) is not None])
            self._sizes_thread = threading.Thread(target=learn_sizes, name="sizes", daemon=True,
                                                  args=(lambda: self.tracks, self.fetcher, self.state,
                                                        self._prefetch_stop, self.late))
            self._sizes_thread.start()
        self.start_revalidating()
        if self.prefetch_enabled:
            self.prefetcher.start(self.tracks)

    def start_revalidating(self) -> None:
        """Start the look-ahead (with prefetch): called before the folder goes live, so the first round trips
        overlap the mount's own start rather than follow it; again by :meth:`start_prefetch` (a no-op then)."""
        if self.confirm_ahead:
            self.look_ahead.start(self.tracks)

    def _reader_reached(self, track: Track) -> None:
        self.look_ahead.reached(self._listed_at(track))

    def _listed_at(self, track: Track) -> int:
        """The track's place in the current listing, -1 if a reload left it out. A listing is built in the
        manifest's order, so its place is its index there (a map of places was 10 MB of a 100 000-track mount)."""
        tracks = self.tracks
        at = track.spec.index
        return at if at < len(tracks) and tracks[at] is track else -1

    def stop_now(self) -> None:
        """The mount is ending (a stop signal or an unmount, as the adapter learns from libfuse): every read
        waiting for a download fails now — EIO, and a ``reader_error`` in the report — and the downloads
        are cancelled. libfuse ends its loop only once each request under way is answered; without this a
        reader waiting on a slow but steady download held the stop (and a killed reader's read-ahead the
        unmount) for as long as its bytes took to come. Reads of bytes already held are still served."""
        self._prefetch_stop.set()
        self.prefetcher.stop()
        self.look_ahead.wake()
        waiting = sum(d.readers for d in self.fetcher.active())
        self.fetcher.stop()
        log.info("the mount is ending: downloads cancelled, %d open files still downloading fail", waiting)

    def close(self, wait: float | None = None) -> None:
        self._prefetch_stop.set()
        self.prefetcher.stop()
        self.fetcher.close(wait)
        self._unsubscribe()
        self.recorder.close()

    # -- events --------------------------------------------------------------------------------------

    def _on_download_event(self, download: Download, event: Event) -> None:
        if event in (Event.DONE, Event.FAILED):
            self.server.hear(download.error if event is Event.FAILED else None)
        if event is Event.DONE and download.digest is not None:
            self.pages.relabel(download_key(download), blob_key(download.digest))
        for track in self._by_source.of(download.source):
            if event is Event.DONE:
                self.state.learn_size(track, download.total)
                # The server just sent this version whole: the confirmation a first open's HEAD would ask
                # for. Without this, every track prefetch finished cost the exporter's open one more request
                # (~1-2 ms on its serial path: BENCHMARKS.md). For CONFIRMED_FOR: a mount may live for days.
                self.state.confirmed(track)
            self.recorder.download_event(track, download, event)
