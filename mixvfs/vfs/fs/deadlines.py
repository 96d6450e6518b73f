"""How long one FUSE request may wait, and macFUSE's ``daemon_timeout`` derived from it.

macFUSE's kernel extension gives up on the daemon when one request goes unanswered for ``daemon_timeout``
seconds (60 by default, 600 at most) and then ejects the whole volume: an export in progress loses every file,
not one. So on macOS every request must be answered — with bytes, or with EIO and a report line — before
then. Two kinds of wait make up a request's time:

* waiting for a download (a read, or the ``stat`` of a track whose size only its download tells): bounded by
  ``request_timeout`` (auto: 2 × ``stall_timeout`` on macOS; no bound on Linux, whose kernel never gives up
  on a FUSE daemon by default, so a slow but steady download is waited for as long as it takes);
* the HTTP exchanges a request makes itself (an open's revalidation, a ``stat``'s size probe): a HEAD and
  its ranged-GET fallback, each bounded by the connect timeout plus ``stall_timeout``, and one token
  refresh (``token_timeout``).

``daemon_timeout`` is the larger of the two plus :data:`MARGIN` (a loaded machine's scheduling, the reply
itself), capped at macFUSE's 600 s."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mixvfs import host
from mixvfs.cache.defaults import CONNECT_TIMEOUT

MACFUSE_MAX_DAEMON_TIMEOUT = 600  # seconds; the kernel extension refuses more (FUSE_MAX_DAEMON_TIMEOUT)
MARGIN = 15.0  # seconds between the longest wait of ours and the kernel giving up
EXCHANGES_PER_REQUEST = 2  # a HEAD, then a one-byte ranged GET where HEAD is refused


@dataclass(frozen=True)
class RequestBounds:
    request_wait: float | None  # the longest one request waits for a download (None: no bound)
    daemon_timeout: int | None  # macFUSE's mount option (None: not macOS)
    exchanges: float  # the longest the HTTP exchanges of one request may take


def request_bounds(setting: str | float, *, stall_timeout: float, token_timeout: float,
                   platform: str | None = None) -> RequestBounds:
    """``setting`` is ``request_timeout``: "auto", or seconds (0: no bound). ``platform``: this system's
    (``host``'s) unless named."""
    darwin = host.DARWIN if platform is None else platform == "darwin"
    if setting == "auto":
        wait: float | None = 2 * stall_timeout if darwin else None
    else:
        wait = float(setting) or None
    exchanges = EXCHANGES_PER_REQUEST * (CONNECT_TIMEOUT + stall_timeout) + token_timeout
    if not darwin:
        return RequestBounds(wait, None, exchanges)
    longest = max(wait if wait is not None else math.inf, exchanges)
    if longest + MARGIN >= MACFUSE_MAX_DAEMON_TIMEOUT:
        return RequestBounds(wait, MACFUSE_MAX_DAEMON_TIMEOUT, exchanges)
    return RequestBounds(wait, math.ceil(longest + MARGIN), exchanges)


def outlives(bounds: RequestBounds) -> str | None:
    """Why a request may outlive macFUSE's daemon_timeout with these settings (None: it cannot)."""
    if bounds.daemon_timeout is None:
        return None
    longest = max(bounds.request_wait if bounds.request_wait is not None else math.inf, bounds.exchanges)
    if longest + MARGIN <= bounds.daemon_timeout:
        return None
    return (f"a request may wait {longest:g} s but macFUSE gives up after {bounds.daemon_timeout} s and ejects "
            "the volume: lower request_timeout, stall_timeout or token_timeout")
