"""From a manifest to the files of the mount: each track's kind (local, cloud, missing), size, extension
and unique name. Sizes and formats the manifest does not give are asked of the server (HEAD, and a few
leading bytes when the Content-Type says nothing), concurrently and bounded, and remembered in the cache
index so a later mount knows them even when the server is down."""

from __future__ import annotations

import bisect
import enum
import logging
import operator
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mixvfs.cache.defaults import QUESTIONS, SLOW_SERVER_NOTICE
from mixvfs.cache.errors import CacheError, FetchError, StallTimeout
from mixvfs.cache.remote import RemoteInfo, Seen, Source
from mixvfs.vfs.session import sniff
from mixvfs.vfs.session.manifest import Session, TrackSpec
from mixvfs.vfs.session.naming import assign_names

if TYPE_CHECKING:  # only annotations: naming tracks (check-export) needs neither httpx nor diskcache
    from mixvfs.cache.http import HttpClient
    from mixvfs.cache.index import SourceIndex
    from mixvfs.vfs.session.late_answers import LateAnswers

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    LOCAL = "local"
    CLOUD = "cloud"
    MISSING = "missing"


# One per track: 100 000 in a library-sized session. Frozen: the listing as it was read; what a mount learns
# later (sizes, mtimes, the server's confirmations) is the mount's (vfs/fs/mount_state.py). eq=False: a track
# is itself, hashed by identity (a reload's new listing holds new tracks). Only what a mount reads: the
# extension and the server's answer went into the name and the source (two fields fewer put the object in
# Python's 128-byte size class, not 144: 1.6 MB of a 100 000-track mount).
@dataclass(frozen=True, slots=True, eq=False)
class Track:
    spec: TrackSpec
    kind: Kind
    name: str = ""
    size: int | None = None
    mtime: float = 0.0
    source: Source | None = None
    local_path: Path | None = None
    reason: str | None = None  # why a missing track is missing
    probe_failure: FetchError | None = None  # what the server said when we asked at mount time (its reason)
    validated: bool = False  # the server named this very version (its ETag is in ``source``) as it was listed
    answered: bool = False  # the server answered about it as it was listed (its size, its type)

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(slots=True)
class Draft:
    """A track while :func:`build_tracks` learns about it, before it is named and frozen."""

    spec: TrackSpec
    kind: Kind
    size: int | None = None
    mtime: float = 0.0
    local_path: Path | None = None
    reason: str | None = None
    probe_failure: FetchError | None = None
    remote: RemoteInfo | None = None
    validated: bool = False
    answered: bool = False
    source: Source | None = None
    ext: str | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    def track(self, name: str) -> Track:
        # The log names a download's track by its file name, as the folder shows it (the name's string is the
        # track's own: nothing more is kept per track).
        source = None if self.source is None else replace(self.source, label=name)
        return Track(self.spec, self.kind, name, self.size, self.mtime, source, self.local_path,
                     self.reason, self.probe_failure, self.validated, self.answered)


class SortedTracks:
    """Tracks found by a text key (a name, a URL) through one list sorted by it: a pointer per track, where a
    dict by key was about 38 bytes per track (3.8 MB of a 100 000-track mount); a lookup is a binary search,
    about 17 comparisons at 100 000. Tracks of one key keep the order they came in."""

    __slots__ = ("_key", "_sorted")

    def __init__(self, tracks: Iterable[Track], key: Callable[[Track], str]) -> None:
        self._key = key
        self._sorted = sorted(tracks, key=key)

    def add(self, tracks: Iterable[Track]) -> None:
        self._sorted = sorted([*self._sorted, *tracks], key=self._key)  # stable: the ones held stay first

    def get(self, text: str) -> Track | None:
        """The first track of this key."""
        held = self._sorted
        at = bisect.bisect_left(held, text, key=self._key)
        return held[at] if at < len(held) and self._key(held[at]) == text else None

    def every(self, text: str) -> list[Track]:
        held, key = self._sorted, self._key
        at = bisect.bisect_left(held, text, key=key)
        found = []
        while at < len(held) and key(held[at]) == text:
            found.append(held[at])
            at += 1
        return found


TRACK_NAME: Callable[[Track], str] = operator.attrgetter("name")
_SOURCE_URL: Callable[[Track], str] = operator.attrgetter("source.url")


