"""A download that crawls while the link has room is asked again on a new connection (cache/tail.py): the rule with
an injected clock, then the whole path against the real dev server."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from mixvfs.cache.concurrency import Concurrency
from mixvfs.cache.download import Download, State
from mixvfs.cache.policy import RetryPolicy
from mixvfs.cache.remote import Source
from mixvfs.cache.store import BlobStore
from mixvfs.cache.tail import COST_ROUND_TRIPS, MIN_LEFT, MIN_WINDOW, TailWatch
from tests.unit.conftest import MakeFetcher
from tools.devserver import DevServer
from tools.make_audio import write_sized

MB = 1_000_000
LINK = 12.5 * MB  # the best goodput the link gave
RTT = 0.15


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def watch(clock: Clock, *, link: float = 0.0, rtt: float | None = RTT, tail: bool = True) -> TailWatch:
    return TailWatch(best_goodput=lambda: LINK, round_trip=lambda: rtt, link_goodput=lambda _: link,
                     in_tail=lambda: tail, clock=clock)


def feed(w: TailWatch, clock: Clock, *, rate: float, seconds: float, left: int, step: float = 0.05) -> bool:
    """Chunks at ``rate`` bytes/s for ``seconds``; whether the watch said "crawling" at any of them."""
    said = False
    for _ in range(round(seconds / step)):
        clock.now += step
        said = w.crawling(int(rate * step), left) or said
    return said


def test_a_download_crawling_alone_on_an_idle_link_is_asked_again() -> None:
    clock = Clock()
    assert feed(watch(clock, link=0.3 * MB), clock, rate=0.3 * MB, seconds=1.0, left=400_000)


def test_not_before_a_whole_window_of_its_own() -> None:
    """A new request's first round trips are its connection's start, not a crawl."""
    clock = Clock()
    window = max(MIN_WINDOW, 4 * RTT)
    assert not feed(watch(clock), clock, rate=0.3 * MB, seconds=window * 0.9, left=400_000)


def test_a_fair_share_of_a_busy_link_is_no_crawl() -> None:
    clock = Clock()
    # Slow, but the link is full: the others carry it, and a new connection would only take from them.
    assert not feed(watch(clock, link=0.9 * LINK), clock, rate=0.3 * MB, seconds=2.0, left=400_000)
    clock = Clock()
    # Fast enough: a quarter of the link or more.
    assert not feed(watch(clock), clock, rate=0.3 * LINK, seconds=2.0, left=400_000)


def test_before_the_export_s_last_downloads_a_crawl_is_the_link_s() -> None:
    """Mid-export, downloads that crawl together with room on the link are its losses: a new connection meets them
    too, and its handshake is paid for nothing."""
    clock = Clock()
    assert not feed(watch(clock, tail=False), clock, rate=0.3 * MB, seconds=2.0, left=400_000)


def test_little_left_or_soon_done_is_not_worth_a_new_connection() -> None:
    clock = Clock()
    assert not feed(watch(clock), clock, rate=0.3 * MB, seconds=2.0, left=MIN_LEFT - 1)
    clock = Clock()
    rate = 1 * MB  # under a quarter of the link, but what is left takes fewer round trips than a new connection
    assert not feed(watch(clock), clock, rate=rate, seconds=2.0, left=int(rate * RTT * COST_ROUND_TRIPS * 0.9))


def test_nothing_before_the_round_trip_is_known() -> None:
    clock = Clock()
    assert not feed(watch(clock, rtt=None), clock, rate=0.1 * MB, seconds=3.0, left=400_000)


def test_a_crawl_is_judged_on_the_latest_window_not_the_whole_request() -> None:
    """Fast at first (its fair share of a full link), then crawling once alone: caught within a window or so."""
    clock = Clock()
    w = watch(clock)
    assert not feed(w, clock, rate=0.3 * LINK, seconds=3.0, left=2_000_000)  # the link is idle (link=0), it is fast
    window = max(MIN_WINDOW, 4 * RTT)
    assert feed(w, clock, rate=0.2 * MB, seconds=window * 1.5, left=1_000_000)


def crawl(server: DevServer, store: BlobStore, make_fetcher: MakeFetcher, name: str, size: int) -> Download:
    """``name`` downloaded by a fetcher whose mount measured a 12.5 MB/s link with a 150 ms round trip before, on
    the test's clock, which runs ten times as fast as the bytes come: the dev server's faults make it crawl."""
    clock = Clock(time.monotonic())  # where the meter's own clock stood when it was made
    fetcher = make_fetcher(store, jobs=4, retry=RetryPolicy(attempts=1), stall_timeout=30, adaptive=True)
    meter = fetcher.concurrency
    assert isinstance(meter, Concurrency)
    meter.clock = clock  # the link's measurements and the watch's windows run on the test's clock
    meter.answered_after(RTT)
    meter.limit(waiting=True)
    meter.received(int(LINK))
    clock.now += 1.0
    meter.limit(waiting=True)
    assert meter.best_goodput > 0
    download = fetcher.prefetch(Source(server.url_for(name), size=size, label=name), 0)
    assert download is not None
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            clock.now += 0.1
            time.sleep(0.01)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        assert download.ended.wait(60)  # a hang guard
    finally:
        stop.set()
        ticker.join()
    return download


def stored(store: BlobStore, download: Download) -> bytes:
    fd = store.open_blob(download.digest or "")
    assert fd is not None
    try:
        return os.pread(fd, (download.total or 0) + 1, 0)
    finally:
        os.close(fd)


def test_the_fetcher_asks_a_crawling_download_again_from_its_bytes_on_a_new_connection(
        tmp_path: Path, store: BlobStore, make_fetcher: MakeFetcher) -> None:
    """Against the real dev server: its first answer for the track comes at a crawl (its ``rate`` fault, once),
    the link is otherwise idle. The download asks for the rest with Range and If-Range on a connection of its own,
    takes it and drops the crawling one; the bytes are the track's, in one attempt (no retry, no backoff)."""
    root = tmp_path / "server"
    root.mkdir()
    size = 1 << 20
    write_sized(root / "t.wav", size, seed=3)
    with DevServer(root) as server:
        server.set_faults({"/t.wav": {"rate": 20_000, "times": 1}})
        download = crawl(server, store, make_fetcher, "t.wav", size)
        assert download.state is State.DONE, download.error
        assert download.attempts == 1 and download.reconnects == 1
        first, second = server.requests("GET", "/t.wav")
        assert first["range"] is None and int(str(first["bytes"])) < size
        assert str(second["range"]).startswith("bytes=") and int(str(second["range"])[6:-1]) > 0
        assert second["if_range"] is not None
        assert second["client_port"] != first["client_port"]  # a connection of its own
        assert stored(store, download) == (root / "t.wav").read_bytes()


