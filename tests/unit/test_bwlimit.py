"""The bandwidth cap's schedule, with an injected clock: what it lets through over time, across threads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mixvfs.cache.bwlimit import Budget
from mixvfs.cache.policy import RetryPolicy
from mixvfs.cache.remote import Source
from mixvfs.cache.store import BlobStore
from tests.unit.conftest import MakeFetcher
from tools.devserver import DevServer
from tools.make_audio import write_sized

MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(budget: Budget, clock: Clock, chunks: list[int]) -> float:
    """A reader that waits as told after each chunk (and receives instantly): the seconds it took."""
    start = clock.now
    for chunk in chunks:
        clock.now += budget.spend(chunk)
    return clock.now - start


def test_a_long_download_goes_at_the_cap_within_its_burst() -> None:
    clock = Clock()
    budget = Budget(1 * MIB, clock=clock)
    seconds = run(budget, clock, [64 << 10] * 320)  # 20 MiB
    # 20 MiB at 1 MiB/s is 20 s; the burst lets the first 0.25 s worth through at once.
    assert seconds == pytest.approx(20 - budget.burst / budget.rate, abs=1e-6)


def test_the_cap_is_shared_by_all_downloads() -> None:
    clock = Clock()
    budget = Budget(2 * MIB, burst=0, clock=clock)
    waits = [budget.spend(MIB) for _ in range(4)]  # four downloads, 1 MiB each, at the same moment
    assert waits == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_an_idle_link_does_not_bank_more_than_the_burst() -> None:
    clock = Clock()
    budget = Budget(1 * MIB, burst=512 << 10, clock=clock)
    clock.now += 3600  # an hour with nothing to download
    assert budget.spend(512 << 10) == 0.0  # the burst goes through at once
    assert budget.spend(512 << 10) == pytest.approx(0.5)  # the rest at the cap, not an hour's savings


def test_threads_spending_at_once_account_every_byte() -> None:
    clock = Clock()
    budget = Budget(1 * MIB, burst=0, clock=clock)
    barrier = threading.Barrier(8)

    def spender() -> None:
        barrier.wait()
        for _ in range(100):
            budget.spend(1024)

    threads = [threading.Thread(target=spender) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.spend(0) == pytest.approx(8 * 100 * 1024 / MIB)  # the clock stood still: all of it is owed


def test_a_rate_of_zero_is_refused() -> None:
    with pytest.raises(ValueError):
        Budget(0)


def test_every_byte_of_every_download_is_spent_from_the_one_budget(tmp_path: Path, store: BlobStore,
                                                                   make_fetcher: MakeFetcher) -> None:
    """Two downloads through a real server share the fetcher's budget: with its clock stopped, what the budget
    is owed afterwards is exactly both tracks' bytes (a download that skipped the cap would owe nothing)."""
    root = tmp_path / "server"
    root.mkdir()
    sizes = {"a.wav": 3 * MIB + 17, "b.wav": 2 * MIB + 5}
    for name, size in sizes.items():
        write_sized(root / name, size, seed=len(name) + size)
    clock = Clock()
    rate = 4096 * MIB  # the waits it asks for are milliseconds: the test is about the accounting
    budget = Budget(rate, burst=0, clock=clock)
    with DevServer(root) as server:
        fetcher = make_fetcher(store, jobs=2, retry=RetryPolicy(attempts=1), stall_timeout=10, budget=budget)
        acquired = [fetcher.acquire(Source(server.url_for(name), size=size, label=name))
                    for name, size in sizes.items()]
        for (name, size), got in zip(sizes.items(), acquired, strict=True):
            assert got.download is not None
            assert got.download.wait_for(size, 0) == size, name
            fetcher.release(got.download)
        for got in acquired:
            assert got.download is not None
            got.download.ended.wait(10)  # a hang guard: the bytes are all in
        fetcher.close()
    assert budget.spend(0) == pytest.approx(sum(sizes.values()) / rate)
