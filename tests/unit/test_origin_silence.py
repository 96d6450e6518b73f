"""OriginSilences: an origin that let a request go unanswered is asked nothing but one check now and then
(clock injected), and is heard again at its first answer."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from mixvfs.cache.errors import NotAnswering, StallTimeout
from mixvfs.cache.http import HttpClient
from mixvfs.cache.origin_silence import OriginSilences
from tests.conftest import wait_until

URL = "http://music.example:8080/stream/a.wav"
OTHER_TRACK = "http://music.example:8080/stream/b.wav"


class Clock:
    def __init__(self) -> None:
        self.at = 100.0

    def __call__(self) -> float:
        return self.at


def silences() -> tuple[OriginSilences, Clock]:
    clock = Clock()
    return OriginSilences(first=5.0, longest=40.0, clock=clock), clock


def test_after_one_unanswered_request_the_origins_other_requests_fail_at_once():
    held, clock = silences()
    held.before(URL)  # nothing known: sent
    held.unanswered(URL, "stall timeout")
    clock.at += 1.4
    with pytest.raises(NotAnswering, match=r"not asked: music.example:8080 has not answered for 1 s "
                                           r"\(a request got no answer within the stall timeout\)") as caught:
        held.before(OTHER_TRACK)
    assert isinstance(caught.value, StallTimeout)  # a download retries it, as it would a stall
    held.before("http://cdn.example/stream/a.wav")  # another origin is not held back
    assert held.silent() == [{"origin": "http://music.example:8080", "seconds": 1}]


def test_one_check_at_a_time_then_twice_as_long_while_it_stays_silent():
    held, clock = silences()
    held.unanswered(URL, "stall timeout")
    clock.at += 5.0
    held.before(URL)  # the check goes
    with pytest.raises(NotAnswering):
        held.before(OTHER_TRACK)  # only one at a time
    clock.at += 2.0
    held.unanswered(URL, "stall timeout")  # the check met silence too
    clock.at += 9.9
    with pytest.raises(NotAnswering):
        held.before(URL)
    clock.at += 0.1
    held.before(URL)  # 10 s after the failed check
    held.unanswered(URL, "stall timeout")
    clock.at += 20.0
    held.before(URL)


def test_a_request_sent_before_the_silence_was_known_and_unanswered_since_puts_the_check_off():
    """`ls -l`'s first stat was sent before the mount's own questions went unanswered; it ends unanswered later.
    The listing's next stat must not be the check that waits the stall timeout once more."""
    held, clock = silences()
    held.unanswered(URL, "stall timeout")
    clock.at += 11.0  # its check was due 6 s ago, but nobody asked
    held.unanswered(OTHER_TRACK, "stall timeout")  # sent earlier, given up on now
    with pytest.raises(NotAnswering):
        held.before(URL)
    clock.at += 5.0
    held.before(URL)


def test_a_retry_of_an_unanswered_request_is_never_the_check():
    """A download's next attempt after its own went unanswered: its reader must not wait a second stall timeout
    for a check that starts after its first question timed out. It fails at once; a fresh request is the check."""
    held, clock = silences()
    held.unanswered(URL, "stall timeout")
    clock.at += 7.0  # the check is due
    with held.no_check(), pytest.raises(NotAnswering):
        held.before(URL)
    with held.no_check(False):
        held.before(URL)  # not a retry: this one is the check
    assert held.silent() == [{"origin": "http://music.example:8080", "seconds": 7}]  # the check is still out


def test_an_answer_ends_the_silence():
    held, clock = silences()
    held.unanswered(URL, "connect timeout")
    clock.at += 5.0
    held.before(URL)  # the check
    held.answered(URL)
    held.before(OTHER_TRACK)
    held.before(OTHER_TRACK)
    assert held.silent() == []


def test_a_check_that_never_ends_holds_the_others_back_at_most_the_longest_pause():
    held, clock = silences()
    held.unanswered(URL, "stall timeout")
    clock.at += 5.0
    held.before(URL)  # its thread never tells how it ended
    clock.at += 39.0
    with pytest.raises(NotAnswering):
        held.before(URL)
    clock.at += 1.0
    held.before(URL)


class Silent:
    """A real TCP server that takes every connection and never says a word; counts what it was asked."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._take, daemon=True).start()

    def _take(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.connections.append(self.sock.accept()[0])

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


def test_a_client_asks_a_silent_server_once_then_refuses_at_once_until_the_check():
    server = Silent()
    clock = Clock()
    client = HttpClient(stall_timeout=0.3, silences=OriginSilences(first=5.0, clock=clock))
    try:
        with pytest.raises(StallTimeout) as first:
            client.probe(f"{server.url}/stream/a.wav")
        assert not isinstance(first.value, NotAnswering)
        with pytest.raises(NotAnswering):
            client.probe(f"{server.url}/stream/b.wav")
        with pytest.raises(NotAnswering), client.get(f"{server.url}/stream/c.wav"):
            pass
        assert len(server.connections) == 1
        clock.at += 5.0
        with pytest.raises(StallTimeout):  # the check: sent, and unanswered too
            client.probe(f"{server.url}/stream/d.wav")
        assert wait_until(lambda: len(server.connections) == 2)
    finally:
        client.close()
        server.close()
