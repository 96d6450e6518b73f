"""A cache whose database refuses, met by each path of the mount that reaches it: a FUSE request's (stat, open,
read, xattrs, the root's status) and the mount's own work (prefetch, a live reload). Each gives an answer or an
EIO with the cause in the report — never an exception let out of a thread, never an EIO nothing explains.

Two ways to make it refuse, both real: the cache folder replaced by a file (every access fails, reads too: the
folder cannot be made again), and the blob database's files made immutable (writes fail, reads go on)."""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mixvfs.cache.folder import REFUSED_WRITE
from mixvfs.cache.store import USE_RECORDED_FOR, BlobStore
from mixvfs.vfs.commands.status import format_status
from mixvfs.vfs.fs.sessionfs import SessionFS
from mixvfs.vfs.session.manifest import load_manifest
from mixvfs.vfs.session.tracks import build_tracks
from tests.conftest import database_refusing_writes, wait_until, write_session
from tests.unit.conftest import GiB
from tests.unit.test_core import read_all, settle
from tests.unit.test_store import put, stage
from tools.make_audio import write_sized


def entry(track_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": track_id, "artist": "A", "title": track_id, "cloud_stream_path": f"/{track_id}.wav",
            "content_type": "audio/wav", **extra}


def cache_folder_made_a_file(folder: Path) -> None:
    """The cache folder removed and a file put in its place: the next access cannot make it again."""
    shutil.rmtree(folder)
    folder.write_text("a file where the cache folder was\n")


def on_disk(fs: SessionFS, track_id: str) -> dict[str, Any]:
    """The track's line in the report file, as `mixvfs report` reads it."""
    tracks = json.loads(fs.report.path.read_text())["tracks"]
    return dict(next(t for t in tracks if t["id"] == track_id))


@pytest.fixture
def thread_crashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BaseException]]:
    """The exceptions that ended a thread (what a daemon's log shows as "Exception in thread ...")."""
    crashes: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    yield crashes


def commit_met(store: BlobStore, path: Path, digest: str) -> str:
    """What one commit of a 2000-byte staged blob met: "taken", or the exception it raised."""
    try:
        store.commit(path, digest, 2000)
    except Exception as exc:  # what each commit met is the test's finding
        return f"{type(exc).__name__}: {exc}"
    return "taken"