@pytest.mark.parametrize("second", [{"status": 404}, {"status": 503}, {"etag": '"another-version"'},
                                    {"ignore_range": True}, {"content_length": 1000}],
                         ids=["404", "503", "another-version", "whole-body", "length-not-the-range"])
def test_a_new_connection_s_answer_that_is_not_the_rest_is_dropped_and_the_crawl_read_on(
        tmp_path: Path, store: BlobStore, make_fetcher: MakeFetcher, second: dict[str, object]) -> None:
    """The crawling request stays open while the new one is asked: an error, another version or a whole body in
    answer costs nothing: the first connection delivers the track, in the same attempt."""
    root = tmp_path / "server"
    root.mkdir()
    size = 256 << 10
    write_sized(root / "t.wav", size, seed=4)
    with DevServer(root) as server:
        server.set_faults({"/t.wav": {"rate": 128_000, "times": 1, "then": second}})
        download = crawl(server, store, make_fetcher, "t.wav", size)
        assert download.state is State.DONE, download.error
        assert download.attempts == 1 and download.reconnects == 1
        first, asked = server.requests("GET", "/t.wav")
        assert first["range"] is None and first["bytes"] == size  # the first connection delivered it all
        assert asked["range"] is not None
        assert stored(store, download) == (root / "t.wav").read_bytes()