class SourceTracks:
    """The tracks by source (several tracks may share one): whose bytes a download is. Found by URL, the string
    each track's source already holds (a key string per track, made for this map, was 9 MB of a 100 000-track
    mount), through one list sorted by it; the version (ETag, size) is compared when asked."""

    __slots__ = ("_by_url",)

    def __init__(self, tracks: Iterable[Track] = ()) -> None:
        self._by_url = SortedTracks((t for t in tracks if t.source is not None), _SOURCE_URL)

    def add(self, tracks: Iterable[Track]) -> None:
        self._by_url.add(t for t in tracks if t.source is not None)

    def of(self, source: Source) -> tuple[Track, ...]:
        """The tracks whose source is this version of this URL."""
        ident = source.ident
        return tuple(t for t in self._by_url.every(source.url) if t.source is not None and t.source.ident == ident)


def remember_names(index: SourceIndex, session_name: str, tracks: list[Track],
                   stop: threading.Event | None = None) -> None:
    """Tell the cache's index the name and session each cached track is seen under now (a mount, a warm, a
    pin): ``cachectl`` speaks in these names. A convenience: a cache that refuses it is said once in the log,
    and nothing else changes."""
    try:
        wanted = index.names_wanted(len(tracks))
        seen = {}
        for track in tracks:
            if track.source is None:
                continue
            ident = track.source.ident  # made and let go at once where not wanted: its memory is the next one's
            if wanted is None or ident in wanted:
                seen[ident] = Seen(track.name, session_name)
        index.remember_seen(seen, stop=stop.is_set if stop is not None else lambda: False, cached=wanted)
    except CacheError as exc:
        log.warning("the cache could not keep the tracks' names: %s", exc)


class NameKeeper:
    """:func:`remember_names` for a mount, in a thread of its own: a first mount of 100 000 cached tracks
    writes 100 000 names (about 20 s on a loaded 2-core machine), which must delay neither the mount nor its
    downloads. A newer listing (a reload) stops the older one's writing; :meth:`close` stops and waits."""

    def __init__(self, index: SourceIndex) -> None:
        self.index = index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def keep(self, session_name: str, tracks: list[Track]) -> None:
        self.close()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=remember_names, args=(self.index, session_name, tracks, self._stop),
                                        name="names", daemon=True)
        self._thread.start()

    def close(self, *, finish: bool = False) -> None:
        """Stop writing and wait for the thread; ``finish``: let it write every name first (a warm ending)."""
        if not finish:
            self._stop.set()
        if self._thread is not None:
            self._thread.join()


# Names of downloaded tracks written to the index at once while downloads still run: each write is a few
# statements and a transaction whichever its size, and one per track or two handed the GIL around ~100 times
# per track on a cold export of 1 MiB tracks (BENCHMARKS.md, item 4, third round).
NAMES_AT_ONCE = 64


class NameBatch:
    """The names of tracks as their downloads end, told to the index by a thread of its own: ``at_once`` of them in
    one transaction while downloads run, and whatever is queued as soon as none does (``soon``) or the batch
    closes. Told one download at a time on the download's own path, each name cost two reads and a write
    transaction (~0.2 ms, and the index's write lock, which every other download's commit waits for). A name is a
    convenience for ``cachectl``: one lost to a crash is written again by the next mount that lists the track
    (:class:`NameKeeper`). :meth:`close` writes what is still queued."""

    def __init__(self, index: SourceIndex, session_name: str, *, at_once: int = NAMES_AT_ONCE) -> None:
        self.index = index
        self.session_name = session_name
        self.at_once = at_once
        self.batches = 0  # written so far
        self._pending: list[Track] = []
        self._cond = threading.Condition()
        self._due = False  # the thread writes what is queued
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, track: Track, *, soon: bool = True) -> None:
        """Queue ``track``'s name; ``soon``: nothing else is downloading, write the queue now."""
        with self._cond:
            if self._closed:
                return
            self._pending.append(track)
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_all, name="names-done", daemon=True)
                self._thread.start()
            self._wake(soon or len(self._pending) >= self.at_once)

    def flush(self) -> None:
        """Write what is queued now (downloads ended without one more name)."""
        with self._cond:
            self._wake(bool(self._pending))

    def _wake(self, due: bool) -> None:
        if due and not self._due:
            self._due = True
            self._cond.notify_all()

    def _write_all(self) -> None:
        while True:
            with self._cond:
                while not self._due and not self._closed:
                    self._cond.wait()
                self._due = False
                if not self._pending:
                    if self._closed:
                        return
                    continue
                batch, self._pending = self._pending, []
            remember_names(self.index, self.session_name, batch)
            with self._cond:
                self.batches += 1
                self._cond.notify_all()

    def written(self, batches: int, timeout: float | None = None) -> bool:
        """Wait until ``batches`` batches in all are written; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.batches >= batches, timeout)

    def close(self) -> None:
        """Write what is queued, then stop (the index must still be open)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()


