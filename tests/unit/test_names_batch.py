"""The names of downloaded tracks reach the cache's index off the downloads' path: a download's end never waits for
the index's write lock to record a name, and every name is there once the recorder is closed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mixvfs.cache.download import Download, Event
from mixvfs.cache.index import SourceEntry
from mixvfs.cache.remote import Seen
from mixvfs.cache.store import BlobStore
from mixvfs.vfs.fs.recorder import Recorder
from mixvfs.vfs.fs.report import Report
from mixvfs.vfs.session.manifest import load_manifest
from mixvfs.vfs.session.tracks import NameBatch, build_tracks
from tests.conftest import write_session
from tests.unit.conftest import MakeFetcher

COUNT = 20


def test_a_download_s_end_does_not_wait_for_the_index_to_write_the_track_s_name(
        tmp_path: Path, store: BlobStore, make_fetcher: MakeFetcher) -> None:
    fetcher = make_fetcher(store)
    specs = [{"id": f"t{i}", "artist": "A", "title": f"T{i}", "cloud_stream_path": f"/t{i}.wav", "size": 10}
             for i in range(COUNT)]
    session = load_manifest(write_session(tmp_path / "s.json", specs, server="http://127.0.0.1:9"))
    tracks = build_tracks(session, http=None, index=None)
    report = Report(tmp_path / "report.json", session=session.name, mountpoint="-", records=[])
    recorder = Recorder(report, fetcher)
    report.replace_records(recorder.initial_records(tracks))
    downloads = []
    for n, track in enumerate(tracks):
        assert track.source is not None
        store.index.record(track.source.ident, SourceEntry(f"d{n}", 10, None))  # committed, as a download does
        download = Download(track.source, fetcher._wiring)
        download.digest, download.total = f"d{n}", 10
        downloads.append(download)
    # Another writer holds the index's write lock (a mount's names, another process's commit) meanwhile: each
    # event returns at once; told on the download's path, the first one waited for the lock (diskcache: 60 s).
    other = sqlite3.connect(tmp_path / "cache" / "index" / "cache.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    for track, download in zip(tracks, downloads, strict=True):
        recorder.download_event(track, download, Event.DONE)
        assert report.record(track.id).status == "cached"
    other.execute("COMMIT")
    other.close()
    recorder.close()
    assert store.index.seen() == {t.source.ident: Seen(t.name, session.name) for t in tracks if t.source}
    recorder.download_event(tracks[0], downloads[0], Event.DONE)  # after close: the report only, no name queued
    report.close()


def test_while_downloads_run_names_wait_for_a_batch_and_are_written_at_once_when_none_does(
        tmp_path: Path, store: BlobStore) -> None:
    specs = [{"id": f"t{i}", "artist": "A", "title": f"T{i}", "cloud_stream_path": f"/t{i}.wav", "size": 10}
             for i in range(COUNT)]
    session = load_manifest(write_session(tmp_path / "s.json", specs, server="http://127.0.0.1:9"))
    tracks = build_tracks(session, http=None, index=None)
    for n, track in enumerate(tracks):
        assert track.source is not None
        store.index.record(track.source.ident, SourceEntry(f"d{n}", 10, None))

    def named() -> set[str]:
        return {t.id for t in tracks if t.source is not None and t.source.ident in store.index.seen()}

    names = NameBatch(store.index, session.name, at_once=8)
    for track in tracks[:3]:
        names.add(track, soon=False)  # other downloads still run: no transaction for three names
    assert names.batches == 0
    assert named() == set()
    for track in tracks[3:8]:
        names.add(track, soon=False)  # the eighth makes a batch
    assert names.written(1, timeout=60)
    assert named() == {t.id for t in tracks[:8]}
    for track in tracks[8:11]:
        names.add(track, soon=False)
    names.flush()  # the downloads ended (the last one failed): what is queued goes now
    assert names.written(2, timeout=60)
    assert named() == {t.id for t in tracks[:11]}
    names.add(tracks[11], soon=True)  # the last download's end: written at once
    assert names.written(3, timeout=60)
    assert named() == {t.id for t in tracks[:12]}
    for track in tracks[12:]:
        names.add(track, soon=False)
    names.close()
    assert named() == {t.id for t in tracks}
    assert names.batches == 4
