"""Our exception tree. Every failure inside mixvfs ends as one of these; foreign libraries' errors are
translated at their boundary (httpx in :mod:`mixvfs.cache.http`, the OS in :mod:`mixvfs.cache.store`), and the FUSE
adapter turns these into errno in one table (:mod:`mixvfs.vfs.adapter.errno_map`).

::

    MixvfsError
    ├── ConfigError                 bad command-line value, token given on the command line, ...
    ├── CacheError                  the cache folder itself is unusable
    │   └── CorruptBlob             a blob's bytes no longer hash to its digest
    └── FetchError                  one track could not be had; ``reason`` is a sentence for the report
        ├── SourceMissing           no local file and no cloud path; local file unreadable
        ├── Cancelled               the last reader went away mid-download
        ├── PermanentHttpError      4xx that retrying will not fix (404, 410, ...)
        │   └── AuthRejected        401/403 even after one token refresh
        ├── BadBody                 the body is not the track
        │   ├── LengthMismatch      body length differs from the advertised size
        │   ├── NotAudio            2xx whose body is an error page (text/html, application/json)
        │   └── ContentChanged      the server's copy changed after bytes were already served
        ├── NoSpace                 the cache's disk is full
        ├── ServerWaitTooLong       the server asked to wait longer than ``server_wait_max``
        └── TransientError          worth retrying (with backoff, bounded)
            ├── ServerBusy          5xx, 429
            │   └── ServerAskedToWait   not sent: the origin asked us to wait (Retry-After) and the time is not up
            ├── NetworkError        connection reset, body cut off, protocol error
            │   └── ServerUnreachable   connection refused, DNS failure, connect timeout
            │       └── CertificateNotTrusted   the TLS certificate was refused
            └── StallTimeout        no progress for ``stall_timeout`` seconds
                └── NotAnswering    not sent: the origin has not answered a request lately (no headers in time)
"""

from __future__ import annotations


class MixvfsError(Exception):
    """Base of every error mixvfs raises on purpose."""


class ConfigError(MixvfsError):
    """A user-supplied setting is unusable; the message says which and why."""


class CacheError(MixvfsError):
    """The cache folder cannot be used."""


class CorruptBlob(CacheError):
    """A stored blob does not hash to its digest (changed on disk)."""


class FetchError(MixvfsError):
    """A track's bytes could not be had. ``reason`` is shown in the report as is."""

    def __init__(self, reason: str, status: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status  # the HTTP status behind it, when there was one


class NotKept(FetchError):
    """The whole body came and was verified, but the cache would not take it: every reader of the download
    still gets whole bytes (from its own descriptor of the staging file); the track is just not cached."""


class SourceMissing(FetchError):
    pass


class Cancelled(FetchError):
    pass


class RequestWaitExceeded(FetchError):
    """One read (or ``stat``) waited its longest for a download and is answered EIO; the download itself is
    not failed: it goes on while a reader still has the file open or prefetch wants it. A bound only where
    the kernel gives up on the daemon itself (macFUSE's ``daemon_timeout``, which ejects the whole volume)."""


class NotForPreview(FetchError):
    """A previewer (Spotlight, QuickLook) opened a track that is not stored: it is not downloaded for it.
    The track itself is not failed."""


class PermanentHttpError(FetchError):
    pass


class AuthRejected(PermanentHttpError):
    pass


class BadBody(FetchError):
    pass


class LengthMismatch(BadBody):
    pass


class NotAudio(BadBody):
    pass


class ContentChanged(BadBody):
    pass


class NoSpace(FetchError):
    pass


class ServerWaitTooLong(FetchError):
    """The server asked to wait (429/503 with Retry-After) longer than the mount is willing to."""


class TransientError(FetchError):
    """Failures that a later attempt may not meet; the fetcher retries these."""


class ServerBusy(TransientError):
    def __init__(self, reason: str, status: int = 0, wait_url: str | None = None) -> None:
        super().__init__(reason, status)
        self.wait_url = wait_url  # the URL whose origin asked to wait (a redirect's target: a CDN), if one did


class ServerAskedToWait(ServerBusy):
    """A request that was not sent: its origin asked to be left alone until a time not reached yet."""


class NetworkError(TransientError):
    pass


class ServerUnreachable(NetworkError):
    pass


class CertificateNotTrusted(ServerUnreachable):
    """The server's TLS certificate failed verification (self-signed, another host's, expired, an unknown
    authority): no request reached it. A team cache with one is down (the origin serves); preflight calls an
    origin with one a failure, since trying again will not change the certificate."""


class StallTimeout(TransientError):
    pass


class NotAnswering(StallTimeout):
    """A request that was not sent: its origin let an earlier one go unanswered (no response headers within
    the stall or connect timeout) and has not answered since."""
