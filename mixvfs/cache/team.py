"""The team cache's routing and failover policy, without HTTP: which cache a track request goes to, when a
cache counts as down, and whether its answer can be used. :mod:`mixvfs.cache.http` sends the requests and
asks this module; time is injected (``now``) so the policy is tested without sleeping.

The setting is CVMFS-style: ``;`` separates groups tried in order (failover), ``|`` separates caches of one
group, one picked at random per request (load spreading). A cache that fails (cannot be reached, times out,
answers 502/503/504 or without the marker header) is skipped for ``reset_after`` seconds and the request goes
to the next group, at last straight to the origin. The bytes the cache sends are checked against the origin's
current ETag and length: never against anything the cache kept, which can be as stale as its copy. The cache
authorizes every request with a HEAD of the same URI at the origin, made for this request (never cached), and
passes on what the origin said in it (``AUTH_HEADER``, ``CURRENT_ETAG_HEADER``, ``CURRENT_LENGTH_HEADER``): that is
the origin's word at the download's start, with no round trip of its own. A cache whose configuration does not
pass it on (an older one) leaves the client to ask the origin itself (one HEAD). A stale copy is asked for again
with the refresh header, and if still wrong, that request goes to the origin.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from mixvfs.cache import defaults
from mixvfs.cache.errors import ConfigError

log = logging.getLogger(__name__)

# The headers the cache and the client agree on (the nginx configuration sets the same names).
MARKER = "X-Cache-Status"
REFRESH_HEADER = "X-Mixvfs-Refresh"
ORIGIN_HEADER = "X-Mixvfs-Origin"  # request: the origin the client means; answer: the origin the cache fronts
# On a track's answer: the status, ETag and Content-Length of the origin's answer to the authorization HEAD the
# cache made for this very request (an absent ETag or length: the origin sent none).
AUTH_HEADER = "X-Mixvfs-Auth-Status"
CURRENT_ETAG_HEADER = "X-Mixvfs-Origin-ETag"
CURRENT_LENGTH_HEADER = "X-Mixvfs-Origin-Length"
FAILOVER_STATUSES = frozenset({502, 503, 504})
MISDIRECTED = 421  # the cache fronts another origin
# Asked twice with one nonce (``?n=``), the second answer is a HIT only if the cache stored the first.
STORE_CHECK_PATH = "/.mixvfs-store-check"
STORE_CHECK_HEADER = "X-Mixvfs-Store-Check"  # on the check's answers: a configuration that has the check
DEFAULT_RESET_AFTER = defaults.TEAM_CACHE_RESET_AFTER

VIA_ORIGIN = "origin"
VIA_HIT = "team cache hit"
VIA_MISS = "team cache miss"
VIA_PASS = "team cache pass (not cached)"  # the origin's answer passed through uncached (no HEAD, a redirect)
HIT_STATUSES = frozenset({"HIT", "REVALIDATED", "STALE", "UPDATING"})  # served from the cache's store
MISS_STATUSES = frozenset({"MISS", "EXPIRED", "BYPASS"})  # fetched from the origin and stored
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Current:
    """What the origin says about a track now (in the cache's authorization of this request, or to the client's
    own HEAD): what the cache's copy must match."""

    etag: str | None
    length: int | None


class Verdict(enum.Enum):
    USE = "use"  # the cache's answer is the answer (bytes, or the origin's own refusal passed through)
    FAILOVER = "failover"  # the cache failed: it is marked down, the request goes on without it
    REFRESH = "refresh"  # a stale copy: ask the cache again with the refresh header
    ORIGIN = "origin"  # this request only goes to the origin (still stale after a refresh, another origin)
    REFUSED = "refused"  # 401/403: the origin refused this token; final


