"""The look-ahead: what a cached track's first open would ask the server, asked just before it. ``QUESTIONS``
workers keep the cached tracks up to ``LOOK_AHEAD`` past the furthest one being read revalidated and their
blobs checked, taken in session order. Each request costs a round trip, so one after another they held a warm
export of 200 tracks at 80 ms to 16 s; ``QUESTIONS`` at once, from the mount's start, each open finds its answer
in, or waits for its own request only (it holds the track's question lock). Trusted for ``CONFIRMED_FOR``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from mixvfs.cache.defaults import QUESTIONS
from mixvfs.cache.errors import CacheError, FetchError
from mixvfs.cache.fetcher import Fetcher, Foreground
from mixvfs.cache.http import Freshness
from mixvfs.vfs.fs.mount_state import MountState
from mixvfs.vfs.session.tracks import Kind, Track

log = logging.getLogger(__name__)

# How many tracks (in session order) past the furthest one a reader opened the look-ahead prepares: enough to keep
# QUESTIONS revalidations in flight ahead of a fast exporter, few enough that what it confirmed is read within
# CONFIRMED_FOR (vfs/fs/mount_state.py; else the open asks again).
LOOK_AHEAD = 4 * QUESTIONS


class Walk:
    """The tracks (each with its session position) handed out in order to several workers, each track once."""

    def __init__(self, items: list[tuple[int, Track]]) -> None:
        self._items = iter(items)
        self._lock = threading.Lock()

    def take(self) -> tuple[int, Track] | None:
        with self._lock:
            return next(self._items, None)


class LookAhead:
    def __init__(self, fetcher: Fetcher, state: MountState, foreground: Foreground,
                 apply: Callable[[Track, Freshness], None], stop: threading.Event) -> None:
        self.fetcher = fetcher
        self.state = state
        self.foreground = foreground
        self.apply = apply  # what an open does with the server's answer (the report, a new mtime)
        self.stop = stop  # the mount's background work ends
        self._walk: Walk | None = None  # the pass over the tracks (a reload starts a new one)
        self._reader_at = -1  # the furthest session position a reader opened (the look-ahead keeps ahead of it)
        self._reader_moved = threading.Condition()
        self.workers = 0  # how many workers the latest pass started

    def start(self, tracks: list[Track]) -> None:
        """A pass over ``tracks``, unless one runs (a reload calls :meth:`restart`)."""
        if self._walk is None and not self.stop.is_set():
            items = self._stored(tracks)
            walk = self._walk = Walk(items)
            self.workers = min(QUESTIONS, len(items))
            for number in range(self.workers):
                threading.Thread(target=self._work, args=(walk,), name=f"look-ahead-{number}", daemon=True).start()

    def _stored(self, tracks: list[Track]) -> list[tuple[int, Track]]:
        """The cloud tracks the index maps now, with their session positions: one query, instead of a lookup per
        track (two database reads each) competing with the downloads of a cold mount for the interpreter. A
        track stored later (by another process) is revalidated by its own open, as without the look-ahead."""
        try:
            indexed = self.fetcher.indexed()
        except CacheError:
            log.warning("the look-ahead could not read the cache index: each open revalidates its own track")
            return []
        return [(position, track) for position, track in enumerate(tracks)
                if track.kind is Kind.CLOUD and track.source is not None and track.source.url in indexed]

    def restart(self, tracks: list[Track]) -> None:
        """The listing changed: the running pass walks the old list and ends; a new one covers the new tracks."""
        self._walk = None
        self.start(tracks)

    def reached(self, position: int) -> None:
        """A reader opened the track at ``position`` in session order."""
        if position > self._reader_at:
            with self._reader_moved:
                self._reader_at = max(self._reader_at, position)
                self._reader_moved.notify_all()

    def wake(self) -> None:
        """The stop is set: the workers see it now, not at their next timeout."""
        with self._reader_moved:
            self._reader_moved.notify_all()

    def _work(self, walk: Walk) -> None:
        while not self.stop.is_set() and walk is self._walk:
            taken = walk.take()
            if taken is None:
                return
            position, track = taken
            if track.kind is not Kind.CLOUD or track.source is None:
                continue
            with self._reader_moved:
                while position > self._reader_at + LOOK_AHEAD and not self.stop.is_set():
                    self._reader_moved.wait(timeout=1.0)
            if self.stop.is_set() or walk is not self._walk:
                return
            self.foreground.wait_quiet()  # a listing goes first
            try:
                self._confirm(track)
            except Exception:  # the look-ahead only saves time: whatever it meets, the open does it all again
                log.exception("look-ahead of %s failed", track.name)

    def _confirm(self, track: Track) -> None:
        assert track.source is not None
        if self.fetcher.cached(track.source) is None:
            return  # nothing stored: a download will be the server's answer
        with self.state.question_lock(track):
            if not self.state.fresh(track):
                try:
                    freshness = self.fetcher.revalidate(track.source)
                except FetchError:
                    return  # the open asks again, and notes it if the server cannot answer then either
                self.apply(track, freshness)
                self.state.confirmed(track)
        self.fetcher.check_stored(track.source)
