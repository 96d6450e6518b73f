"""Tier 1 (no kernel): the download rules behind "never a wrong copy", against the real dev server —
waits that end only without progress, a store that fails after taking the file, workers never lost."""

from __future__ import annotations

import threading
from pathlib import Path

import diskcache

from mixvfs.cache.policy import Limits, RetryPolicy
from mixvfs.cache.remote import Source
from mixvfs.cache.store import BlobStore
from tools.devserver import DevServer
from tools.make_audio import write_sized

KiB, MiB = 1 << 10, 1 << 20


def test_a_slow_but_steady_download_is_waited_for_past_every_fixed_deadline(server_root, store, make_fetcher):
    """Old rule: a reader gave up after total_timeout + stall_timeout whatever the progress. Here that is
    2 s, the download takes about 4 s at a steady 256 KiB/s, and the reader asks for the last byte."""
    size = 1 * MiB
    write_sized(server_root / "slow.wav", size, seed=3)
    policy = RetryPolicy(attempts=2, total_timeout=1.0, wait_initial=0.01, wait_max=0.01, wait_jitter=0.0)
    limits = Limits(stall_timeout=1.0)
    with DevServer(server_root, faults={"*": {"rate": 256 * KiB}}) as server:
        fetcher = make_fetcher(store, retry=policy, limits=limits)
        acquired = fetcher.acquire(Source(server.url_for("slow.wav"), size=size, label="slow"))
        assert acquired.download is not None
        end = acquired.download.wait_for(1, size - 1)  # the tail first, like a DAW reading the index
        assert end == size
        assert acquired.download.error is None
        fetcher.release(acquired.download)
        fetcher.close()


class FlakyCommitStore(BlobStore):
    """A store whose database refuses the first commit after the file was already renamed into it — what
    diskcache does when SQLite stays locked past its timeout."""

    failures = 1

    def commit(self, staged: Path, digest: str, size: int) -> None:
        if self.failures:
            self.failures -= 1
            staged.rename(staged.with_suffix(".taken"))  # the rename happened: the staging path is gone
            raise diskcache.Timeout("database is locked")
        super().commit(staged, digest, size)


def test_a_store_failing_after_the_rename_fails_one_track_and_keeps_the_worker(server_root, tmp_path, make_fetcher):
    write_sized(server_root / "a.wav", 200_000, seed=1)
    write_sized(server_root / "b.wav", 300_000, seed=2)
    store = FlakyCommitStore(tmp_path / "cache", max_size=1 << 30, max_age=3600)
    policy = RetryPolicy(attempts=1)
    limits = Limits(stall_timeout=2.0)
    with DevServer(server_root) as server:
        fetcher = make_fetcher(store, retry=policy, limits=limits)
        first = fetcher.acquire(Source(server.url_for("a.wav"), size=200_000, label="a"))
        assert first.download is not None
        assert first.download.ended.wait(10)
        assert first.download.error is not None and "database is locked" in first.download.error.reason
        workers = [t for t in threading.enumerate() if t.name.startswith("fetch-")]
        assert workers and all(t.is_alive() for t in workers)
        # The one worker goes on: the next track downloads (it would wait forever on a dead worker).
        second = fetcher.acquire(Source(server.url_for("b.wav"), size=300_000, label="b"))
        assert second.download is not None
        assert second.download.wait_for(300_000, 0) == 300_000
        second.download.ended.wait(10)
        assert second.download.error is None and second.download.digest is not None
        fetcher.close()
    store.close()


class EvictedAtOnceStore(BlobStore):
    """Another commit (or process) evicts the blob between our rename and our index row."""

    def commit(self, staged: Path, digest: str, size: int) -> None:
        super().commit(staged, digest, size)
        self.remove(digest)


def test_an_index_row_never_outlives_a_blob_evicted_before_it_was_written(server_root, tmp_path, make_fetcher):
    write_sized(server_root / "a.wav", 200_000, seed=1)
    store = EvictedAtOnceStore(tmp_path / "cache", max_size=1 << 30, max_age=3600)
    with DevServer(server_root) as server:
        fetcher = make_fetcher(store, stall_timeout=2.0)
        source = Source(server.url_for("a.wav"), size=200_000, label="a")
        acquired = fetcher.acquire(source)
        assert acquired.download is not None and acquired.download.ended.wait(10)
        assert store.index.lookup(source.ident) is None  # no row pointing at a blob that is gone
        fetcher.close()
    store.close()
