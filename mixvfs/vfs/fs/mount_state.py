"""What this mount has learned of its tracks since they were listed. A :class:`Track` is the listing's frozen
value; its size, mtime and the server's confirmations change while mounted, written from FUSE threads, prefetch
events, the look-ahead and the sizes thread. They live here, with the one freshness rule.

Lock discipline: ``_lock`` guards only the making of entries. A track's ``question`` lock (by track id, so it
outlives a live reload) is held while asking the server about that track (its size, a revalidation): a second
asker waits for that one answer. Each fact is written by one assignment; a size is written only while unknown
(every answer is the same version's), an mtime by a local file's ``stat`` or a changed version found under the
question lock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from mixvfs.cache.errors import FetchError
from mixvfs.vfs.session.tracks import Track

# A cached track confirmed by the server without an open asking (its download just ended, or the look-ahead
# revalidated it) counts as revalidated for this long; an open after that asks again (a mount may live for days).
CONFIRMED_FOR = 60.0


@dataclass(slots=True)  # made only for a track something was learned of: 100 000 tracks may be listed
class Learned:
    size: int | None
    mtime: float
    probe_failure: FetchError | None  # what the server said when its size was asked (None: answered)
    validated: bool  # the server confirmed, in this mount, that the track's source is its current version
    confirmed_at: float | None = None  # when (time.monotonic) it confirmed that without an open asking


class MountState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._learned: dict[Track, Learned] = {}  # a Track hashes by identity: a reload's new one starts afresh
        self._questions: dict[str, threading.Lock] = {}
        self._zero_shown: dict[str, float] = {}

    def _of(self, track: Track) -> Learned:
        learned = self._learned.get(track)
        if learned is None:
            with self._lock:
                learned = self._learned.setdefault(track, Learned(track.size, track.mtime, track.probe_failure,
                                                                  track.validated))
        return learned

    def listed(self, tracks: list[Track]) -> None:
        """A live reload listed ``tracks``: what was learned of tracks no longer listed goes."""
        keep = set(tracks)
        with self._lock:
            self._learned = {t: learned for t, learned in self._learned.items() if t in keep}

    # -- size and mtime -----------------------------------------------------------------------------------

    def size(self, track: Track) -> int | None:
        learned = self._learned.get(track)
        return track.size if learned is None else learned.size

    def mtime(self, track: Track) -> float:
        learned = self._learned.get(track)
        return track.mtime if learned is None else learned.mtime

    def probe_failure(self, track: Track) -> FetchError | None:
        learned = self._learned.get(track)
        return track.probe_failure if learned is None else learned.probe_failure

    def learn_size(self, track: Track, size: int | None) -> None:
        """The server said (or a download showed) the size: kept unless one was known already."""
        learned = self._of(track)
        if learned.size is None:
            learned.size = size

    def answered(self, track: Track) -> None:
        """The server answered about the size: a server that gives none is not asked again in the background."""
        self._of(track).probe_failure = None

    def local_file(self, track: Track, size: int, mtime: float) -> None:
        """A local file's size and mtime as ``stat`` sees them now (its owner may re-render it)."""
        learned = self._of(track)
        learned.size, learned.mtime = size, mtime

    def changed(self, track: Track, now: float) -> None:
        """The server holds a new version: a new mtime (wall time), so tools comparing mtimes see it."""
        learned = self._of(track)
        learned.mtime = max(learned.mtime, now)

    # -- freshness: the one rule ------------------------------------------------------------------------

    def fresh(self, track: Track) -> bool:
        """Whether an open may skip asking the server if the stored version is still its version: revalidated
        in this mount, or confirmed without an open asking less than CONFIRMED_FOR ago."""
        learned = self._learned.get(track)
        if learned is None:
            return track.validated
        return learned.validated or (learned.confirmed_at is not None
                                     and time.monotonic() - learned.confirmed_at < CONFIRMED_FOR)

    def revalidated(self, track: Track) -> None:
        """An open asked the server (whatever it answered, it is not asked again in this mount)."""
        self._of(track).validated = True

    def confirmed(self, track: Track) -> None:
        """The server confirmed the version without an open asking: a download ended, the look-ahead asked."""
        self._of(track).confirmed_at = time.monotonic()

    # -- questions and remembered answers ------------------------------------------------------------------

    def question_lock(self, track: Track) -> threading.Lock:
        with self._lock:
            return self._questions.setdefault(track.id, threading.Lock())

    def showed_zero(self, track: Track, until: float) -> None:
        """A size-less track was answered as 0 bytes (a remembered failure): the kernel may hold it until then."""
        self._zero_shown[track.id] = until

    def zero_shown_until(self, track: Track) -> float:
        return self._zero_shown.get(track.id, 0.0)