def local_problem(path: Path) -> tuple[str | None, os.stat_result | None]:
    """Why the local file at ``path`` cannot be served now (None: it can), and its ``stat`` when it can. It must
    be a regular file (a FIFO or device would hang or never end a read) that this process may open: one that
    stats but cannot be read would show its size and then fail, and a copier would leave an empty file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"local file {path} cannot be used: {exc.strerror}", None
    if stat.S_ISDIR(st.st_mode):
        return f"local file {path} is a folder", None
    if not stat.S_ISREG(st.st_mode):
        return f"local file {path} is not a regular file", None
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK))
    except OSError as exc:
        return f"local file {path} cannot be read: {exc.strerror}", None
    return None, st


def classify(spec: TrackSpec, mtime: float) -> Draft:
    """Local if the file can be read, else cloud if it has a stream path, else missing (with the reason)."""
    problem = None
    if spec.file_path is not None:
        problem, st = local_problem(spec.file_path)
        if st is not None:
            return Draft(spec, Kind.LOCAL, size=st.st_size, mtime=st.st_mtime, local_path=spec.file_path)
    if spec.cloud_url is not None:
        return Draft(spec, Kind.CLOUD, size=spec.size, mtime=mtime)
    reason = problem or "the track has neither a local file nor a cloud stream path"
    return Draft(spec, Kind.MISSING, size=0, mtime=mtime, reason=reason)


# The longest the mount waits for the server's answers about tracks without a size or a known type before the
# folder goes live (a slow server and thousands of such tracks took many minutes, Ctrl-C ignored).
PROBE_DEADLINE = 10.0


def build_tracks(session: Session, *, http: HttpClient | None, index: SourceIndex | None,
                 questions: int = QUESTIONS, deadline: float = PROBE_DEADLINE,
                 waiting: Callable[[str], None] | None = None, late: LateAnswers | None = None) -> list[Track]:
    """``http`` None: the server is not asked (what it said last time comes from ``index``, if any: no
    cache at all means no index, as for ``mixvfs check-export`` on a machine that never mounted).
    The server is asked for at most ``deadline`` seconds in all: a track it has not answered for by then is
    treated as one it could not answer for (its size asked again in the background, and at lookup), a
    transient failure (too slow now, not missing). ``waiting`` is told, once, what is being waited for when
    the answers take longer than ``SLOW_SERVER_NOTICE``. ``late``: the questions still open at the deadline go on
    in the background and their answers go there (a mount); without it they are dropped (the askers stop)."""
    tracks = [classify(spec, session.mtime) for spec in session.tracks]  # then frozen, once named
    cloud = [t for t in tracks if t.kind is Kind.CLOUD]
    needs_server = [t for t in cloud if t.size is None or _static_ext(t) is None]
    if needs_server and http is not None and index is not None:
        _probe_all(needs_server, http, index, questions, deadline, waiting, late)
    for track in needs_server:
        if track.remote is None and index is not None:
            track.remote = index.remote(track.spec.cloud_url or "")  # server down: what it said last time
    for track in tracks:
        _finish(track)
    names = assign_names([(t.id, t.spec.artist, t.spec.title, t.ext) for t in tracks])
    return [track.track(name) for track, name in zip(tracks, names, strict=True)]


def _static_ext(track: Draft) -> str | None:
    spec = track.spec
    return sniff.choose_ext(manifest_content_type=spec.content_type, file_path=str(spec.file_path or ""),
                            stream_path=spec.stream_path, server_content_type=None, head=None)


def _probe_all(tracks: list[Draft], http: HttpClient, index: SourceIndex, questions: int, deadline: float,
               waiting: Callable[[str], None] | None = None, late: LateAnswers | None = None) -> None:
    """Ask the server about ``tracks``, a few at a time, for at most ``deadline`` seconds. The answers are
    applied here, in the calling thread: a probe still running at the deadline changes no track. The askers
    are daemon threads (not a ThreadPoolExecutor, whose threads the interpreter joins at exit): a stop
    signal while a slow server keeps one waiting ends the daemon at once."""
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for position in range(len(tracks)):
        todo.put(position)
    answers: dict[int, RemoteInfo | FetchError] = {}
    all_in = threading.Condition()
    handed_over = False  # the deadline passed: answers go to ``late``

    def asker() -> None:
        while True:
            try:
                position = todo.get_nowait()
            except queue.Empty:
                return
            answer = _ask(tracks[position], http, index)
            with all_in:
                answers[position] = answer
                all_in.notify_all()
                late_one = handed_over
            if late_one and late is not None:
                late.arrived(tracks[position].spec.index, tracks[position].spec.cloud_url or "", answer)

    for number in range(min(len(tracks), questions)):
        threading.Thread(target=asker, name=f"probe-{number}", daemon=True).start()
    started = time.monotonic()
    with all_in:
        all_in.wait_for(lambda: len(answers) == len(tracks), timeout=min(deadline, SLOW_SERVER_NOTICE))
        if len(answers) < len(tracks) and waiting is not None:
            waiting(slow_server_text(tracks, len(tracks) - len(answers), deadline))
        all_in.wait_for(lambda: len(answers) == len(tracks), timeout=max(0.0, deadline - (time.monotonic() - started)))
        got = dict(answers)
        handed_over = True
        if late is not None:  # asked on in the background, 32 at once: each answer is kept when it comes
            late.asking([(t.spec.index, t.spec.cloud_url or "") for position, t in enumerate(tracks)
                         if position not in got])
    while late is None:  # the ones not started yet are never asked now
        try:
            todo.get_nowait()
        except queue.Empty:
            break
    for position, answer in got.items():
        _apply(tracks[position], answer)
    unanswered = [t for position, t in enumerate(tracks) if position not in got]
    if unanswered:
        log.warning("the server had not answered about %d track(s) after %g s; the folder goes live without "
                    "them: their questions go on in the background, and a program that looks waits for its "
                    "track's answer", len(unanswered), deadline)
        for track in unanswered:
            _apply(track, StallTimeout(f"the server did not answer within {deadline:g} s"))


def slow_server_text(tracks: list[Draft], unanswered: int, deadline: float) -> str:
    """What a command waits for while the server is slow to answer about the tracks it must ask about."""
    hosts = sorted({urlsplit(t.spec.cloud_url or "").netloc.rpartition("@")[2] for t in tracks})
    where = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more" if len(hosts) > 3 else "")
    return (f"waiting for {where} to answer about {unanswered} track(s) whose size or format the manifest does "
            f"not give (at most {deadline:g} s in all; tracks still unanswered then are asked again later)")


def _ask(track: Draft, http: HttpClient, index: SourceIndex) -> RemoteInfo | FetchError:
    url = track.spec.cloud_url
    assert url is not None
    try:
        info = http.probe(url)
        magic_ext = None
        if _static_ext(track) is None and sniff.ext_from_content_type(info.content_type) is None:
            known = index.remote(url)
            if known is not None and known.magic_ext and known.etag == info.etag and known.size == info.size:
                magic_ext = known.magic_ext  # same version as last time: no need to look at its bytes again
            else:
                magic_ext = sniff.ext_from_magic(http.first_bytes(url, sniff.MAGIC_BYTES_NEEDED))
        info = RemoteInfo(info.size, info.etag, info.content_type, magic_ext, info.last_modified)
    except FetchError as exc:
        return exc
    index.remember_remote(url, info)  # what the server said, for a mount or check-export that cannot ask
    return info


def _apply(track: Draft, answer: RemoteInfo | FetchError) -> None:
    if isinstance(answer, FetchError):
        track.probe_failure = answer
        log.info("cannot ask the server about %s: %s", track.spec.label, answer.reason)
        return
    track.remote = answer
    track.answered = True
    track.validated = True  # asked live; it counts only if the source identity carries the ETag (_finish)


def _finish(track: Draft) -> None:
    spec = track.spec
    remote = track.remote
    if track.kind is Kind.CLOUD:
        if track.size is None and remote is not None:
            track.size = remote.size
        etag = remote.etag if remote is not None and spec.size is None else None
        track.source = Source(spec.cloud_url or "", size=track.size, etag=etag, label=spec)  # named in track()
        # A cached blob found under this identity is the server's current version only when the identity
        # names the version the server just gave; otherwise its first open revalidates it.
        track.validated = track.validated and etag is not None
    head = _local_head(track) if track.kind is Kind.LOCAL else None
    track.ext = sniff.choose_ext(
        manifest_content_type=spec.content_type,
        file_path=str(spec.file_path) if spec.file_path else None,
        stream_path=spec.stream_path,
        server_content_type=remote.content_type if remote else None,
        head=head,
    ) or (remote.magic_ext if remote else None)


def _local_head(track: Draft) -> bytes | None:
    if track.local_path is None or _static_ext(track) is not None:
        return None
    try:
        with track.local_path.open("rb") as handle:
            return handle.read(sniff.MAGIC_BYTES_NEEDED)
    except OSError:
        return None
