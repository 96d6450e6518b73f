"""What the report says of each track, kept current: the downloads' events, every failure (on disk before the
reader sees EIO), and the failures each track is remembered by for ``failed_for``. Shared by the mount
(:class:`mixvfs.vfs.fs.sessionfs.SessionFS`) and ``cachectl warm``, which report the same downloads alike."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mixvfs.cache.defaults import FAILED_FOR
from mixvfs.cache.download import Download, Event
from mixvfs.cache.errors import CacheError, Cancelled, FetchError, NotKept
from mixvfs.cache.fetcher import Fetcher
from mixvfs.vfs.fs.report import Entry, Report, Status, TrackRecord, as_record, listed_record
from mixvfs.vfs.session.tracks import Kind, NameBatch, Track

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Failure:
    error: FetchError
    at: float


class Recorder:
    def __init__(self, report: Report, fetcher: Fetcher, *, failed_for: float = FAILED_FOR,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.report = report
        self.fetcher = fetcher
        self.failed_for = failed_for
        self.now = now  # durations only: a wall-clock step must not move them
        self._failures: dict[str, Failure] = {}
        self._lock = threading.Lock()
        self._names = NameBatch(fetcher.index, report.session)  # the names of tracks downloaded, in batches

    def close(self) -> None:
        """Write the names still queued (before the index closes)."""
        self._names.close()

    # -- the records a listing starts from ----------------------------------------------------------------

    def initial_records(self, tracks: list[Track]) -> list[Entry]:
        """What the report starts from: a record for each track the cache holds, the track itself for the
        others (their record is the one the listing implies: ``report.listed_record``)."""
        indexed = self.fetcher.indexed()  # one query: only the tracks it names are looked up one by one
        return [self.initial_entry(t, indexed) for t in tracks]

    def initial_entry(self, track: Track, indexed: set[str] | None = None) -> Entry:
        if track.kind is Kind.CLOUD:
            assert track.source is not None
            unknown = indexed is not None and track.source.url not in indexed
            entry = None if unknown else self.fetcher.cached(track.source)
            if entry is not None:
                return TrackRecord(track.id, track.name, "cloud", Status.CACHED, bytes=entry.size,
                                   digest=entry.digest)
        return track

    def initial_record(self, track: Track, indexed: set[str] | None = None) -> TrackRecord:
        entry = self.initial_entry(track, indexed)
        return entry if isinstance(entry, TrackRecord) else listed_record(track)

    def listed_entry(self, track: Track) -> Entry:
        """:meth:`initial_entry` for a track met after the mount's start (a live reload's, an xattr of one it
        replaced): pending when the cache cannot say whether it holds the track (its database refusing), since
        a listing or ``getfattr`` must not fail for that; the track's open meets the cache and reports it."""
        try:
            return self.initial_entry(track)
        except CacheError as exc:
            log.warning("%s: listed as pending, the cache cannot say whether it holds it: %s", track.name, exc)
            return track

    def listed_record(self, track: Track) -> TrackRecord:
        return as_record(self.listed_entry(track))

    def record_of(self, track: Track) -> TrackRecord:
        """The track's record; a track a live reload just replaced answers from its initial record."""
        return self.report.record(track) if self.report.has(track) else self.listed_record(track)

    # -- failures -----------------------------------------------------------------------------------------

    def failure(self, track: Track) -> Failure | None:
        """The failure the track is remembered by (even past ``failed_for``: see :meth:`failed_now`)."""
        return self._failures.get(track.id)

    def failed_now(self, track: Track) -> FetchError | None:
        """The failure a track is remembered by, while ``failed_for`` runs."""
        failure = self._failures.get(track.id)
        if failure is None or self.now() - failure.at >= self.failed_for:
            return None
        return failure.error

    def forget_failure(self, track: Track) -> bool:
        """The track is had after all (a download ended, a local file is back): whether it had failed."""
        with self._lock:
            return self._failures.pop(track.id, None) is not None

    def local_again(self, track: Track, size: int) -> None:
        """A local file that failed is served again."""
        if self.forget_failure(track):
            self.report.update(track, status=Status.LOCAL, error=None, bytes=size)

    def record_failure(self, track: Track, error: FetchError, *, track_failed: bool = True,
                       seen_by_reader: bool = True) -> None:
        """Into the report (on disk before the reader sees EIO) and the log. ``track_failed``: the track
        itself fails for ``failed_for`` (else only this reader failed, e.g. it gave up waiting).
        ``seen_by_reader``: a program got this error (stat, open, read) — kept as ``reader_error`` even when
        the track is had later, since that program may have skipped it (a prefetch's failure is not)."""
        with self._lock:
            previous = self._failures.get(track.id)
            if track_failed:
                self._failures[track.id] = Failure(error, self.now())
        first = previous is None or previous.error.reason != error.reason
        if not self.report.has(track):
            log.error("%s (removed from the session): %s", track.name, error.reason)
            return
        record = self.report.record(track)
        if track_failed:
            seen = {"reader_error": error.reason} if seen_by_reader else {}
            self.report.update(track, urgent=True, status=Status.FAILED, error=error.reason,
                               attempts=max(record.attempts, 1), **seen)
        else:
            self.report.update(track, urgent=True, error=error.reason, reader_error=error.reason)
        if first:
            log.error("%s: %s", track.name, error.reason)

    # -- downloads ----------------------------------------------------------------------------------------

    def download_event(self, track: Track, download: Download, event: Event) -> None:
        """One download event, for one of the tracks (several may share a source) it is the bytes of."""
        if event is Event.ATTEMPT:
            self.report.update(track, status=Status.FETCHING, attempts=download.attempts)
        elif event is Event.DONE:
            self.forget_failure(track)
            # The fetcher forgot this download before telling its end: busy means another one still runs.
            last = not self.fetcher.busy()
            # The last download of a burst (an export's last track, a single `cp`): on disk now, not with the next
            # batch, so a `mixvfs report` right after the copy does not show it still fetching — when the report
            # is small enough to write at once; a big one keeps to its batches.
            self.report.update(track, status=Status.CACHED, bytes=download.total, digest=download.digest,
                               error=None, attempts=download.attempts, via=download.via,
                               urgent=last and self.report.writes_quickly())
            self._names.add(track, soon=last)
        elif event is Event.FAILED and download.error is not None:
            if not self.fetcher.busy():
                self._names.flush()
            if isinstance(download.error, Cancelled):
                self.report.update(track, status=Status.PENDING, error=None)
            elif isinstance(download.error, NotKept) and download.had_readers():
                self.read_whole_not_kept(track, download, download.error)
            else:
                self.record_failure(track, download.error, seen_by_reader=False)

    def read_whole_not_kept(self, track: Track, download: Download, error: NotKept) -> None:
        """The cache refused a verified download whose readers read it whole from the staging file: the track
        was had, so it is not failed (no EIO for ``failed_for``, no failure in the report); it stays pending,
        to be downloaded again at its next open, with the cause as a note."""
        self.forget_failure(track)
        if not self.report.has(track):
            return
        note = f"read whole, but not cached: {error.reason}"
        if self.report.record(track).note != note:
            log.warning("%s: %s", track.name, note)
        self.report.update(track, urgent=True, status=Status.PENDING, error=None, bytes=download.total,
                           attempts=download.attempts, note=note)

    def stored_meanwhile(self, track: Track) -> None:
        """Nothing to prefetch: the track is in the cache — maybe put there by another process sharing it
        (a second mount, `cachectl warm`) since the report was made. Say so, or it stays "pending" forever."""
        assert track.source is not None
        entry = self.fetcher.cached(track.source)
        if entry is not None and self.report.has(track) and self.report.record(track).status is not Status.CACHED:
            self.report.update(track, status=Status.CACHED, bytes=entry.size, digest=entry.digest, error=None)
