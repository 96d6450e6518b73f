"""The download controller's first word on the round trip: each new connection's TCP handshake, timed through
httpx's ``trace`` extension (cache/http.py), before any answer comes."""

from __future__ import annotations

from pathlib import Path

from mixvfs.cache.concurrency import START, Concurrency, start_for
from mixvfs.cache.http import HttpClient
from tests.faults.helpers import cloud_track
from tools.devserver import DevServer


def test_a_new_connections_handshake_is_timed_and_a_kept_ones_is_not(server_root: Path,
                                                                      devserver: DevServer) -> None:
    url = devserver.url_for(cloud_track(server_root, "a", 4000)["cloud_stream_path"])
    seen: list[float] = []
    client = HttpClient()
    client.on_handshake = seen.append
    try:
        client.probe(url)
        client.probe(url)  # the kept connection: no handshake
        with client.get(url) as body:
            assert sum(len(c) for c in body.chunks) == 4000
    finally:
        client.close()
    assert len(seen) == 1 and 0 < seen[0] < 5.0, seen


def test_without_a_listener_the_trace_still_learns_each_connection_for_the_stop(
        server_root: Path, devserver: DevServer) -> None:
    """The trace is asked for by every request: each new connection is kept (weakly) so that the stop can shut it
    down (cut_connections), whether or not anyone times handshakes."""
    url = devserver.url_for(cloud_track(server_root, "a", 4000)["cloud_stream_path"])
    client = HttpClient()
    try:
        client.probe(url)
        client.probe(url)  # the kept connection: no new one
        assert client.cut_connections() == 1
    finally:
        client.close()


def test_a_handshake_scales_the_start_before_any_answer() -> None:
    control = Concurrency(64, clock=lambda: 0.0)
    assert control.limit(waiting=True) == START
    control.handshake_took(0.08)
    assert control.limit(waiting=True) == start_for(0.08) == 12
    control.answered_after(0.16)  # the first answer on that connection (handshake + request): the least stays
    assert control.limit(waiting=True) == 12
