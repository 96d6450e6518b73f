"""Prefetch: the session's cloud tracks queued for download in session order, ``jobs`` and a few more at a time. One
:class:`Prefetcher` serves the mount (from the moment the folder is live) and ``cachectl warm``."""

from __future__ import annotations

import threading

from mixvfs.cache.download import Download, Event
from mixvfs.cache.errors import CacheError, FetchError
from mixvfs.cache.fetcher import Fetcher
from mixvfs.vfs.fs.recorder import Recorder
from mixvfs.vfs.session.tracks import Track

# The pass is woken when this many of its downloads have ended, not at each: every wake-up is a futex wake made by
# the ending download's thread with the GIL held (a Semaphore's release: 14 % of the daemon's GIL samples on a
# cold export of 1 MiB tracks, BENCHMARKS.md, item 4, third round). It keeps as many more downloads queued than
# the fetcher's ``jobs``, so that the fetcher never waits for it.
REFILL = 4


class Prefetcher:
    def __init__(self, fetcher: Fetcher, recorder: Recorder) -> None:
        self.fetcher = fetcher
        self.recorder = recorder
        self.slots = fetcher.jobs + REFILL  # prefetches in flight at most (queued or running)
        self._free = self.slots
        self._room = threading.Condition()
        self._lock = threading.Lock()
        self._in_flight: set[Download] = set()
        self._stop = threading.Event()
        self._pass: threading.Thread | None = None
        self._unsubscribe = fetcher.subscribe(self._on_download_event)

    @property
    def running(self) -> bool:
        return self._pass is not None and not self._stop.is_set()

    def start(self, tracks: list[Track]) -> None:
        """A pass over ``tracks``, unless one runs; after a live reload, :meth:`restart` with the new list."""
        if self._pass is not None or self._stop.is_set():
            return
        self._pass = threading.Thread(target=self._prefetch_all, args=(list(tracks),), name="prefetch",
                                      daemon=True)
        self._pass.start()

    def restart(self, tracks: list[Track]) -> None:
        """The listing changed: the running pass walks the old list; a new pass covers the new tracks (the
        old one goes on queueing too; the fetcher shares a download both ask for)."""
        if self.running:
            self._pass = None
            self.start(tracks)

    def stop(self) -> None:
        self._stop.set()
        self._unsubscribe()

    def _prefetch_all(self, tracks: list[Track]) -> None:
        """Queue cloud tracks in session order, keeping only ``slots`` prefetches in flight at a time so
        a 10 000-track session does not open 10 000 staging files. A slot is given back when its download
        ends (see ``_on_download_event``)."""
        for order, track in enumerate(tracks):
            if track.source is None or self.recorder.failure(track) is not None:
                continue
            if not self._take_slot():
                return
            download = self._queue(track, order)
            with self._lock:
                # Nothing to fetch, or already over (its end event came before we could hold it).
                if download is None or download.ended.is_set():
                    self._give_back()
                else:
                    self._in_flight.add(download)

    def _take_slot(self) -> bool:
        """A slot for the next prefetch; when none is free, wait until ``REFILL`` are. False: stopped."""
        with self._room:
            if self._free == 0:
                while self._free < min(REFILL, self.slots) and not self._stop.is_set():
                    self._room.wait(timeout=0.5)  # the stop is not notified: looked at twice a second
            if self._stop.is_set():
                return False
            self._free -= 1
            return True

    def _give_back(self) -> None:
        with self._room:
            self._free += 1
            if self._free >= REFILL:
                self._room.notify()

    def _queue(self, track: Track, order: int) -> Download | None:
        """The track's download, queued as a prefetch; None when there is nothing to wait for."""
        assert track.source is not None
        try:
            download = self.fetcher.prefetch(track.source, order)
            if download is None:
                self.recorder.stored_meanwhile(track)
            return download
        except FetchError as exc:
            self.recorder.record_failure(track, exc, seen_by_reader=False)
        except CacheError as exc:
            # The cache's database refusing even to say whether it holds the track: failed like a full cache
            # disk (NoSpace), with the cause in the report. Let out, it would end the pass with a traceback, and
            # `cachectl warm`, which waits for every track to be final, would wait for ever.
            self.recorder.record_failure(track, FetchError(str(exc)), seen_by_reader=False)
        return None

    def _on_download_event(self, download: Download, event: Event) -> None:
        if event in (Event.DONE, Event.FAILED):
            with self._lock:
                if download in self._in_flight:
                    self._in_flight.remove(download)
                    self._give_back()
