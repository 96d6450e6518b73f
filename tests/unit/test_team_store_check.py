"""The team cache's store check, against a real socket server: one connection closed without an answer does not
route a studio around its cache; two in a row do."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from mixvfs.cache.http import HttpClient
from mixvfs.cache.team import MARKER, STORE_CHECK_HEADER, TeamCache


class Cache:
    """Closes the first ``drops`` connections unanswered, then answers each store check as nginx does: the first
    request of a nonce a MISS, the second a HIT."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.seen: set[bytes] = set()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.drops > 0:
                    self.drops -= 1
                    conn.recv(65536)
                    continue  # closed without a word
                buffer = b""
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buffer += data
                    while b"\r\n\r\n" in buffer:
                        head, buffer = buffer.split(b"\r\n\r\n", 1)
                        target = head.split(b" ")[1]
                        status = "HIT" if target in self.seen else "MISS"
                        self.seen.add(target)
                        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{MARKER}: {status}\r\n"
                                     f"{STORE_CHECK_HEADER}: 1\r\n\r\nok".encode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def cache_server(request: pytest.FixtureRequest) -> Iterator[Cache]:
    cache = Cache(request.param)
    yield cache
    cache.close()


@pytest.mark.parametrize(("cache_server", "state", "stores"), [(1, "up", True), (2, "down", None)],
                         indirect=["cache_server"])
def test_one_connection_closed_without_an_answer_is_asked_again_two_in_a_row_call_it_down(
        cache_server: Cache, state: str, stores: bool | None) -> None:
    team = TeamCache(cache_server.url)
    client = HttpClient(team=team)
    try:
        client.check_team_stores()
    finally:
        client.close()
    [seen] = team.state()
    assert seen["state"] == state and seen["stores"] is stores, seen
