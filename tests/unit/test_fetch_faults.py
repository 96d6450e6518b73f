"""Tier 1 (no kernel): cache/http.py, cache/download.py and cache/fetcher.py against the real dev server —
resume offsets, ETag changes, length and content-type checks, status mapping, cancellation, copyable errors."""

from __future__ import annotations

import copy
import inspect
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mixvfs.cache import errors
from mixvfs.cache.download import Download, Event, State, Wiring
from mixvfs.cache.errors import (
    AuthRejected,
    Cancelled,
    FetchError,
    LengthMismatch,
    NotAudio,
    PermanentHttpError,
    RequestWaitExceeded,
    ServerBusy,
)
from mixvfs.cache.fetcher import Fetcher
from mixvfs.cache.http import HttpClient
from mixvfs.cache.policy import Limits, RetryPolicy
from mixvfs.cache.remote import Source
from mixvfs.cache.store import BlobStore
from tests.conftest import wait_until
from tests.unit.conftest import MakeFetcher
from tools.devserver import DevServer
from tools.make_audio import write_sized

SIZE = 300_000
POLICY = RetryPolicy(attempts=3, wait_initial=0.001, wait_max=0.01, wait_jitter=0.0)
LIMITS = Limits(stall_timeout=2.0)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[DevServer, bytes]]:
    root = tmp_path / "srv"
    root.mkdir()
    write_sized(root / "a.wav", SIZE, seed=7)
    with DevServer(root) as server:
        yield server, (root / "a.wav").read_bytes()


def one_job_fetcher(make_fetcher: MakeFetcher, server: DevServer, store: BlobStore,
                    http: HttpClient) -> tuple[Fetcher, Source]:
    """A fetcher with one worker over the test cache, and the source of the served a.wav."""
    fetcher = make_fetcher(store, retry=POLICY, limits=LIMITS, http=http)
    return fetcher, Source(server.url_for("a.wav"), size=SIZE, label="a")


PARK_AT = 100_000
PARKED = {"/a.wav": {"hold": "a", "hold_after": PARK_AT}}  # the response parks mid-body on the hold gate "a"


def wait_parked(server: DevServer, download: Download) -> None:
    """Until a.wav's response is parked and the download holds every byte sent before the gate."""
    server.wait_held("a")
    with download.cond:
        assert download.cond.wait_for(lambda: download.available == PARK_AT, timeout=30)


def stored_bytes(store: BlobStore, d: Download) -> bytes:
    fd = store.open_blob(d.digest or "")
    assert fd is not None
    try:
        return os.pread(fd, SIZE + 1, 0)
    finally:
        os.close(fd)


def download(server: DevServer, store: BlobStore, http: HttpClient, size: int | None = SIZE) -> Download:
    events: list[Event] = []
    d = Download(Source(server.url_for("a.wav"), size=size, label="a"),
                 Wiring(store, store.index, http, lambda _d, event: events.append(event), POLICY, LIMITS))
    d.run()
    return d


def test_get_from_an_offset_starts_there(served, http):
    server, data = served
    with http.get(server.url_for("a.wav"), start=123_456) as body:
        got = b"".join(body.chunks)
    assert (body.start, body.total) == (123_456, SIZE) and got == data[123_456:]
    assert server.requests("GET")[0]["range"] == "bytes=123456-"


def test_error_pages_and_statuses_become_our_errors(served: tuple[DevServer, bytes], http: HttpClient) -> None:
    server, _ = served
    url = server.url_for("a.wav")
    for fault, kind in (({"body": "<html/>", "content_type": "text/html"}, NotAudio),
                        ({"status": 401}, AuthRejected), ({"status": 404}, PermanentHttpError),
                        ({"status": 503}, ServerBusy), ({"status": 429}, ServerBusy)):
        server.set_faults({"/a.wav": {**fault, "head": True}})
        with pytest.raises(kind):
            http.head(url)
        with pytest.raises(kind), http.get(url):
            pass


def test_cut_off_body_resumes_from_the_exact_byte(served, store, http):
    server, data = served
    server.set_faults({"/a.wav": {"drop_after": 100_000, "times": 2}})
    d = download(server, store, http)
    assert d.state is State.DONE and d.attempts == 3
    assert [g["range"] for g in server.requests("GET")] == [None, "bytes=100000-", "bytes=200000-"]
    assert stored_bytes(store, d) == data


