"""cache/receive_buffer.py: h11's receive buffer without copies must parse exactly as h11's own, whatever the
split of the bytes into recv()s; and the reach into h11 is checked, loudly."""

from __future__ import annotations

import logging
import random
import types

import h11
import httpcore
import pytest
from h11 import _connection as h11_connection
from h11._receivebuffer import ReceiveBuffer

from mixvfs.cache import http as _http  # noqa: F401  # importing it installs the buffer
from mixvfs.cache import receive_buffer
from mixvfs.cache.http import install_reaches
from mixvfs.cache.receive_buffer import PassThroughBuffer


def responses(rng: random.Random) -> bytes:
    """Three responses on one keep-alive connection: a sized body, a chunked one with a trailer, a sized one."""
    one = rng.randbytes(rng.randrange(0, 300_000))
    two = [rng.randbytes(rng.randrange(1, 70_000)) for _ in range(rng.randrange(1, 5))]
    three = rng.randbytes(rng.randrange(1, 5000))
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in two) + b"0\r\nX-Trailer: t\r\n\r\n"
    return (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: \"a\"\r\n\r\n%s" % (len(one), one)
            + b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
            + b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(three), three))


def parse(data: bytes, splits: list[int], buffer: type[ReceiveBuffer]) -> list[tuple[str, object]]:
    """Feed ``data`` to an h11 client connection in pieces of ``splits`` (as recv() would) and note every
    event; the connection's buffer is ``buffer``."""
    saved = getattr(h11_connection, "ReceiveBuffer")  # noqa: B009
    h11_connection.ReceiveBuffer = buffer  # type: ignore[attr-defined]
    try:
        conn = h11.Connection(h11.CLIENT)
    finally:
        h11_connection.ReceiveBuffer = saved  # type: ignore[attr-defined]
    assert type(conn._receive_buffer) is buffer
    seen: list[tuple[str, object]] = []
    pieces, at = [], 0
    for size in splits:
        pieces.append(data[at:at + size])
        at += size
    pieces.append(data[at:])
    for _ in range(3):
        conn.send(h11.Request(method="GET", target="/t", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(pieces.pop(0) if pieces else b"")
                continue
            if isinstance(event, h11.Data):
                seen.append(("data", bytes(event.data)))
            elif isinstance(event, h11.Response):
                seen.append(("response", (event.status_code, list(event.headers))))
            elif isinstance(event, h11.EndOfMessage):
                seen.append(("end", list(event.headers)))
                break
            else:
                seen.append((type(event).__name__, None))
                break
        conn.start_next_cycle()
    return seen


def joined(events: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """Adjacent data events as one: how a body is cut into Data events may differ, never its bytes."""
    out: list[tuple[str, object]] = []
    for kind, value in events:
        if kind == "data" and out and out[-1][0] == "data":
            out[-1] = ("data", out[-1][1] + value)  # type: ignore[operator]
        else:
            out.append((kind, value))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_parses_like_h11_whatever_the_recv_sizes(seed: int) -> None:
    rng = random.Random(seed)
    data = responses(rng)
    # recv sizes from 1 byte (headers split anywhere) to more than a body (a body's end and the next headers
    # in one recv)
    splits = [rng.choice((1, 7, 100, 4096, 65536, 1 << 20)) for _ in range(rng.randrange(5, 60))]
    assert joined(parse(data, splits, PassThroughBuffer)) == joined(parse(data, splits, ReceiveBuffer))


def test_a_body_recv_passes_through_without_a_copy() -> None:
    buf = PassThroughBuffer()
    piece = b"x" * 100_000
    buf += piece
    assert len(buf) == 100_000 and bool(buf)
    assert buf.maybe_extract_at_most(1_000_000) is piece  # type: ignore[comparison-overlap]  # the same object: nothing copied
    assert len(buf) == 0 and not buf and buf.maybe_extract_at_most(10) is None


def test_a_body_that_came_with_the_headers_is_handed_on_as_received_not_copied_through_h11s_buffer() -> None:
    buf = PassThroughBuffer()
    body = b"y" * 200_000
    buf += b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + body
    assert buf.maybe_extract_lines() == [bytearray(b"HTTP/1.1 200 OK"), bytearray(b"Content-Length: 200000")]
    assert len(buf) == len(body)
    assert bytes(buf) is buf._held  # what httpcore asks after the headers (trailing data): no copy, nothing moved
    out = buf.maybe_extract_at_most(1 << 20)
    assert type(out) is bytes and out == body  # type: ignore[comparison-overlap]  # bytes: httpcore copies nothing
    assert not buf


def test_held_bytes_join_h11s_buffer_before_any_other_use() -> None:
    buf = PassThroughBuffer()
    buf += b"HTTP/1.1 200 OK\r\n"
    buf += b"A: b\r\n\r\nrest"  # a second piece: both now in h11's own buffer
    assert buf.maybe_extract_lines() == [bytearray(b"HTTP/1.1 200 OK"), bytearray(b"A: b")]
    assert bytes(buf) == b"rest"
    buf2 = PassThroughBuffer()
    buf2 += b"abcdef"
    assert bytes(buf2.maybe_extract_at_most(4) or b"") == b"abcd"  # fewer wanted than held: h11's own slicing
    assert bytes(buf2) == b"ef"


def test_install_replaces_h11s_buffer_and_says_so_when_it_cannot() -> None:
    install_reaches()  # as the runtime's start does
    assert getattr(h11_connection, "ReceiveBuffer") is PassThroughBuffer  # noqa: B009
    assert type(h11.Connection(h11.CLIENT)._receive_buffer) is PassThroughBuffer
    assert receive_buffer.install()  # again: harmless


def test_an_unknown_h11_is_left_alone_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    stranger = types.ModuleType("h11._connection")  # an h11 whose connection module has no ReceiveBuffer
    with caplog.at_level(logging.WARNING, logger="mixvfs.cache.receive_buffer"):
        assert not receive_buffer.install(stranger)
    assert not hasattr(stranger, "ReceiveBuffer")
    assert "receive buffer is not the one mixvfs knows" in caplog.text


def test_idle_connections_holding_stray_bytes_count_as_expired() -> None:
    wrapped = httpcore.HTTP11Connection.has_expired
    assert getattr(wrapped, "refuses_leftovers", False)  # importing mixvfs.cache.http did it
    assert receive_buffer.refuse_leftovers()  # again: harmless
    assert httpcore.HTTP11Connection.has_expired is wrapped  # not wrapped twice


def test_an_unknown_httpcore_connection_is_left_alone_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Stranger:  # no has_expired
        pass

    with caplog.at_level(logging.WARNING, logger="mixvfs.cache.receive_buffer"):
        assert not receive_buffer.refuse_leftovers(Stranger)
    assert not hasattr(Stranger, "has_expired")
    assert "stray bytes" in caplog.text
