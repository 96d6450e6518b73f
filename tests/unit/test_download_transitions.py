"""Download's transitions, each a method under its one lock: readers attached and released, a prefetch's claim,
a request to yield, a worker's begin, a stop. No server: nothing here runs the download."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mixvfs.cache.download import DEMAND, Cancel, Download, State, Wiring
from mixvfs.cache.http import HttpClient
from mixvfs.cache.remote import Source
from mixvfs.cache.store import BlobStore


@pytest.fixture
def wiring(tmp_path: Path) -> Iterator[Wiring]:
    store = BlobStore(tmp_path / "cache", max_size=1 << 30, max_age=3600)
    http = HttpClient()
    yield Wiring(store, store.index, http, lambda _d, _e: None)
    http.close()
    store.close()


def new_download(wiring: Wiring, size: int | None = 1000) -> Download:
    return Download(Source("http://127.0.0.1:9/a.wav", size=size, label="a"), wiring)


def cancel_of(download: Download) -> Cancel:
    return download.cancel  # read afresh after each transition (a narrowed attribute would not be)


def attach(download: Download) -> None:
    fd = download.attach_reader()
    assert fd is not None
    os.close(fd)


def test_the_last_reader_leaving_cancels_and_a_new_one_revives(wiring: Wiring) -> None:
    download = new_download(wiring)
    attach(download)
    attach(download)
    download.release_reader()
    assert download.readers == 1 and cancel_of(download) is Cancel.NONE
    download.release_reader()
    assert download.readers == 0 and cancel_of(download) is Cancel.ASKED
    attach(download)
    assert cancel_of(download) is Cancel.NONE and download.priority == DEMAND


def test_a_download_prefetch_wants_or_already_whole_is_not_cancelled(wiring: Wiring) -> None:
    wanted = new_download(wiring)
    assert wanted.want_prefetch(7)
    assert wanted.priority == 8
    attach(wanted)
    assert wanted.priority == DEMAND  # a reader's claim goes first
    wanted.release_reader()
    assert cancel_of(wanted) is Cancel.NONE
    whole = new_download(wiring, size=None)
    attach(whole)
    whole.total = whole.available = 0  # every byte held
    whole.release_reader()
    assert cancel_of(whole) is Cancel.NONE


def test_a_prefetch_claim_keeps_a_readers_priority(wiring: Wiring) -> None:
    download = new_download(wiring)
    attach(download)
    assert download.want_prefetch(3)
    assert download.priority == DEMAND


def test_only_a_download_nobody_reads_is_asked_to_yield_and_only_once(wiring: Wiring) -> None:
    read = new_download(wiring)
    attach(read)
    assert not read.ask_to_yield()
    idle = new_download(wiring)
    assert idle.want_prefetch(1)
    assert idle.ask_to_yield() and idle.yield_requested
    assert not idle.ask_to_yield()


def test_a_worker_begins_a_pending_download_once(wiring: Wiring) -> None:
    download = new_download(wiring)
    assert download.begin() and download.state is State.FETCHING and download.started > 0
    assert not download.begin()


def test_a_stopped_download_is_never_revived_nor_attached(wiring: Wiring) -> None:
    download = new_download(wiring)
    attach(download)
    download.stop()
    assert cancel_of(download) is Cancel.STOPPED
    assert download.attach_reader() is None and not download.revive() and not download.want_prefetch(1)
    download.release_reader()
    assert cancel_of(download) is Cancel.STOPPED  # a release never weakens a stop