def test_new_etag_between_attempts_starts_over_and_is_used_for_the_next_resume(served, store, http, tmp_path):
    server, _ = served
    server.set_faults({"/a.wav": {"drop_after": 100_000, "times": 1, "id": "first"}})
    first = download(server, store, http)
    assert first.state is State.DONE
    served = tmp_path / "srv" / "a.wav"
    old_mtime_ns = served.stat().st_mtime_ns
    write_sized(served, SIZE, seed=8)  # a new version: same size, new bytes
    os.utime(served, ns=(old_mtime_ns + 10**9, old_mtime_ns + 10**9))  # and surely a new mtime, so a new ETag
    new_data = (tmp_path / "srv" / "a.wav").read_bytes()
    d = Download(Source(server.url_for("a.wav"), size=SIZE, etag=first.said.etag, label="a"),
                 Wiring(store, store.index, http, lambda _d, _e: None, POLICY, LIMITS))
    server.set_faults({"/a.wav": {"drop_after": 50_000, "times": 2, "id": "second"}})
    d.run()
    assert d.state is State.DONE and d.said.etag != first.said.etag
    gets = server.requests("GET")[-3:]
    # A fresh start meets the new version (cut at 50 kB); the resumes then name the NEW ETag in If-Range.
    assert [g["range"] for g in gets] == [None, "bytes=50000-", "bytes=100000-"]
    assert gets[1]["if_range"] == d.said.etag
    assert stored_bytes(store, d) == new_data


def test_wrong_length_fails_and_leaves_nothing_behind(served, store, http):
    server, _ = served
    d = download(server, store, http, size=SIZE - 1)
    assert d.state is State.FAILED and isinstance(d.error, LengthMismatch) and d.attempts == 1
    assert store.infos() == [] and list(store.staging.iterdir()) == []


def test_transient_failures_stop_after_the_attempts(served, store, http):
    server, _ = served
    server.set_faults({"/a.wav": {"status": 502}})
    d = download(server, store, http)
    assert d.state is State.FAILED and isinstance(d.error, ServerBusy) and d.attempts == 3
    assert len(server.requests("GET")) == 3


def test_a_cancelled_download_is_revived_or_replaced_never_handed_over_dying(served, store, http, make_fetcher):
    server, data = served
    # The response parks mid-body: the worker sits in a read and cannot see a cancel until bytes come again.
    server.set_faults(PARKED)
    fetcher, source = one_job_fetcher(make_fetcher, server, store, http)
    fds: list[int] = []
    try:
        first = fetcher.acquire(source)
        fds.append(first.fd)
        download = first.download
        assert download is not None
        wait_parked(server, download)
        fetcher.release(download)  # the last reader leaves: cancelled, but not yet torn down
        assert download.cancelled and not download.dying
        second = fetcher.acquire(source)  # a new reader revives it and keeps the bytes already held
        fds.append(second.fd)
        assert second.download is download and not download.cancelled and download.available == 100_000
        fetcher.release(download)  # cancelled again; now let the worker see it
        server.release("a")
        assert download.ended.wait(30)
        assert download.state is State.FAILED and isinstance(download.error, Cancelled) and download.dying
        assert not download.revive() and download.attach_reader() is None  # too late: never handed over again
        third = fetcher.acquire(source)  # replaced by a new download of the whole file
        fds.append(third.fd)
        assert third.download is not None and third.download is not download
        assert third.download.ended.wait(30) and third.download.state is State.DONE
        assert os.pread(third.fd, SIZE + 1, 0) == data
        fetcher.release(third.download)
        assert [g["range"] for g in server.requests("GET")] == [None, None]  # the third started over
    finally:
        for fd in fds:
            os.close(fd)
        fetcher.close()
        fetcher.index.close()


def test_every_fetch_error_survives_copy():
    """Each raising reader gets its own copy of the download's error (copy.copy)."""
    for _, kind in inspect.getmembers(errors, inspect.isclass):
        if issubclass(kind, FetchError):
            args = ("why", 503) if "status" in inspect.signature(kind).parameters else ("why",)
            original = kind(*args)
            clone = copy.copy(original)
            assert type(clone) is kind and clone.reason == "why" and vars(clone) == vars(original)


def test_a_finished_download_still_in_the_map_is_never_handed_out(served, store, http, make_fetcher):
    """The window between a download closing its staging descriptor and leaving the fetcher's map: a new
    reader must get the stored blob, never a dup() of a closed (or, worse, reused) descriptor."""
    server, body = served
    fetcher, source = one_job_fetcher(make_fetcher, server, store, http)
    try:
        first = fetcher.acquire(source)
        assert first.download is not None
        finished = first.download
        assert finished.ended.wait(10) and finished.state is State.DONE
        fetcher.release(finished)
        os.close(first.fd)
        assert wait_until(lambda: finished.fd == -1), finished.fd
        fetcher._active[source.ident] = finished  # as if the announcement had not removed it yet
        again = fetcher.acquire(source)
        assert again.download is None  # served from the store
        assert os.pread(again.fd, SIZE + 1, 0) == body
        os.close(again.fd)
    finally:
        fetcher.close()


