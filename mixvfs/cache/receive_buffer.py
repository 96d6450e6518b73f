"""h11's receive buffer: no copies for body bytes that arrive whole, and no reuse of a connection whose
buffer holds bytes that no request asked for.

httpx reads HTTP/1.1 through httpcore and h11. For every ``recv`` of a body, h11 appends the bytes to its
``bytearray`` buffer, slices them out twice (``maybe_extract_at_most`` then ``_extract``), and httpcore turns the
slice into ``bytes`` again: four copies of every byte, each with the GIL held. Profiled on a 256-track cold
export (BENCHMARKS.md, "per-track cost"), those copies were 40 % of the daemon's GIL time, the time every FUSE
read waits for.

:class:`PassThroughBuffer` keeps h11's semantics and skips the copies in the one case that carries the bytes of a
download: a ``recv``'s ``bytes`` that arrive into an empty buffer are held as they are, and a body reader that
takes at least that many gets that same object (``bytes(b)`` of a ``bytes`` is ``b``: httpcore copies nothing
either). Anything else — a header line, a chunk header, a body's end followed by more data — first moves the
held bytes into h11's own buffer and runs h11's code unchanged.

Stray bytes: a server may write more after a body than its Content-Length said (a bug, or a whole second
response) on a connection it keeps alive. The ``recv`` that ends the body brings them too; h11 keeps them, and
httpcore, which checks only whether the *socket* is readable before reusing an idle connection, sent the next
request there and took those bytes for its answer: another track's bytes stored as this one, or an innocent
track failed with "illegal status line". :func:`refuse_leftovers` makes such a connection count as expired,
so the pool closes it and opens another.

h11 and httpcore are not ours: :func:`install` and :func:`refuse_leftovers` check the names they reach and say
loudly when they are gone, as :func:`mixvfs.cache.http.read_bigger_chunks` does for httpcore's read size.
"""

from __future__ import annotations

import logging
from types import ModuleType

import h11
import httpcore
from h11 import _connection as h11_connection
from h11._receivebuffer import ReceiveBuffer, blank_line_regex

log = logging.getLogger(__name__)

# Every method of h11 0.16's ReceiveBuffer; a new one would read ``_data`` without the held bytes.
KNOWN_METHODS = frozenset({"__init__", "__iadd__", "__bool__", "__len__", "__bytes__", "_extract",
                           "maybe_extract_at_most", "maybe_extract_next_line", "maybe_extract_lines",
                           "is_next_line_obviously_invalid_request_line"})


class PassThroughBuffer(ReceiveBuffer):
    def __init__(self) -> None:
        super().__init__()
        self._held: bytes | None = None  # one recv's bytes, not yet in ``_data`` (which is then empty)

    def _settle(self) -> None:
        """Move the held bytes into h11's buffer, before any of h11's own code looks at it."""
        if self._held is not None:
            self._data += self._held
            self._held = None

    def __iadd__(self, byteslike: bytes | bytearray) -> PassThroughBuffer:
        if self._held is None and not self._data and type(byteslike) is bytes:
            self._held = byteslike
            return self
        self._settle()
        self._data += byteslike
        return self

    def __len__(self) -> int:
        return len(self._data) + (0 if self._held is None else len(self._held))

    def __bool__(self) -> bool:
        return len(self) > 0

    def __bytes__(self) -> bytes:
        # httpcore asks for this (h11's ``trailing_data``) after every response's headers: the body held is
        # given as it is (bytes never change), not moved into h11's buffer and copied out of it.
        if self._held is None:
            return bytes(self._data)
        return self._held if not self._data else bytes(self._data) + self._held

    def _extract(self, count: int) -> bytearray:
        self._settle()
        return super()._extract(count)

    def maybe_extract_at_most(self, count: int) -> bytearray | None:
        held = self._held
        if held is not None and 0 < len(held) <= count:
            self._held = None
            self._next_line_search = 0
            self._multiple_lines_search = 0
            return held  # type: ignore[return-value]  # bytes: h11's Data takes any bytes-like
        self._settle()
        return super().maybe_extract_at_most(count)

    def maybe_extract_next_line(self) -> bytearray | None:
        self._settle()
        return super().maybe_extract_next_line()

    def maybe_extract_lines(self) -> list[bytearray] | None:
        held = self._held
        if held is not None and not held.startswith((b"\n", b"\r\n")):
            # A response's headers and the first part of its body in one recv (on a near link, most of a
            # small track): only the headers join h11's buffer; the body stays held, handed on as it is.
            # Settled whole, every byte of it was copied thrice (into the buffer, out of it, into bytes).
            match = blank_line_regex.search(held)
            if match is not None:
                end = match.end()
                self._held = None  # h11's own code below (its _extract settles) sees the headers alone
                self._data += held[:end]
                lines = super().maybe_extract_lines()  # all of them: the buffer ends at the blank line
                self._held = held[end:] or None
                return lines
        self._settle()
        return super().maybe_extract_lines()

    def is_next_line_obviously_invalid_request_line(self) -> bool:
        self._settle()
        return super().is_next_line_obviously_invalid_request_line()