def test_a_cached_track_opened_while_the_database_refuses_writes_is_served_and_the_report_says_its_use_was_not_kept(
        make_fs, server_root, devserver, tmp_path, caplog):
    """Opening a cached track records its use (LRU, the TTL), a write. A database refusing it must not keep whole,
    verified bytes from a reader — from a thread new to the database too (libfuse starts and ends threads as
    requests come: its first connection is opened while the database refuses). The track is served; the report's
    note and one log line say the use was not recorded; recorded again once the database takes writes."""
    write_sized(server_root / "t.wav", 200_000, seed=1)
    fs = make_fs([entry("t", size=200_000)], devserver.url)
    expected = (server_root / "t.wav").read_bytes()
    assert read_all(fs, "A - t.wav") == expected
    settle(fs)
    seen: dict[str, Any] = {}

    def first_open() -> None:
        seen["bytes"] = read_all(fs, "A - t.wav")

    # A minute on: the open records a use again (within a minute of the download's commit it writes nothing).
    store = fs.fetcher.store
    store.clock = lambda: time.monotonic() + USE_RECORDED_FOR
    with database_refusing_writes(tmp_path / "cache" / "blobs"):
        for _ in range(2):
            thread = threading.Thread(target=first_open)
            thread.start()
            thread.join()
            assert seen.pop("bytes") == expected
        assert fs.live_status()["cache"] == f"cached tracks are served, but their use is not recorded: {REFUSED_WRITE}"
        assert f"cache: cached tracks are served, but their use is not recorded: {REFUSED_WRITE}" in \
            format_status(fs.live_status()).splitlines()
    record = fs.report.record("t")
    assert record.status == "cached" and record.reader_error is None, record
    assert record.note == f"served from cache; its use was not recorded: {REFUSED_WRITE}", record
    refusals = [r for r in caplog.records if "their use cannot be recorded" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
    assert read_all(fs, "A - t.wav") == expected  # writes taken again
    assert fs.fetcher.store.use_refused is None and "cache" not in fs.live_status()


def test_a_prefetch_the_cache_cannot_answer_fails_each_track_with_the_cause_and_the_pass_goes_on(
        make_fs, server_root, devserver, tmp_path, thread_crashes):
    """Prefetch asks the cache whether it holds each track before it downloads it. A cache that cannot say
    fails the track as a full cache disk does, cause in the report, and the pass goes on to the next one:
    `cachectl warm` waits for every track to be final, and would wait for ever on one left pending."""
    for name in ("one", "two"):
        write_sized(server_root / f"{name}.wav", 100_000, seed=2)
    fs = make_fs([entry("one", size=100_000), entry("two", size=100_000)], devserver.url)
    cache_folder_made_a_file(tmp_path / "cache")
    fs.prefetcher.start(fs.tracks)
    assert wait_until(lambda: all(on_disk(fs, t)["status"] == "failed" for t in ("one", "two")), timeout=30), \
        [on_disk(fs, t) for t in ("one", "two")]
    for track_id in ("one", "two"):
        record = on_disk(fs, track_id)
        assert str(tmp_path / "cache") in record["error"] and record["reader_error"] is None, record
    assert thread_crashes == []
    assert devserver.requests("GET", "/one.wav") == []  # nothing was downloaded that could not be stored


def reloaded(fs: SessionFS, tmp_path: Path, url: str, tracks: list[dict[str, Any]]) -> None:
    """The manifest rewritten with ``tracks`` and reloaded, as the manifest watcher does."""
    session = load_manifest(write_session(tmp_path / "s.json", tracks, server=url))
    fs.reload(build_tracks(session, http=fs.fetcher.http, index=fs.fetcher.index))


def test_a_live_reload_while_the_cache_cannot_answer_lists_the_new_tracks_as_pending(
        make_fs, devserver, tmp_path):
    """A track a live reload adds starts from what the cache holds of it; a cache that cannot say must not
    keep the new listing out (the watcher would keep the old one): the track is pending, its open reports."""
    fs = make_fs([entry("old", size=1000)], devserver.url)
    cache_folder_made_a_file(tmp_path / "cache")
    reloaded(fs, tmp_path, devserver.url, [entry("old", size=1000), entry("new", size=2000)])
    assert fs.lookup("A - new.wav") is not None
    assert fs.report.record("new").status == "pending"


def test_the_xattrs_of_a_track_a_reload_replaced_answer_while_the_cache_cannot(make_fs, devserver, tmp_path):
    """A program holding a track a live reload just replaced asks its ``user.mixvfs.*`` attributes: they answer
    from memory, never EIO — even when the cache cannot say whether it holds the track."""
    fs = make_fs([entry("old", size=1000)], devserver.url)
    old = fs.lookup("A - old.wav")
    assert old is not None
    reloaded(fs, tmp_path, devserver.url, [entry("new", size=2000)])
    cache_folder_made_a_file(tmp_path / "cache")
    assert fs.track_xattrs(old)["status"] == "pending"


def test_the_status_of_a_mount_whose_server_and_cache_both_fail_says_what_the_server_did(make_fs, tmp_path):
    """``mixvfs status`` (the root's ``user.mixvfs.status``) counts the cached tracks when the server cannot be
    reached. A cache that cannot say must not turn the whole status into an EIO about no track."""
    nothing_listens = "http://127.0.0.1:9"  # the discard port: refused at once
    fs = make_fs([entry("t")], nothing_listens)  # no size: the listing asks the server, and cannot reach it
    fs.server.hear_listing(fs.tracks)  # as the daemon does once the tracks are listed
    cache_folder_made_a_file(tmp_path / "cache")
    server = str(fs.live_status()["server"])
    assert "cannot say which of the 1 cloud tracks it holds" in server and str(tmp_path / "cache") in server, server


def test_commits_from_many_threads_into_a_database_refusing_writes_each_say_it_refused(tmp_path):
    """SQLite may end a refused write's transaction itself; diskcache's own mark of the transaction, one for
    all threads, was then taken by another thread's, and the first one's rollback failed an assertion
    ("internal error: AssertionError" in the report). Every commit gets the one sentence instead."""
    store = BlobStore(tmp_path / "cache", max_size=GiB, max_age=3600)
    put(store, b"first blob" * 100)  # the database's files exist
    staged = [stage(store, n.to_bytes(4, "big") * 500) for n in range(240)]
    met: list[str] = []
    start = threading.Barrier(12)

    def commit(share: list[tuple[Path, str]]) -> None:
        start.wait()
        for path, digest in share:
            met.append(commit_met(store, path, digest))

    try:
        with database_refusing_writes(tmp_path / "cache" / "blobs"):
            threads = [threading.Thread(target=commit, args=(staged[n::12],)) for n in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        store.close()
    assert collections.Counter(met) == {f"CacheError: {REFUSED_WRITE}": len(staged)}


def test_a_thread_whose_connection_met_a_refusal_writes_again_once_the_database_takes_writes(tmp_path, caplog):
    """SQLite opens a database it may not write read-only, for the connection's life; the connections are kept
    per thread, so a thread that first reached the database while it was immutable kept refusing after
    ``chattr -i``. A connection that met a refusal is dropped and the thread's next access opens a new one; the
    first write taken ends the "use not recorded" state, said once in the log."""
    caplog.set_level(logging.INFO, logger="mixvfs.cache.store")
    store = BlobStore(tmp_path / "cache", max_size=GiB, max_age=3600)
    first = put(store, b"first blob" * 100)  # the database's files exist
    store.clock = lambda: time.monotonic() + USE_RECORDED_FOR  # an open records its use again
    staged = [stage(store, n.to_bytes(4, "big") * 500) for n in range(2)]
    jobs: collections.deque[tuple[Path, str]] = collections.deque()
    ready, done = threading.Semaphore(0), threading.Semaphore(0)
    met: list[str] = []

    def worker() -> None:  # one thread for both commits: its connection is the one opened while refused
        for _ in range(2):
            ready.acquire()
            path, digest = jobs.popleft()
            met.append(commit_met(store, path, digest))
            done.release()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        with database_refusing_writes(tmp_path / "cache" / "blobs"):
            fd = store.open_blob(first)
            assert fd is not None and store.use_refused == REFUSED_WRITE
            os.close(fd)
            jobs.append(staged[0])
            ready.release()
            done.acquire()
        jobs.append(staged[1])
        ready.release()
        done.acquire()
    finally:
        thread.join()
        store.close()
    assert met == [f"CacheError: {REFUSED_WRITE}", "taken"]
    assert store.use_refused is None
    again = [r for r in caplog.records if "records the uses of cached tracks again" in r.getMessage()]
    assert len(again) == 1, [r.getMessage() for r in caplog.records]


def test_a_download_read_whole_that_the_cache_would_not_take_is_not_a_failed_track(
        make_fs, server_root, devserver, tmp_path, caplog):
    """The database refusing the commit of a verified download: its reader still reads every byte (its own
    descriptor of the staging file), so the copy is whole and the track must not be reported failed (nor answer
    EIO for ``failed_for``): pending, with the cause as a note; read again, it is downloaded and cached."""
    write_sized(server_root / "t.wav", 300_000, seed=2)
    write_sized(server_root / "u.wav", 1000, seed=3)
    fs = make_fs([entry("u", size=1000), entry("t", size=300_000)], devserver.url)
    expected = (server_root / "t.wav").read_bytes()
    assert read_all(fs, "A - u.wav") == (server_root / "u.wav").read_bytes()  # the database's files exist
    settle(fs)
    with database_refusing_writes(tmp_path / "cache" / "blobs"):
        assert read_all(fs, "A - t.wav") == expected
        settle(fs)
    record = fs.report.record("t")
    assert record.status == "pending" and record.error is None and record.reader_error is None, record
    assert record.note == f"read whole, but not cached: the cache could not take the download: {REFUSED_WRITE}"
    assert on_disk(fs, "t")["status"] == "pending"
    assert fs.recorder.failed_now(fs.lookup("A - t.wav")) is None
    assert read_all(fs, "A - t.wav") == expected  # not failed for failed_for: downloaded again, and kept
    settle(fs)
    assert fs.report.record("t").status == "cached"