def test_stop_fails_a_waiting_reader_at_once_even_with_the_worker_stuck_in_a_read(served, store, http, make_fetcher):
    """The mount ending (libfuse's exit flag) must not wait for bytes: a reader waiting on a download fails
    now, though the worker sits in a read of a parked response and could not see a cancel; and nothing
    revives the download afterwards."""
    server, _ = served
    server.set_faults(PARKED)
    fetcher, source = one_job_fetcher(make_fetcher, server, store, http)
    outcome: list[BaseException] = []
    try:
        acquired = fetcher.acquire(source)
        download = acquired.download
        assert download is not None
        wait_parked(server, download)

        def read_past_the_held_bytes() -> None:
            try:
                download.wait_for(PARK_AT, 150_000)
            except FetchError as exc:
                outcome.append(exc)

        reader = threading.Thread(target=read_past_the_held_bytes)
        reader.start()
        fetcher.stop()
        reader.join(timeout=30)  # a hang guard only
        assert not reader.is_alive() and len(outcome) == 1 and isinstance(outcome[0], Cancelled)
        assert download.wait_for(1000, 0) == 1000  # bytes already held are still served
        with pytest.raises(Cancelled):
            fetcher.acquire(source)  # neither revived nor started anew
        assert not download.revive() and download.attach_reader() is None
        fetcher.release(download)
        os.close(acquired.fd)
    finally:
        server.release("a")
        fetcher.close()
        fetcher.index.close()
    assert download.ended.is_set() and isinstance(download.error, Cancelled)
    assert not list(store.staging.glob("*.part"))


def test_stop_cuts_a_request_waiting_for_headers_and_its_worker_ends_now(served, store, make_fetcher):
    """A server that takes the GET and sends no headers: the worker waits in the request, where a cancel is not
    seen, for the stall timeout (here far longer than the test). The stop shuts its connection down: the worker
    ends now, the download Cancelled (not a network failure, and the origin not marked silent), and nothing is
    sent after the stop."""
    server, _ = served
    server.set_faults({"/a.wav": {"hold": "h"}})  # parked before any header
    http = HttpClient(stall_timeout=600.0)
    fetcher = make_fetcher(store, retry=POLICY, limits=Limits(stall_timeout=600.0), http=http)
    source = Source(server.url_for("a.wav"), size=SIZE, label="a")
    try:
        download = fetcher.prefetch(source, 0)
        assert download is not None
        server.wait_held("h")
        fetcher.stop()
        assert download.ended.wait(timeout=30)  # a hang guard only
        assert isinstance(download.error, Cancelled), download.error
        assert http.silences.silent() == []
        with pytest.raises(Cancelled):
            http.probe(server.url_for("a.wav"))
        assert server.held("h") == 1  # the probe after the stop was never sent
    finally:
        server.release("h")
        fetcher.close()
        fetcher.index.close()
        http.close()


def test_a_wait_past_its_deadline_fails_that_read_alone_and_the_download_goes_on(served, store, http, make_fetcher):
    """macOS's request bound (vfs/fs/deadlines.py): a read whose deadline has passed gets RequestWaitExceeded
    instead of waiting for bytes the parked server does not send; the bytes already held are still served
    whatever the deadline, and the download itself neither fails nor stops: it ends whole once the server
    sends the rest. (A deadline already past: no clock in the test.)"""
    server, data = served
    server.set_faults(PARKED)
    fetcher, source = one_job_fetcher(make_fetcher, server, store, http)
    try:
        acquired = fetcher.acquire(source)
        download = acquired.download
        assert download is not None
        wait_parked(server, download)
        past = time.monotonic()
        with pytest.raises(RequestWaitExceeded, match="under way"):
            download.wait_for(PARK_AT, 150_000, past)
        assert download.wait_for(1000, 0, past) == 1000
        assert download.error is None and download.state is State.FETCHING
        server.release("a")
        assert download.wait_for(SIZE, 0) == SIZE
        assert os.pread(acquired.fd, SIZE, 0) == data
        fetcher.release(download)
        os.close(acquired.fd)
    finally:
        server.release("a")
        fetcher.close()
        fetcher.index.close()


def test_each_retry_is_one_line_naming_the_track_and_the_cause(served, store, http, caplog):
    server, _ = served
    server.set_faults({"/a.wav": {"status": 503, "times": 2}})
    with caplog.at_level(logging.INFO):
        d = download(server, store, http)
    assert d.state is State.DONE and d.attempts == 3
    said = [r.getMessage() for r in caplog.records if r.name.startswith(("stamina", "mixvfs.cache.download"))]
    assert len(said) == 2 and all(line.startswith("a: attempt ") for line in said), said
    assert said[0].startswith("a: attempt 1 failed (the server answered HTTP 503 Service Unavailable); trying again "
                              "in "), said


def test_a_certificate_not_trusted_is_not_tried_again(tmp_path: Path, store: BlobStore, http: HttpClient) -> None:
    """Retries are for what a later attempt may not meet; an untrusted certificate is met by every one (the
    download made 5 attempts, ~8 s of backoff, before the reader's EIO)."""
    from tests.flow.test_preflight import self_signed

    root = tmp_path / "tls-root"
    root.mkdir()
    write_sized(root / "a.wav", SIZE, seed=1)
    with DevServer(root, tls=self_signed(tmp_path)) as server:
        d = download(server, store, http)
        assert d.state is State.FAILED and isinstance(d.error, errors.CertificateNotTrusted), (d.state, d.error)
        assert d.attempts == 1
