"""The in-process tests' shared parts: the cache wired as mixvfs.vfs.runtime wires it (a blob store holding its
source index, an HTTP client, a fetcher over both) and a SessionFS over it (``make_fs``), in the test's own
folder, closed at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mixvfs.cache.fetcher import Fetcher
from mixvfs.cache.http import HttpClient
from mixvfs.cache.policy import Limits, RetryPolicy
from mixvfs.cache.store import BlobStore
from mixvfs.vfs.fs.report import Report
from mixvfs.vfs.fs.sessionfs import SessionFS
from mixvfs.vfs.session.manifest import load_manifest
from mixvfs.vfs.session.tracks import build_tracks
from tests.conftest import write_session

MiB, GiB = 1 << 20, 1 << 30


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlobStore]:
    """A blob store in ``tmp_path / "cache"``, with room for anything a test downloads and nothing expiring
    during a test."""
    blobs = BlobStore(tmp_path / "cache", max_size=GiB, max_age=3600)
    yield blobs
    blobs.close()


@pytest.fixture
def http() -> Iterator[HttpClient]:
    client = HttpClient(stall_timeout=2.0)
    yield client
    client.close()


MakeFetcher = Callable[..., Fetcher]


@pytest.fixture
def make_fetcher() -> Iterator[MakeFetcher]:
    """``make_fetcher(store, jobs=1, retry=RetryPolicy(), limits=Limits(), http=None, stall_timeout=None,
    **fetcher_options)``: a fetcher over ``store`` and the store's own index (as the runtime has it: a blob
    removed takes its rows with it), with a client of its own unless ``http`` is given (``stall_timeout``, by
    default the limits').
    Every one is closed at the end, after what the test closed itself."""
    made: list[tuple[Fetcher, HttpClient | None]] = []

    def make(store: BlobStore, *, jobs: int = 1, retry: RetryPolicy | None = None, limits: Limits | None = None,
             http: HttpClient | None = None, stall_timeout: float | None = None, **options: Any) -> Fetcher:
        limits = limits or Limits()
        stall = limits.stall_timeout if stall_timeout is None else stall_timeout
        client = http if http is not None else HttpClient(stall_timeout=stall)
        fetcher = Fetcher(store, store.index, client, jobs=jobs, retry=retry or RetryPolicy(), limits=limits,
                          **options)
        made.append((fetcher, None if http is not None else client))
        return fetcher

    yield make
    for fetcher, own in made:
        fetcher.close()
        if own is not None:
            own.close()


@pytest.fixture
def make_fs(tmp_path: Path, make_fetcher: MakeFetcher) -> Iterator[Any]:
    """A SessionFS over the test's cache folder; each one opens the cache anew, as a process of its own does."""
    opened: list[SessionFS] = []
    stores: list[BlobStore] = []

    def make(tracks: list[dict[str, Any]], url: str, **kw: Any) -> SessionFS:
        session = load_manifest(write_session(tmp_path / "s.json", tracks, server=url))
        stores.append(BlobStore(tmp_path / "cache", max_size=100 * MiB, max_age=86400))
        fetcher = make_fetcher(stores[-1], jobs=2, retry=RetryPolicy(attempts=2, wait_initial=0.01), stall_timeout=5)
        built = build_tracks(session, http=fetcher.http, index=fetcher.index)
        report = Report(tmp_path / "report.json", session=session.name, mountpoint="-", records=[])
        fs = SessionFS(built, fetcher, report, prefetch=False, **kw)
        report.replace_records(fs.initial_records())
        opened.append(fs)
        return fs

    yield make
    for fs in opened:
        fs.close()
        fs.report.close()
    for store in stores:
        store.close()
