"""What the mount has heard from the music service as a whole — nothing yet, answers, a refused token, no
connection — said once where the user looks: by ``mixvfs mount`` as the folder goes live (from the questions
asked while listing), then by ``mixvfs status`` (kept current by the downloads' outcomes)."""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable

from mixvfs.cache.errors import (
    AuthRejected,
    BadBody,
    CacheError,
    CertificateNotTrusted,
    FetchError,
    PermanentHttpError,
    ServerUnreachable,
)
from mixvfs.vfs.session.tracks import Kind, Track

TOKEN_SETTINGS = "MIXVFS_TOKEN, or token_file / token_command in the config (--token-file, --token-command)"


class Heard(enum.Enum):
    NOTHING = "nothing"  # not asked yet (the manifest gave every size and type), or only slow or busy answers
    ANSWERS = "answers"
    REFUSED = "refused"  # 401/403: no token, or one the server does not accept
    UNREACHABLE = "unreachable"  # no connection (refused, no route, DNS, a certificate not trusted)


def heard_from(error: FetchError | None) -> Heard | None:
    """What one download's outcome says of the server; None when it says nothing of it as a whole (slow or
    busy, cancelled by its reader, the cache's disk full). A 404 or a bad body still means it answers."""
    if error is None:
        return Heard.ANSWERS
    if isinstance(error, AuthRejected):
        return Heard.REFUSED
    if isinstance(error, ServerUnreachable):
        return Heard.UNREACHABLE
    return Heard.ANSWERS if isinstance(error, PermanentHttpError | BadBody) else None


class ServerWord:
    """The last thing heard and its reason; ``text`` is the one line a user is told (None: nothing to say)."""

    def __init__(self, is_cached: Callable[[Track], bool]) -> None:
        self._is_cached = is_cached
        self._lock = threading.Lock()
        self.heard = Heard.NOTHING
        self.reason = ""
        self.untrusted = False  # the connection failed at the server's certificate: asking again will not help

    def hear(self, error: FetchError | None) -> None:
        heard = heard_from(error)
        if heard is None:
            return
        with self._lock:
            self.heard, self.reason = heard, error.reason if error is not None else ""
            self.untrusted = isinstance(error, CertificateNotTrusted)

    def hear_listing(self, tracks: list[Track]) -> None:
        """The questions asked while the tracks were listed: one answer means the server is there; else a
        refusal or no connection says what every download will meet."""
        if any(t.answered for t in tracks):
            self.hear(None)
            return
        failures = [t.probe_failure for t in tracks if t.probe_failure is not None]
        for kind in (AuthRejected, ServerUnreachable):
            first = next((f for f in failures if isinstance(f, kind)), None)
            if first is not None:
                self.hear(first)
                return

    def text(self, tracks: list[Track]) -> str | None:
        with self._lock:
            heard, reason, untrusted = self.heard, self.reason, self.untrusted
        trusted = "until its certificate is trusted (SSL_CERT_FILE names the certificates to trust)"
        if heard is Heard.REFUSED:
            return (f"the music service refuses the cloud tracks ({reason.split(': set ', 1)[0]}): set the token "
                    f"with {TOKEN_SETTINGS}; until then every cloud track not in the cache fails with an "
                    "input/output error")
        if heard is Heard.UNREACHABLE:
            cloud = [t for t in tracks if t.kind is Kind.CLOUD]
            try:
                cached = sum(1 for t in cloud if self._is_cached(t))
            except CacheError as exc:  # `mixvfs status` must still say what the server did
                return (f"{reason}: the cache cannot say which of the {len(cloud)} cloud tracks it holds ({exc}); "
                        f"those it does not hold will fail {trusted if untrusted else 'until the server answers'}")
            return (f"{reason}: {cached} of {len(cloud)} cloud tracks are cached and will copy; "
                    f"{len(cloud) - cached} will fail {trusted if untrusted else 'until it answers'}")
        return None