def is_loopback(host: str | None) -> bool:
    """The machine itself: localhost, ::1, any of 127.0.0.0/8 in any literal form the resolver accepts
    (``127.1``, ``2130706433``, …: inet_aton's forms, which is how the address is then connected to)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host)).is_loopback
    except OSError:
        return False


def parse_spec(text: str) -> list[list[str]]:
    """``URL|URL;URL`` → groups of base URLs (no trailing slash). Raises ConfigError naming the bad part."""
    groups = []
    for group_text in text.split(";"):
        members = [m.strip() for m in group_text.split("|")]
        if not any(members):  # ";;" or a trailing ";": no group
            continue
        if not all(members):
            raise ConfigError(f"team cache {text!r}: an empty entry beside '|' (a typo?)")
        for member in members:
            check_base_url(member)
        groups.append([m.rstrip("/") for m in members])
    if not groups:
        raise ConfigError(f"team cache {text!r}: no URL")
    return groups


def check_base_url(member: str) -> None:
    try:
        parts = urlsplit(member)
        parts.port  # noqa: B018  # a port that is not a number from 0 to 65535 raises here
    except ValueError as exc:  # an unclosed "[", a port "abc" or "-1": urlsplit's own words
        raise ConfigError(f"team cache {member!r}: not a usable URL ({exc})") from None
    if parts.port == 0 or any(c.isspace() for c in parts.netloc):
        raise ConfigError(f"team cache {member!r}: not a usable URL (a host without spaces, a port from 1 to 65535)")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"team cache {member!r}: must be an http:// or https:// URL (host[:port])")
    if parts.username or parts.password:
        raise ConfigError(f"team cache {parts.hostname}: no user or password in the URL")
    if parts.path not in ("", "/"):
        raise ConfigError(f"team cache {member!r}: the cache serves the music service's paths as they "
                          f"are; give it as scheme://host[:port], without {parts.path!r}")


def plain_http_problem(groups: list[list[str]]) -> str | None:
    """The first cache a bearer token would reach in clear text over the network, as a sentence."""
    for group in groups:
        for base in group:
            parts = urlsplit(base)
            if parts.scheme == "http" and not is_loopback(parts.hostname):
                return (f"team cache {base}: the token would travel over plain http to another machine; use "
                        "https:// (the nginx config's --tls-cert/--tls-key), or allow it explicitly with "
                        "team_cache_allow_plain_http")
    return None


@dataclass
class Endpoint:
    base: str
    down_until: float = 0.0
    reason: str = ""
    stores: bool | None = None  # the last store check: it stores (True), it does not (False), not known (None)
    store_detail: str | None = None  # what the check saw, as a phrase

    @property
    def host(self) -> str:
        return urlsplit(self.base).netloc


@dataclass(frozen=True)
class Answer:
    """What the store check needs of one answer from the cache."""

    status: int
    cache_status: str | None  # the marker header, None when absent
    checked: bool = True  # the answer came from the store check (its header), not from an older configuration


def judge_store_check(first: Answer, second: Answer) -> tuple[bool | None, str | None]:
    """Does the cache store what it fetches? From two answers to one nonce: the second must be a HIT. None when
    the check cannot tell (a configuration without the check: an older one, or not ours)."""
    if not second.checked or second.cache_status is None:
        return None, "its configuration has no store check (generate it again with mixvfs team-cache nginx-config)"
    if second.status == 200 and second.cache_status.upper() in HIT_STATUSES:
        return True, None
    return False, (f"it answers but does not store: a second request of the same thing was HTTP {second.status}, "
                   f"{MARKER} {second.cache_status} (the first HTTP {first.status}, {first.cache_status}); every "
                   "track comes from the music service through it — is its --cache-dir owned by nginx's worker "
                   "user, and is its disk full? (see its error.log)")


@dataclass(frozen=True)
class Route:
    endpoint: Endpoint
    url: str  # the request's URL on the cache: same path and query


class TeamCache:
    def __init__(self, spec: str, *, reset_after: float = DEFAULT_RESET_AFTER,
                 choose: Callable[[list[Endpoint]], Endpoint] | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.groups = [[Endpoint(base) for base in group] for group in parse_spec(spec)]
        self.reset_after = reset_after
        self._choose = choose or random.choice
        self._now = now
        self._lock = threading.Lock()

    @property
    def endpoints(self) -> list[Endpoint]:
        return [e for group in self.groups for e in group]

    def route(self, url: str, *, now: float | None = None) -> Route | None:
        """Where a track request for ``url`` goes: a cache that is up, from the first group that has one;
        None when every cache is down (the request goes to the origin)."""
        at = self._now() if now is None else now
        with self._lock:
            for group in self.groups:
                up = [e for e in group if e.down_until <= at]
                if up:
                    endpoint = self._choose(up)
                    return Route(endpoint, endpoint.base + path_and_query(url))
        return None

    def failed(self, route: Route, reason: str, *, now: float | None = None) -> bool:
        """The cache failed this request: skip it for ``reset_after``. One log line when it goes down (True)."""
        at = self._now() if now is None else now
        endpoint = route.endpoint
        with self._lock:
            was_up = endpoint.down_until <= at
            endpoint.down_until = at + self.reset_after
            endpoint.reason = reason
        if was_up:
            log.warning("team cache %s is down (%s): straight to the origin for %gs", endpoint.host, reason,
                        self.reset_after)
        return was_up

    def judge(self, route: Route, url: str, status: int, headers: Mapping[str, str], *, total: int | None,
              expected: int | None, refreshed: bool, current: Current | None = None) -> Verdict:
        """What to do with the cache's answer. ``headers`` are the cache's own (before any redirect it passed
        on), ``total`` the whole file's length the answer gives, ``expected`` the length the manifest or the
        origin gave earlier (None: unknown), ``current`` what the origin says now (None: not asked)."""
        if headers.get(MARKER) is None:
            self.failed(route, f"an answer without the {MARKER} header: not the team cache")
            return Verdict.FAILOVER
        if status in FAILOVER_STATUSES:
            self.failed(route, f"HTTP {status}")
            return Verdict.FAILOVER
        fronts = headers.get(ORIGIN_HEADER)
        if status == MISDIRECTED or (fronts and origin_of(fronts) != origin_of(url)):
            log.info("team cache %s fronts %s, not %s: straight to the origin", route.endpoint.host,
                     fronts or "another server", origin_of(url))
            return Verdict.ORIGIN
        if status in (401, 403):
            return Verdict.REFUSED
        if not 200 <= status < 300:
            return Verdict.USE  # the origin's own answer (404, 416, …), passed through
        stale = staleness(headers, total, expected, current)
        if stale is None:
            return Verdict.USE
        if refreshed:
            log.warning("team cache %s: still %s after a refresh: straight to the origin", route.endpoint.host,
                        stale)
            return Verdict.ORIGIN
        log.info("team cache %s: %s; asking it to refresh", route.endpoint.host, stale)
        return Verdict.REFRESH

    def stored(self, endpoint: Endpoint, stores: bool | None, detail: str | None) -> None:
        """The result of a store check. One warning when a cache is found not storing (again after it did)."""
        with self._lock:
            was = endpoint.stores
            endpoint.stores, endpoint.store_detail = stores, detail
        if stores is False and was is not False:
            log.warning("team cache %s: %s", endpoint.host, detail)
        elif stores is True and was is False:
            log.info("team cache %s stores again", endpoint.host)

    def state(self, *, now: float | None = None) -> list[dict[str, object]]:
        """Each cache, up or down (with why and for how much longer), and whether it stores: for ``mixvfs
        status``."""
        at = self._now() if now is None else now
        with self._lock:
            return [{"url": e.base, "state": "up" if e.down_until <= at else "down",
                     "reason": e.reason if e.down_until > at else None,
                     "retry_in": round(max(0.0, e.down_until - at), 1),
                     "stores": e.stores, "store_detail": e.store_detail} for e in self.endpoints]


def staleness(headers: Mapping[str, str], total: int | None, expected: int | None,
              current: Current | None = None) -> str | None:
    """Why the cache's copy is not the origin's current one, or None. ``current`` comes from the origin (see
    :class:`Current`);
    ``expected`` (the manifest's or a listing's size, maybe stale itself) counts only when the origin gave no
    length: a track that changed size is the download's business (its rules for a size that changes)."""
    etag = headers.get("ETag")
    if current is not None and current.etag and (etag or "").removeprefix("W/") != current.etag.removeprefix("W/"):
        return f"its copy has ETag {etag}, the origin's is {current.etag}"
    if current is not None and current.length is not None and total is not None:
        return None if total == current.length else f"its copy is {total} bytes, the origin's {current.length}"
    if total is not None and expected is not None and total != expected:
        return f"its copy is {total} bytes where {expected} were expected"
    return None


def relayed(headers: Mapping[str, str]) -> Current | None:
    """What the origin said to the cache's authorization of this request (its current ETag and length), or None
    when the cache did not pass it on (a configuration without it, or no 2xx authorization: ask the origin)."""
    status = headers.get(AUTH_HEADER, "")
    if not (status.isdigit() and 200 <= int(status) < 300):
        return None
    length = headers.get(CURRENT_LENGTH_HEADER, "").strip()
    return Current(headers.get(CURRENT_ETAG_HEADER) or None, int(length) if length.isdigit() else None)


def via(headers: Mapping[str, str]) -> str:
    """Where the bytes of a used cache answer came from: the cache's store (hit) or the origin through it."""
    status = headers.get(MARKER, "").upper()
    if status in HIT_STATUSES:
        return VIA_HIT
    if status in MISS_STATUSES:
        return VIA_MISS
    if status == "PASS":
        return VIA_PASS
    return f"team cache ({MARKER}: {status or 'none'})"


def path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` in one spelling: lower case, the scheme's default port left out, so that
    ``HTTPS://Music.Example:443/`` and ``https://music.example`` are the same origin."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{scheme}://{host}" + ("" if port in (None, DEFAULT_PORTS.get(scheme)) else f":{port}")