# A response's headers are read with a smaller recv: on a near link its body is already waiting, and the part of
# it that came with the headers is copied once out of that recv (PassThroughBuffer.maybe_extract_lines). Read
# with the body's megabyte, that was most of a small track (~7 % of the daemon's GIL time on 1 MiB tracks,
# BENCHMARKS.md, item 4, third round); one more recv per response costs less. Any headers fit: h11 asks again
# until they end.
HEAD_READ = 16 << 10


class ReadSize:
    """``READ_NUM_BYTES`` of an httpcore HTTP/1.1 connection: ``head`` while the server's headers are awaited,
    ``body`` once its body comes (h11's state of the server: SEND_BODY). Read on the class: ``body``."""

    def __init__(self, body: int, head: int) -> None:
        self.body = body
        self.head = head

    def __get__(self, connection: object, owner: type | None = None) -> int:
        state = getattr(connection, "_h11_state", None)
        if state is None or state.their_state is h11.SEND_BODY:
            return self.body
        return self.head


def install(module: ModuleType = h11_connection) -> bool:
    """Make h11's connections (created after this) use :class:`PassThroughBuffer`. False, with a warning, when
    h11's buffer is not the one this was written against."""
    methods = {name for name, value in vars(ReceiveBuffer).items() if callable(value)}
    if getattr(module, "ReceiveBuffer", None) not in (ReceiveBuffer, PassThroughBuffer) or methods != KNOWN_METHODS:
        log.warning("h11 %s: its receive buffer is not the one mixvfs knows; downloads copy every byte four "
                    "times, slower (mixvfs needs an update for this h11)", getattr(h11, "__version__", "?"))
        return False
    module.ReceiveBuffer = PassThroughBuffer  # type: ignore[attr-defined]
    return True


def refuse_leftovers(connection: type = httpcore.HTTP11Connection) -> bool:
    """Make an idle HTTP/1.1 connection whose h11 state still holds received bytes count as expired. False,
    with a warning, when httpcore's connection is not the one this was written against."""
    original = getattr(connection, "has_expired", None)
    if getattr(original, "refuses_leftovers", False):
        return True
    if not callable(original) or not isinstance(getattr(h11.Connection, "trailing_data", None), property):
        log.warning("httpcore %s: its HTTP/1.1 connection is not the one mixvfs knows; a server's stray bytes "
                    "after a body may answer the next request (mixvfs needs an update for this httpcore)",
                    httpcore.__version__)
        return False

    def has_expired(self: httpcore.HTTP11Connection) -> bool:
        if original(self):
            return True
        # Idle only: the pool asks every connection, and one busy with another thread's response holds that
        # response's unread bytes, which are no leftovers (and must not be touched from this thread).
        state = getattr(self, "_h11_state", None)
        return self.is_idle() and state is not None and bool(state.trailing_data[0])

    has_expired.refuses_leftovers = True  # type: ignore[attr-defined]
    connection.has_expired = has_expired  # type: ignore[attr-defined]
    return True
