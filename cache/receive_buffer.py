"""h11's receive buffer without copies for body bytes that arrive whole.

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

h11 is not ours: :func:`install` checks the names it replaces and says loudly when they are gone (downloads then
work as before, only slower), as :func:`mixvfs.cache.http.read_bigger_chunks` does for httpcore.
"""

from __future__ import annotations

import logging
from types import ModuleType

import h11
from h11 import _connection as h11_connection
from h11._receivebuffer import ReceiveBuffer

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
        self._settle()
        return bytes(self._data)

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
        self._settle()
        return super().maybe_extract_lines()

    def is_next_line_obviously_invalid_request_line(self) -> bool:
        self._settle()
        return super().is_next_line_obviously_invalid_request_line()


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
