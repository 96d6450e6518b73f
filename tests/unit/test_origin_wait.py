"""OriginWaits: a 429/503's Retry-After held per origin on the monotonic clock (clocks injected)."""

from __future__ import annotations

import email.utils

import pytest

from mixvfs.cache.errors import ServerAskedToWait
from mixvfs.cache.origin_wait import OriginWaits, retry_after_seconds

DATE = 1_800_000_000.0  # the server's clock (its Date header)


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def http_date(at: float) -> str:
    return email.utils.formatdate(at, usegmt=True)


def waits(max_wait: float = 120.0) -> tuple[OriginWaits, Clock, Clock]:
    mono, wall = Clock(500.0), Clock(DATE)
    return OriginWaits(max_wait=max_wait, clock=mono, wall=wall), mono, wall


def test_delta_seconds_hold_the_whole_origin_until_the_time_named():
    held, mono, _wall = waits()
    assert held.heard("https://music.example/stream/a.wav", 503, "30") == 30
    with pytest.raises(ServerAskedToWait, match="asked to wait 30 s"):
        held.check("https://music.example/stream/b.wav")  # another track of the same origin
    held.check("https://cdn.example/stream/a.wav")  # another origin is not held
    mono.at += 29.5
    left = held.left("https://MUSIC.example/x")
    assert left is not None and left[0] == pytest.approx(0.5)
    mono.at += 0.5
    assert held.left("https://music.example/x") is None
    held.check("https://music.example/stream/a.wav")


def test_an_http_date_is_measured_from_the_servers_date_not_our_clock():
    said = http_date(DATE + 45)
    assert retry_after_seconds(said, date=http_date(DATE), wall_now=DATE + 3600) == 45  # our clock an hour ahead
    assert retry_after_seconds(said, date=http_date(DATE), wall_now=DATE - 3600) == 45  # an hour behind
    assert retry_after_seconds(said, date=None, wall_now=DATE + 15) == 30  # no Date: our wall clock
    assert retry_after_seconds(http_date(DATE - 60), date=http_date(DATE), wall_now=DATE) == 0  # already past
    assert retry_after_seconds("soon", date=None, wall_now=DATE) is None
    assert retry_after_seconds(None, date=None, wall_now=DATE) is None


def test_the_wait_is_converted_once_so_later_wall_clock_steps_change_nothing():
    held, mono, wall = waits()
    held.heard("http://h:8080/a", 429, http_date(DATE + 20), http_date(DATE))
    wall.at += 3600  # the wall clock steps forward an hour: the deadline is monotonic
    assert held.left("http://h:8080/a") is not None
    wall.at -= 7200  # and back two hours
    mono.at += 20
    assert held.left("http://h:8080/a") is None


def test_only_429_and_503_with_a_readable_header_start_a_wait_and_a_shorter_one_never_shortens_it():
    held, mono, _wall = waits()
    assert held.heard("http://h/a", 500, "30") is None
    assert held.heard("http://h/a", 503, None) is None
    assert held.heard("http://h/a", 503, "later, please") is None
    held.check("http://h/a")
    held.heard("http://h/a", 503, "30")
    held.heard("http://h/b", 429, "5")
    mono.at += 10
    left = held.left("http://h/c")
    assert left is not None and left[0] == pytest.approx(20)


def test_a_wait_longer_than_the_maximum_is_an_error_quoting_the_server():
    held, _mono, _wall = waits(max_wait=120)
    held.heard("http://h/a", 503, "3600")
    error = held.too_long("http://h/a")
    assert error is not None and "asked to wait 3600 s" in error.reason and "Retry-After: 3600" in error.reason
    assert "server_wait_max (120 s)" in error.reason
    held2, _m, _w = waits(max_wait=120)
    held2.heard("http://h/a", 503, "120")
    assert held2.too_long("http://h/a") is None


def test_active_waits_say_origin_and_seconds_left():
    held, mono, _wall = waits()
    held.heard("https://user:pw@music.example/stream/a.wav?sig=secret", 503, "30")
    mono.at += 9.5
    assert held.active() == [{"origin": "https://music.example", "seconds": 21, "asked": 30.0}]
