"""The concurrency controller with an injected clock, against a model of a link: each download costs a round trip
before its bytes come, so on a long, fat link more downloads at once fill it, up to where it is full."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

import pytest

from mixvfs.cache.concurrency import (
    HOLD,
    LONG_PATH,
    LONG_PATH_MOST,
    LONG_TRACKS,
    LOWER,
    MIN_INTERVAL,
    NEARBY_ANSWERS,
    QUEUED,
    RECENT_ANSWERS,
    ROUND_TRIPS,
    SCALED_MOST,
    START,
    START_ROUND_TRIP,
    Concurrency,
    start_for,
)
from mixvfs.cache.download import State
from mixvfs.cache.policy import RetryPolicy
from mixvfs.cache.remote import Source
from mixvfs.cache.store import BlobStore
from tests.unit.conftest import MakeFetcher
from tools.devserver import DevServer
from tools.make_audio import write_sized

MB = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def goodput(downloads: int, rate: float, rtt: float, track: float) -> float:
    """A link of ``rate`` bytes/s: each download of a ``track``-byte file waits a round trip, then shares the
    link; the link is full only when enough downloads overlap their round trips."""
    return downloads * track / (rtt + downloads * track / rate)


def run(control: Concurrency, clock: Clock, intervals: int, *, rate: float, rtt: float, track: float,
        waiting: bool = True) -> list[int]:
    """Drive the controller as the fetcher does: the bytes of each interval at the current number."""
    control.answered_after(rtt)
    seen = []
    for _ in range(intervals):
        limit = control.limit(waiting=waiting)
        seen.append(limit)
        step = max(MIN_INTERVAL, ROUND_TRIPS * rtt)
        control.received(int(goodput(limit, rate, rtt, track) * step))
        clock.now += step
    seen.append(control.limit(waiting=waiting))
    return seen


def test_a_long_fat_link_gets_more_downloads_until_it_is_full() -> None:
    clock = Clock()
    control = Concurrency(32, clock=clock)
    seen = run(control, clock, 40, rate=12.5 * MB, rtt=0.15, track=0.5 * MB)
    # The round trip is 7.5 times START's: scaled, to the most a path this long starts with.
    assert seen[0] == start_for(0.15) == LONG_PATH_MOST
    # The model: 4 downloads fill half of the link; it takes about 20 to reach 85 %. From the scaled start the
    # quarter probes climb while a step pays (the model has no timeouts: more flows never cost it anything).
    assert max(seen) > LONG_PATH_MOST
    assert seen[1] == LONG_PATH_MOST + LONG_PATH_MOST // 4  # a quarter more, not twice as many
    # Then it probes around where a quarter more or fewer changes the goodput by about GROWTH.
    # (10 at once here: 73 % of the model's link; 12 would add less than GROWTH.)
    assert statistics.median(goodput(n, 12.5 * MB, 0.15, 0.5 * MB) for n in seen[-20:]) >= 0.7 * 12.5 * MB
    assert max(seen) <= 32


def test_a_link_that_is_full_already_comes_down_to_few() -> None:
    clock = Clock()
    control = Concurrency(32, clock=clock)
    # A thin, near link: 2 downloads already fill it; a step up buys nothing and is taken back, steps down cost
    # nothing and are kept.
    seen = run(control, clock, 60, rate=1 * MB, rtt=0.01, track=8 * MB)
    assert max(seen) <= 2 * START
    assert seen[-1] == LOWER


def test_an_overshoot_of_the_start_is_taken_back() -> None:
    """Big tracks whose size the controller was not told: 4 at once fill the link, and past 8 each more flow costs
    it 3 % (drops and timeouts at the bottleneck's buffer). In the first seconds TCP's own start-up makes the
    goodput grow whatever the number, so a quarter probe up pays at first; the steps down bring it back."""
    clock = Clock()
    control = Concurrency(16, clock=clock)
    start = clock.now

    def link(downloads: int) -> float:
        ramp = min(1.0, (clock.now - start) / 2.0)
        return ramp * goodput(downloads, 12.5 * MB, 0.08, 8 * MB) * (1 - 0.03 * max(0, downloads - 8))

    seen = []
    control.answered_after(0.08)
    for _ in range(120):
        limit = control.limit(waiting=True)
        seen.append(limit)
        control.received(int(link(limit) * MIN_INTERVAL))
        clock.now += MIN_INTERVAL
    assert seen[0] == SCALED_MOST and max(seen) <= 16  # no doubling from a start the round trip scaled
    assert seen[-1] <= 10


def flat_link(control: Concurrency, clock: Clock, intervals: int, rate: float) -> list[int]:
    """A link whose goodput barely depends on the number of downloads: half a percent per download, so a quarter
    more or fewer moves it by less than GROWTH, and every probe down is kept unless something else stops it."""
    seen = []
    for _ in range(intervals):
        limit = control.limit(waiting=True)
        seen.append(limit)
        control.received(int(rate * (1 - 0.005 * max(0, 16 - limit)) * MIN_INTERVAL))
        clock.now += MIN_INTERVAL
    return seen


def test_short_tracks_never_probe_below_what_holds_the_bandwidth_delay_product() -> None:
    """Steps down that each cost less than GROWTH added up: 12 -> 9 -> 6 on a 100 Mbit/s link at 80 ms, where
    fewer flows each lose more to a dropped packet. Never fewer than the measured rate times the round trip
    needs, in START's proportion (here the most the round trip starts with)."""
    clock = Clock()
    control = Concurrency(16, clock=clock)
    control.expect_tracks([512 * 1024] * 200)
    control.answered_after(0.08)
    seen = flat_link(control, clock, 80, 12.5 * MB)
    assert seen[0] == SCALED_MOST and min(seen) == SCALED_MOST == control._floor()
    # Tracks of unknown size (which may be long: fewer long flows fill a link) keep the old floor.
    unknown = Concurrency(16, clock=clock)
    unknown.answered_after(0.08)
    assert min(flat_link(unknown, clock, 80, 12.5 * MB)) == LOWER


def test_on_a_thin_link_the_floor_is_what_its_rate_needs() -> None:
    """1.25 MB/s (10 Mbit/s) at 80 ms holds a tenth of the bytes in flight: 4 downloads, not 12."""
    clock = Clock()
    control = Concurrency(16, clock=clock)
    control.expect_tracks([512 * 1024] * 200)
    control.answered_after(0.08)
    seen = flat_link(control, clock, 120, 1.25 * MB)
    assert min(seen) == math.ceil(START * 0.1 * 0.08 / START_ROUND_TRIP - 1e-9) == 4 < SCALED_MOST


def test_a_server_pushing_back_is_obeyed_below_the_floor() -> None:
    clock = Clock()
    control = Concurrency(16, clock=clock)
    control.expect_tracks([512 * 1024] * 200)
    control.answered_after(0.08)
    before = flat_link(control, clock, 10, 12.5 * MB)[-1]
    control.pushed_back()
    assert control.limit(waiting=True) == before // 2 < SCALED_MOST
    assert min(flat_link(control, clock, 80, 12.5 * MB)) == LOWER


def test_a_long_round_trip_starts_with_more_downloads_until_the_first_measurement() -> None:
    """At 10 ms START fills the link; at 80 ms the same rate holds eight times the bytes in flight. Before
    anything is measured the least answer time sets the start (a new connection's first answer takes two round
    trips, handshake included); once an interval is measured, only the measurements move it."""
    clock = Clock()
    control = Concurrency(64, clock=clock)
    assert control.limit(waiting=True) == START
    control.answered_after(0.1)  # a request at 100 ms: scaled, to the most
    assert control.limit(waiting=True) == SCALED_MOST == 12
    control.answered_after(0.02)  # a request on a kept connection, at 20 ms
    assert control.limit(waiting=True) == 8
    control.answered_after(0.005)  # a near server after all: never below START, and the doubling start is back
    assert control.limit(waiting=True) == START
    assert run(control, clock, 2, rate=50 * MB, rtt=0.005, track=512 * 1024)[:2] == [START, 2 * START]
    assert Concurrency(16, clock=clock).limit() == START
    capped = Concurrency(10, clock=clock)
    capped.answered_after(0.1)
    assert capped.limit() == 10  # --jobs bounds the start too
    capped.received(MB)
    clock.now += max(MIN_INTERVAL, ROUND_TRIPS * 0.15)
    measured = capped.limit(waiting=True)  # the first interval: from now on the measurements decide
    capped.answered_after(0.01)
    assert capped.limit(waiting=True) == measured


def test_jobs_is_the_upper_bound_and_never_fewer_than_the_floor() -> None:
    clock = Clock()
    control = Concurrency(6, clock=clock)
    assert max(run(control, clock, 30, rate=125 * MB, rtt=0.15, track=0.5 * MB)) == 6
    control.pushed_back()
    control.pushed_back()
    control.pushed_back()
    assert control.limit() == LOWER
    assert Concurrency(1, clock=clock).limit(waiting=True) == 1  # --jobs 1 is one


def test_the_server_pushing_back_halves_it_and_it_waits_before_climbing_again() -> None:
    clock = Clock()
    control = Concurrency(32, clock=clock)
    seen = run(control, clock, 12, rate=12.5 * MB, rtt=0.15, track=0.5 * MB)
    before = seen[-1]
    control.pushed_back()
    assert control.limit() == max(LOWER, before // 2)
    after = run(control, clock, HOLD, rate=12.5 * MB, rtt=0.15, track=0.5 * MB)
    assert set(after) == {max(LOWER, before // 2)}


def growing_link(control: Concurrency, clock: Clock, intervals: int, *, rtt: float, answer: float) -> list[int]:
    """Each interval: RECENT_ANSWERS answers after ``answer`` seconds, and a goodput that a quarter more downloads
    raise by a fifth (more than GROWTH): on its own, every probe up would pay."""
    seen = []
    for _ in range(intervals):
        limit = control.limit(waiting=True)
        seen.append(limit)
        for _ in range(RECENT_ANSWERS):
            control.answered_after(answer)
        step = max(MIN_INTERVAL, ROUND_TRIPS * rtt)
        control.received(int(0.5 * MB * limit * step))
        clock.now += step
    return seen


def test_on_a_long_path_no_download_is_added_while_the_answers_wait_in_a_full_queue() -> None:
    """At 150 ms, answers that come half a round trip late waited in the bottleneck's queue: the link is full, so
    the number never goes above the long path's start however the goodput moves (the probes down go on)."""
    clock = Clock()
    control = Concurrency(32, clock=clock)
    control.handshake_took(0.15)
    assert QUEUED < 1.5
    seen = growing_link(control, clock, 20, rtt=0.15, answer=0.15 * 1.5)
    assert seen[0] == max(seen) == LONG_PATH_MOST


def test_on_a_long_path_answers_without_queueing_let_the_probes_climb() -> None:
    """The same path with room (a loss-bound link: no queue, the answers a round trip each): a quarter more pays,
    and the number climbs from the start to --jobs. Nor does the rule hold back a shorter path, queue or not."""
    clock = Clock()
    control = Concurrency(32, clock=clock)
    control.handshake_took(0.15)
    seen = growing_link(control, clock, 20, rtt=0.15, answer=0.15)
    # Up while each step pays, a quarter at a time, with no probe down between (that would cost a hold each).
    assert seen[:5] == [8, 10, 12, 15, 18]
    assert max(seen) == 32
    clock = Clock()
    control = Concurrency(32, clock=clock)
    control.handshake_took(0.08)
    seen = growing_link(control, clock, 20, rtt=0.08, answer=0.08 * 1.5)
    assert seen[0] == SCALED_MOST and max(seen) > SCALED_MOST


def test_a_new_connection_s_first_answers_hold_the_long_path_s_first_probe() -> None:
    """The start's answers each include a handshake (two round trips): the first interval adds nothing while the
    start's flows still grow their windows (a probe down follows, as at --jobs, and the number it costs is held
    for a while); answers on kept connections then let it probe up."""
    clock = Clock()
    control = Concurrency(32, clock=clock)
    control.handshake_took(0.15)
    assert growing_link(control, clock, 1, rtt=0.15, answer=0.3) == [LONG_PATH_MOST]
    assert control.limit(waiting=True) == LONG_PATH_MOST
    seen = growing_link(control, clock, HOLD + 4, rtt=0.15, answer=0.15)
    assert max(seen) > LONG_PATH_MOST


def test_no_climb_while_nothing_waits_for_a_slot() -> None:
    clock = Clock()
    control = Concurrency(32, clock=clock)
    seen = run(control, clock, 20, rate=12.5 * MB, rtt=0.15, track=0.5 * MB, waiting=False)
    assert set(seen) == {start_for(0.15)}


@pytest.mark.parametrize("rtt", [0.02, 0.15])
def test_an_interval_is_several_round_trips(rtt: float) -> None:
    clock = Clock()
    control = Concurrency(32, clock=clock)
    control.answered_after(rtt)
    first = control.limit(waiting=True)
    control.received(10 * MB)
    clock.now += max(MIN_INTERVAL, ROUND_TRIPS * rtt) * 0.99
    assert control.limit(waiting=True) == first  # not yet a whole interval: nothing decided
    clock.now += max(MIN_INTERVAL, ROUND_TRIPS * rtt) * 0.02
    assert control.limit(waiting=True) > first


def test_the_fetcher_runs_only_the_measured_number_of_downloads_and_a_reader_goes_first(
        tmp_path: Path, store: BlobStore, make_fetcher: MakeFetcher) -> None:
    """Against the real dev server, every body parked mid-way: with the controller's number held at START (its
    clock stopped), the other prefetches stay queued although --jobs allows 8; a reader's track still starts
    at once."""
    root = tmp_path / "server"
    root.mkdir()
    names = [f"t{i}.wav" for i in range(8)]
    for i, name in enumerate(names):
        write_sized(root / name, 1 << 20, seed=i)
    with DevServer(root) as server:
        server.set_faults({"*": {"hold": "slots", "hold_after": 100_000}})
        fetcher = make_fetcher(store, jobs=8, retry=RetryPolicy(attempts=1), stall_timeout=30, adaptive=True)
        fetcher.concurrency = Concurrency(8, clock=Clock())  # stopped: no interval ever ends
        sources = [Source(server.url_for(name), size=1 << 20, label=name) for name in names]
        downloads = [fetcher.prefetch(source, order) for order, source in enumerate(sources[:7])]
        assert server.wait_held("slots", START) == START
        # The first START in session order run, the rest wait for a slot.
        assert [d.state if d else None for d in downloads] == [State.FETCHING] * START + [State.PENDING] * (7 - START)
        reader = fetcher.acquire(sources[7])  # not prefetched: a reader's demand
        assert reader.download is not None
        server.wait_held("slots", START + 1)  # it reached the server while START prefetches were running
        # The least urgent running prefetch was asked to pause for it (it may pause, or get its slot back before
        # the reader's download takes one: either way no other prefetch starts past the measured number).
        assert [d.state if d else None for d in downloads[START:]] == [State.PENDING] * (7 - START), \
            [(d.source.label, d.state, d.priority) for d in downloads if d]
        server.release("slots")
        for download in [*downloads, reader.download]:
            assert download is not None
            download.ended.wait(30)  # a hang guard
        assert all(d is not None and d.state is State.DONE for d in [*downloads, reader.download])
        fetcher.release(reader.download)
        os.close(reader.fd)
        fetcher.close()


# -- long tracks ----------------------------------------------------------------------------------------------

MIB = 1 << 20


def test_a_longer_path_starts_with_fewer_downloads_than_the_most_a_shorter_one_gets() -> None:
    """Past LONG_PATH a lost packet's timeout costs more than a flow more gains: the start stops growing with the
    round trip and comes down to LONG_PATH_MOST."""
    assert start_for(0.08) == start_for(LONG_PATH - 0.001) == SCALED_MOST
    assert start_for(LONG_PATH) == start_for(0.15) == start_for(0.3) == LONG_PATH_MOST < SCALED_MOST
    assert start_for(0.15, 8 * MIB) == LONG_TRACKS < LONG_PATH_MOST


def test_long_tracks_start_with_few_downloads_however_long_the_round_trip() -> None:
    assert start_for(0.08, 512 * 1024) == start_for(0.08) == 12  # short tracks: the bandwidth-delay product
    assert start_for(0.08, 8 * MIB) == start_for(0.15, 8 * MIB) == 6
    assert start_for(0.01, 8 * MIB) == START  # a short round trip: no more than short tracks would get
    assert start_for(0.02, 8 * MIB) == LONG_TRACKS < start_for(0.02)


def test_on_long_tracks_the_controller_does_not_double_and_stays_near_its_start() -> None:
    """A doubling start on 8 MiB tracks would put the next several long downloads on the link at once, and TCP's
    own ramp in the first intervals would look like a step that paid: the number moves by quarters only."""
    clock = Clock()
    control = Concurrency(16, clock=clock)
    control.expect_tracks([8 * MIB] * 23 + [1000])  # the typical (median) track counts, not the odd short one
    assert control.limit(waiting=True) == START
    control.handshake_took(0.08)
    assert control.limit(waiting=True) == 6
    seen = run(control, clock, 40, rate=12.5 * MB, rtt=0.08, track=8 * MIB)
    assert seen[0] == 6 and max(seen) <= 8 and min(seen) >= 5, seen


def test_short_tracks_still_double_from_their_start() -> None:
    clock = Clock()
    control = Concurrency(64, clock=clock)
    control.expect_tracks([512 * 1024] * 200)
    seen = run(control, clock, 6, rate=50 * MB, rtt=0.01, track=512 * 1024)
    assert seen[:3] == [START, 2 * START, 4 * START], seen


def test_an_explicit_start_is_kept_on_long_tracks() -> None:
    """A team cache's hits cost a round trip each to the origin's authorization: its start (--jobs) stays."""
    control = Concurrency(16, start=16, clock=Clock())
    control.expect_tracks([8 * MIB] * 10)
    control.handshake_took(0.08)
    assert control.limit(waiting=True) == 16


def test_sizes_after_the_first_measurement_change_nothing_but_the_next_guess() -> None:
    clock = Clock()
    control = Concurrency(16, clock=clock)
    control.answered_after(0.08)
    run(control, clock, 2, rate=12.5 * MB, rtt=0.08, track=512 * 1024)
    before = control.limit(waiting=True)
    control.expect_tracks([8 * MIB] * 10)
    assert control.limit(waiting=True) == before


def test_long_tracks_at_a_short_round_trip_keep_the_short_start_as_their_least() -> None:
    clock = Clock()
    control = Concurrency(16, clock=clock)
    control.handshake_took(0.01)
    control.expect_tracks([8 * MIB] * 10)
    assert control.limit(waiting=True) == START == control.lower


def test_a_server_pushing_back_halves_long_tracks_below_their_start() -> None:
    control = Concurrency(16, clock=Clock())
    control.expect_tracks([8 * MIB] * 10)
    control.handshake_took(0.08)
    assert control.limit(waiting=True) == 6
    control.pushed_back()
    assert control.limit(waiting=True) == 3
    control.pushed_back()
    assert control.limit(waiting=True) == LOWER


def test_answers_from_a_team_cache_store_let_as_many_run_as_jobs_allows() -> None:
    """A later workstation: every answer a team-cache hit. Each waits a round trip (the origin's authorization)
    and its bytes come over the studio's LAN: the link's number does not bound them, --jobs does."""
    clock = Clock()
    control = Concurrency(32, clock=clock)
    for _ in range(3):
        control.answered_after(0.08, nearby=True)
    assert control.limit(waiting=True) == 32
    # Their bytes are not the link's goodput: however many come, the link's own number learns nothing from them.
    control.received(500 * MB, nearby=True)
    clock.now += 10
    assert control.limit(waiting=True) == 32
    for _ in range(NEARBY_ANSWERS):  # the session goes on with tracks the team cache had not stored
        control.answered_after(0.08)
    assert control.limit(waiting=True) == start_for(0.08)


def test_a_share_of_team_cache_hits_adds_downloads_for_them_only() -> None:
    clock = Clock()
    control = Concurrency(64, clock=clock)
    control.answered_after(0.08)
    link = control.limit(waiting=True)
    for nearby in [True, False] * (NEARBY_ANSWERS // 2):
        control.answered_after(0.08, nearby=nearby)
    # Half the answers are hits: twice as many at once keeps about ``link`` of them on the link.
    assert control.limit(waiting=True) == 2 * link
    assert Concurrency(6, clock=clock).limit() <= 6
    capped = Concurrency(6, clock=clock)
    for nearby in [True, False] * (NEARBY_ANSWERS // 2):
        capped.answered_after(0.08, nearby=nearby)
    assert capped.limit(waiting=True) == 6  # --jobs is still the most
