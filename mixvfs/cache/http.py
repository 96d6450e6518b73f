"""The httpx boundary: every httpx exception and every HTTP status becomes one of ours here, and only here
(like httpx's own ``map_httpcore_exceptions``). Bearer auth with a single refresh on 401 is an httpx
auth flow; redirects are followed by httpx, which drops Authorization when the origin changes.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import os
import secrets
import socket
import ssl
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

from mixvfs.cache import receive_buffer
from mixvfs.cache import team as team_policy
from mixvfs.cache.decoding import check_decodable, decoded
from mixvfs.cache.defaults import CONNECT_TIMEOUT, JOBS, KEEPALIVE_EXPIRY, STALL_TIMEOUT
from mixvfs.cache.errors import (
    AuthRejected,
    BadBody,
    Cancelled,
    CertificateNotTrusted,
    ConfigError,
    FetchError,
    NetworkError,
    NotAudio,
    PermanentHttpError,
    ServerBusy,
    ServerUnreachable,
    StallTimeout,
    TransientError,
)
from mixvfs.cache.origin_silence import OriginSilences
from mixvfs.cache.origin_wait import OriginWaits
from mixvfs.cache.remote import RemoteInfo
from mixvfs.cache.team import ORIGIN_HEADER, REFRESH_HEADER, VIA_ORIGIN, TeamCache, Verdict
from mixvfs.cache.token import TokenSource

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# httpcore reads an HTTP/1.1 body 64 KiB per recv() and httpx re-chunks it with extra copies; on loopback that
# capped one stream at ~200 MB/s. One recv of up to 1 MiB and the chunks as they come (no re-chunking) give
# ~2.5x (measured: BENCHMARKS.md, "download path"). READ_NUM_BYTES is httpcore's per-connection read size.


def read_bigger_chunks(connection: type = httpcore.HTTP11Connection, size: int = CHUNK,
                       head: int = receive_buffer.HEAD_READ) -> bool:
    """Make httpcore's HTTP/1.1 connections ask for ``size`` bytes per ``recv`` of a body (``head`` for the
    headers). ``READ_NUM_BYTES`` is private: if a new httpcore drops or changes it, downloads still work, only
    slower, so say so loudly instead of silently patching nothing (tests/unit/test_library_reaches.py checks it
    applies)."""
    if not isinstance(getattr(connection, "READ_NUM_BYTES", None), int):
        log.warning("httpcore %s: %s.READ_NUM_BYTES is gone; downloads read 64 KiB per recv, about 2.5x slower "
                    "(mixvfs needs an update for this httpcore)", httpcore.__version__, connection.__name__)
        return False
    connection.READ_NUM_BYTES = receive_buffer.ReadSize(size, head)  # type: ignore[attr-defined]
    return True


@functools.cache
def install_reaches() -> None:
    """Apply the three checked reaches below httpx, once per process: httpcore's read size, h11's receive buffer
    without copies, and no reuse of a connection holding bytes no request asked for. Each warns when its library
    is not the one it was written for (the pins in pyproject). Called at the runtime's start and by every
    :class:`HttpClient` before its first connection; importing this module changes no library."""
    read_bigger_chunks()
    receive_buffer.install()
    receive_buffer.refuse_leftovers()


ERROR_BODY_TYPES = frozenset({"text/html", "text/plain", "application/json", "application/xml", "text/xml"})


def looks_like_error_body(content_type: str | None) -> bool:
    """A 2xx of one of these types is a server's (or CDN's) error page, not audio: caching it as a track
    would serve garbage forever. Structured-syntax variants (application/problem+json, …+xml) count too."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media in ERROR_BODY_TYPES or media.endswith(("+json", "+xml"))


def origin_of(url: str) -> str:
    """``scheme://host:port`` of a URL (no path, no query: they may hold secrets)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def warn_if_insecure(url: str, tokens: TokenSource | None) -> bool:
    """Warn when a token would travel in clear text to another machine. Returns True if it warned."""
    parts = urlsplit(url)
    loopback = team_policy.is_loopback(parts.hostname)
    if tokens is not None and tokens.configured and parts.scheme == "http" and not loopback:
        log.warning("sending the token over plain http to %s: anyone on the network can read it", parts.hostname)
        return True
    return False


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer``; on 401, one refresh of the token and one retry — never a storm."""

    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token, generation = self.tokens.current()
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and self.tokens.configured:
            fresh = self.tokens.refresh(generation)
            if fresh:
                request.headers["Authorization"] = f"Bearer {fresh}"
            yield request


@dataclass(frozen=True)
class Body:
    """An open GET response: where it starts, how long the whole file is, and its (decoded) chunks."""

    start: int
    total: int | None
    etag: str | None
    last_modified: str | None
    content_type: str | None
    encoding: str | None  # the Content-Encoding the server applied anyway (chunks are decoded)
    chunks: Iterator[bytes]
    via: str | None = None  # with a team cache: where the bytes came from (the origin, or the cache: hit/miss)


class Freshness(enum.Enum):
    UNCHANGED = "unchanged"  # the server confirmed the stored version (304, or the same strong validator)
    CHANGED = "changed"  # the server has another version now
    UNKNOWN = "unknown"  # the server gives nothing to compare (no validator, same size)


def is_strong(etag: str | None) -> bool:
    """A strong ETag: the only kind RFC 9110 allows in If-Range, and the only proof of identical bytes."""
    return bool(etag) and not str(etag).startswith("W/")


def trust_store_later() -> Callable[[], ssl.SSLContext]:
    """httpx's own TLS context (``httpx.create_ssl_context()``: certifi's bundle, or the ``SSL_CERT_FILE`` or
    ``SSL_CERT_DIR`` of the environment), made from now on a thread of its own; the call returned waits for it and
    raises what making it raised (a trust store that cannot be read: a :class:`ConfigError` naming it). Reading
    the bundle costs 20-30 ms, nearly all of it inside OpenSSL with the GIL released: a command that opens the
    cache meanwhile (a mount's start) does not wait for it."""
    made: list[ssl.SSLContext | Exception] = []
    done = threading.Event()

    def make() -> None:
        try:
            made.append(httpx.create_ssl_context())
        except OSError as exc:  # ssl.SSLError too: a file that is not a certificate
            made.append(ConfigError(trust_store_problem(exc)))
        except Exception as exc:  # handed to the caller, as if httpx had raised it there
            made.append(exc)
        finally:
            done.set()

    threading.Thread(target=make, name="trust-store", daemon=True).start()

    def context() -> ssl.SSLContext:
        done.wait()
        if isinstance(made[0], Exception):
            raise made[0]
        return made[0]

    return context


def trust_store_problem(exc: OSError) -> str:
    """One line for a trust store that cannot be read (OpenSSL's own error names no file)."""
    named = [f"{name}={os.environ[name]}" for name in ("SSL_CERT_FILE", "SSL_CERT_DIR") if os.environ.get(name)]
    where = " and ".join(named) if named else "the certificates httpx trusts by default (certifi)"
    why = ("not certificates OpenSSL can read" + (f" ({exc.reason})" if exc.reason else "")
           if isinstance(exc, ssl.SSLError)
           else exc.strerror or str(exc))
    return f"cannot read the TLS certificates to trust from {where}: {why}"


class HttpClient:
    def __init__(
        self,
        *,
        tokens: TokenSource | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
        max_connections: int = JOBS,
        team: TeamCache | None = None,
        waits: OriginWaits | None = None,
        silences: OriginSilences | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context``: what servers are verified with (default: httpx's, made here)."""
        install_reaches()  # a client of ours never runs without them: the stray-bytes one guards correctness
        self.tokens = tokens
        self.team = team  # track byte requests (GET, and HEAD for sizes) go through it when set
        # Every request, whoever makes it (a download, a size probe, a revalidation, the auth flow's retry, a
        # redirect), passes these hooks: an origin that said "wait" is asked nothing until its time is up.
        self.waits = waits or OriginWaits()
        # ... and an origin that let a request go unanswered is asked nothing until a check finds it answers.
        self.silences = silences or OriginSilences()
        # Told the seconds of each new TCP connection's handshake (one round trip, measured before any answer):
        # the download controller's first word on how long the link is (cache/concurrency.py).
        self.on_handshake: Callable[[float], None] | None = None
        self._handshakes = threading.local()
        # Every TCP connection this client opened (httpcore's network streams, learned from its trace events),
        # for :meth:`cut_connections`: a thread waiting for an answer is woken only by its socket's shutdown.
        self._streams: weakref.WeakSet[object] = weakref.WeakSet()
        self._streams_lock = threading.Lock()
        self._cut = False
        # One connection pool, shared by the client and the direct requests below.
        verify = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._transport = httpx.HTTPTransport(
            verify=verify,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                                keepalive_expiry=KEEPALIVE_EXPIRY))
        # A pool that keeps nothing: a request sent through it always opens a connection of its own (a download
        # crawling on its old one at the export's end: cache/tail.py).
        self._fresh_transport = httpx.HTTPTransport(
            verify=verify,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=0))
        self._client = httpx.Client(
            event_hooks={"request": [self._before_request], "response": [self._after_response]},
            auth=BearerAuth(tokens) if tokens is not None and tokens.configured else None,
            follow_redirects=True,
            timeout=httpx.Timeout(stall_timeout, connect=connect_timeout),
            transport=self._transport,
            headers={"Accept-Encoding": "identity", "User-Agent": "mixvfs/0.1"},
        )
        self._timeout = self._client.timeout.as_dict()
        # Direct requests skip what a track's GET at its origin does not use: with a proxy from the environment
        # (which the client routes by URL) every request goes through the client.
        self._direct = not any(scheme != "no" for scheme in urllib.request.getproxies())  # no_proxy alone: none
        # Origins asked directly: those whose last answer through the client came without a redirect or a cookie.
        self._direct_origins: set[str] = set()

    def close(self) -> None:
        self._client.close()
        self._fresh_transport.close()

    def cut_connections(self) -> int:
        """The process is stopping: shut every connection down, so that each request under way ends now — one
        waiting for a server that sends no headers would otherwise hold its thread (a download's worker, a
        ``stat``) for the stall timeout, and the stop with it. No request is sent after this. Returns how many
        connections were open."""
        with self._streams_lock:
            self._cut = True
            streams = list(self._streams)
        for stream in streams:
            sock = stream.get_extra_info("socket")  # type: ignore[attr-defined]
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):  # already closed by its own thread
                    sock.shutdown(socket.SHUT_RDWR)
        return len(streams)

    def check_team_stores(self) -> None:
        """Ask each team cache whether it stores what it fetches (two small requests, no token: the check is
        nginx's own answer, never the origin's) and record it. A cache that cannot be reached is left as it
        was: being down is the routing's business."""
        if self.team is None:
            return
        for endpoint in self.team.endpoints:
            # Twice before calling it down: a down cache is routed around for minutes, and one connection the cache
            # closed without an answer (a worker restarting, a kept connection it timed out) says little.
            for attempt in range(2):
                url = f"{endpoint.base}{team_policy.STORE_CHECK_PATH}?n={secrets.token_hex(16)}"  # a fresh nonce
                try:
                    with httpx_errors(url):
                        answers = [self._client.get(url, auth=None) for _ in range(2)]
                    first, second = (team_policy.Answer(r.status_code, r.headers.get(team_policy.MARKER),
                                                        team_policy.STORE_CHECK_HEADER in r.headers) for r in answers)
                except TransientError as exc:  # down (or its certificate refused): shown as down, with why
                    if attempt == 0:
                        log.info("team cache %s: store check: %s; asking once more", endpoint.host, exc.reason)
                        continue
                    self.team.failed(team_policy.Route(endpoint, url), exc.reason)
                except FetchError as exc:
                    log.info("team cache %s: store check not made: %s", endpoint.host, exc.reason)
                else:
                    self.team.stored(endpoint, *team_policy.judge_store_check(first, second))
                break

    def _before_request(self, request: httpx.Request) -> None:
        url = str(request.url)
        if self._cut:
            raise Cancelled("not sent: the mount is stopping")
        self.waits.check(url)  # raises (nothing is sent) while the origin's wait runs
        self.silences.before(url)  # raises while the origin is silent, unless this request is the check
        _awaiting.request = (self, url)  # until its headers arrive (httpx_errors: its end without them)
        request.extensions["trace"] = self._trace  # httpcore's events for this request (httpx's "trace")

    def _trace(self, event: str, info: dict[str, object]) -> None:
        """httpcore calls this in the request's thread: a new connection's TCP connect began, or ended."""
        if event == "connection.connect_tcp.started":
            self._handshakes.began = time.monotonic()
        elif event == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            if stream is not None:
                with self._streams_lock:
                    self._streams.add(stream)
                    cut = self._cut
                if cut:  # made while the stop cut the others: cut too
                    self.cut_connections()
            began = getattr(self._handshakes, "began", None)
            if began is not None and self.on_handshake is not None:
                self.on_handshake(time.monotonic() - began)

    def _after_response(self, response: httpx.Response) -> None:
        _awaiting.request = None
        self.silences.answered(str(response.request.url))
        seconds = self.waits.heard(str(response.request.url), response.status_code,
                                   response.headers.get("Retry-After"), response.headers.get("Date"))
        if seconds is not None:  # converted once, here: check_status quotes it
            response.extensions[WAIT_EXTENSION] = seconds

    def head(self, url: str, headers: dict[str, str] | None = None) -> RemoteInfo:
        """A HEAD: for a size (no ``headers``) through the team cache when one is set; a conditional one
        (revalidation: is the stored version still the origin's?) always at the origin."""
        with httpx_errors(url), contextlib.ExitStack() as stack:
            if headers:
                response = self._client.head(url, headers=headers)
            else:
                response, _via, _route = self._send("HEAD", url, {}, stack)
                # A HEAD's answer has no body, but h11 calls the exchange done only once asked for its end:
                # closed unread, the connection was dropped, and every size asked cost a new TCP handshake.
                response.read()
        if response.status_code == 304:
            return NOT_MODIFIED
        check_status(response, url)
        return remote_info(response, url)

    def probe(self, url: str, headers: dict[str, str] | None = None) -> RemoteInfo:
        """What the server says about ``url`` without sending the body: HEAD, or — when HEAD is not
        supported (405, 501) or gives no usable size — a one-byte ranged GET, whose ``Content-Range``
        carries the total. ``headers`` may make it conditional (NOT_MODIFIED for a 304)."""
        try:
            info = self.head(url, headers)
        except FetchError as exc:
            if exc.status not in HEAD_UNSUPPORTED:
                raise
            return self._ranged_info(url, headers or {})
        if info.size is not None or info is NOT_MODIFIED:
            return info
        ranged = self._ranged_info(url, headers or {})
        return ranged if ranged.size is not None or ranged is NOT_MODIFIED else info

    def revalidate(self, url: str, etag: str | None, last_modified: str | None, size: int) -> Freshness:
        """Is the stored version (these validators, this size) still the server's? One conditional
        request: 304 = unchanged."""
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        try:
            info = self.probe(url, headers)
        except FetchError as exc:
            if exc.status == 416:
                # Not one byte to give (its HEAD had no usable size, its one-byte GET was refused): the server's
                # file is empty now, which no stored track is. Changed: the download that follows says why it
                # fails, and the stored version is never served as if the server had confirmed it.
                return Freshness.CHANGED
            raise
        if info is NOT_MODIFIED:
            return Freshness.UNCHANGED
        if info.size is not None and info.size != size:
            return Freshness.CHANGED
        if etag and info.etag:
            # Weak comparison is enough here: a 304 would have come for an equal strong one.
            same = info.etag.removeprefix("W/") == etag.removeprefix("W/")
            return Freshness.UNCHANGED if same else Freshness.CHANGED
        if last_modified and info.last_modified:
            return Freshness.UNCHANGED if info.last_modified == last_modified else Freshness.CHANGED
        return Freshness.UNKNOWN

    def _ranged_info(self, url: str, headers: dict[str, str]) -> RemoteInfo:
        """Headers of ``GET Range: bytes=0-0`` (the body is not read); NOT_MODIFIED for a 304."""
        with httpx_errors(url), contextlib.ExitStack() as stack:
            if headers:  # conditional: at the origin
                response = stack.enter_context(self._client.stream("GET", url, headers={"Range": "bytes=0-0",
                                                                                         **headers}))
            else:
                response, _via, _route = self._send("GET", url, {"Range": "bytes=0-0"}, stack)
            if response.status_code == 304:
                return NOT_MODIFIED
            check_status(response, url)
            info = remote_info(response, url)
            if response.status_code == 206 and not encoding_of(response):
                _start, total = body_range(response)
                info = RemoteInfo(total or None, info.etag, info.content_type, None, info.last_modified)
            return info

    def first_bytes(self, url: str, count: int) -> bytes:
        """The first ``count`` bytes (a ranged GET), for telling the format by magic bytes."""
        with self.get(url, start=0, end=count - 1) as body:
            data = b""
            for chunk in body.chunks:
                data += chunk
                if len(data) >= count:
                    break
            return data[:count]

    @contextlib.contextmanager
    def get(
        self, url: str, *, start: int = 0, end: int | None = None, if_range: str | None = None,
        size: int | None = None, new_connection: bool = False,
    ) -> Iterator[Body]:
        """Stream ``url`` from ``start``. ``Body.start`` says where the body really starts: 0 when the
        server ignores the range (or If-Range no longer matches), earlier than asked when it rounds
        ranges down, and always 0 for a body the server encoded anyway (the chunks are decoded).
        ``size``: the length the manifest or the origin gave, which a team cache's copy must have.
        ``new_connection``: on a connection opened for this request, when asked at the origin directly."""
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
            if if_range and is_strong(if_range):  # RFC 9110 13.1.5: a weak validator never matches
                headers["If-Range"] = if_range
        with httpx_errors(url), contextlib.ExitStack() as stack:
            response, via, route = self._send("GET", url, headers, stack, expected=size, new_connection=new_connection)
            check_status(response, url)
            content_type = response.headers.get("Content-Type")
            if looks_like_error_body(content_type):
                raise NotAudio(f"the server answered {response.status_code} with a {content_type} page "
                               "instead of audio")
            encoding = encoding_of(response)
            if encoding is None:
                body_start, total = body_range(response)
                # No chunk size: httpx would buffer up to it and lose the buffer when the body is cut off,
                # so the resume would ask again for bytes already received (and readers would wait for them).
                chunks = response.iter_raw()
            else:
                if response.status_code == 206:
                    raise NetworkError(f"the server sent an encoded ({encoding}) part of the file; "
                                       "it cannot be decoded on its own")
                check_decodable(encoding)
                # Decoded here, not by httpx, which stops at a gzip body's first member and never checks that
                # a stream ended (cache/decoding.py). The lengths the server sent are of the encoded bytes.
                body_start, total = 0, None
                chunks = decoded(response.iter_raw(), encoding)
            yield Body(body_start, total, response.headers.get("ETag"), response.headers.get("Last-Modified"),
                       content_type, encoding, self._team_chunks(wrap_chunks(chunks, str(response.url)), route), via)

    def _team_chunks(self, chunks: Iterator[bytes], route: team_policy.Route | None) -> Iterator[bytes]:
        """A body through the team cache that stalls or breaks marks the cache down at once (one log line):
        the download's retry then resumes straight at the origin, instead of waiting on a frozen cache again."""
        if route is None or self.team is None:
            yield from chunks
            return
        try:
            yield from chunks
        except TransientError as exc:
            self.team.failed(route, exc.reason)
            raise

    def _send(self, method: str, url: str, headers: dict[str, str], stack: contextlib.ExitStack, *,
              expected: int | None = None, new_connection: bool = False,
              ) -> tuple[httpx.Response, str | None, team_policy.Route | None]:
        """A track request (its response open in ``stack``) and where the answer came from: through the team
        cache when one is set and up, else — or when the cache fails or stays stale — from the origin.
        Errors of the cache's own requests end here; the origin's are the caller's (``httpx_errors``)."""
        refreshed = False
        current: team_policy.Current | None = None  # the origin's own validators, asked once per request
        # Each cache at most once, plus the refresh: a tiny reset_after must not make a loop of a refusing cache.
        tries = len(self.team.endpoints) + 1 if self.team is not None else 0
        while tries > 0 and self.team is not None and (route := self.team.route(url)) is not None:
            tries -= 1
            attempt = contextlib.ExitStack()
            extra = {ORIGIN_HEADER: team_policy.origin_of(url), **({REFRESH_HEADER: "1"} if refreshed else {})}
            try:
                with httpx_errors(route.url):
                    response = attempt.enter_context(self._client.stream(method, route.url,
                                                                         headers={**headers, **extra}))
                first = cache_answer(response, route.url)
            except TransientError as exc:  # cannot connect, timed out, cut off: the cache is down
                attempt.close()
                self.team.failed(route, exc.reason)
                continue
            if method == "GET" and current is None and 200 <= response.status_code < 300:
                # Bytes are coming: what are the origin's current ones? What it told the cache's authorization
                # of this request, else its own answer (the origin's errors are ours).
                current = team_policy.relayed(first.headers)
                try:
                    current = current or self._origin_now(url)
                except BaseException:
                    attempt.close()
                    raise
            verdict = self.team.judge(route, url, first.status_code, first.headers, total=answer_total(response),
                                      expected=expected, refreshed=refreshed, current=current)
            if verdict is Verdict.USE:
                stack.push(attempt.pop_all())
                return response, team_policy.via(first.headers), route
            attempt.close()
            if verdict is Verdict.REFUSED:
                raise AuthRejected(f"the server refused this token (HTTP {first.status_code} "
                                   f"{first.reason_phrase}, asked through the team cache {route.endpoint.host})",
                                   first.status_code)
            if verdict is Verdict.REFRESH:
                refreshed = True
            elif verdict is Verdict.ORIGIN:
                break
        via = VIA_ORIGIN if self.team is not None else None
        direct = self._direct_request(method, url, headers, new_connection=new_connection)
        if direct is not None:
            stack.callback(direct.close)
            return direct, via, None
        response = stack.enter_context(self._client.stream(method, url, headers=headers))
        if self._direct and 200 <= response.status_code < 300 and not response.history and not self._client.cookies:
            self._direct_origins.add(origin_of(url))
        return response, via, None

    def _direct_request(self, method: str, url: str, headers: dict[str, str], *,
                        new_connection: bool = False) -> httpx.Response | None:
        """A request at the origin straight through the connection pool (httpx's transport API), skipping the
        client's per-request work (the URL merged, the auth and redirect flows as generators, the cookie jar
        read and written: about a sixth of the daemon's GIL time per 1 MiB track, BENCHMARKS.md, item 4, third
        round). The same hooks, headers, token, refresh on 401 and timeouts as the client's. None: ask through
        the client — an origin that redirects (httpx follows, dropping the token for another origin), a server
        that set a cookie, a proxy from the environment; and the first request to each origin, which tells."""
        if origin_of(url) not in self._direct_origins or self._client.cookies:
            return None
        token, generation = (None, None) if self.tokens is None or not self.tokens.configured else self.tokens.current()
        response = self._direct_once(method, url, headers, token, new_connection=new_connection)
        if response is None or response.status_code != 401 or generation is None:
            return response
        try:  # as the auth flow does: read, so that the connection serves the retry
            response.read()
        finally:
            response.close()
        assert self.tokens is not None
        # One refresh of the token and one retry, as BearerAuth does: never a storm.
        return self._direct_once(method, url, headers, self.tokens.refresh(generation) or token,
                                 new_connection=new_connection)

    def _direct_once(self, method: str, url: str, headers: dict[str, str], token: str | None, *,
                     new_connection: bool = False) -> httpx.Response | None:
        merged = httpx.Headers(self._client.headers)
        merged.update(headers)
        if token:
            merged["Authorization"] = f"Bearer {token}"
        request = httpx.Request(method, url, headers=merged, extensions={"timeout": self._timeout})
        hooks = self._client.event_hooks  # the client's own (_before_request, _after_response), as it calls them
        for hook in hooks["request"]:
            hook(request)
        response = (self._fresh_transport if new_connection else self._transport).handle_request(request)
        response.request = request
        try:
            for hook in hooks["response"]:
                hook(response)
            if response.has_redirect_location:  # asked again through the client, which follows it
                self._direct_origins.discard(origin_of(url))
                response.close()
                return None
            if "set-cookie" in response.headers:
                self._client.cookies.extract_cookies(response)  # kept: the client sends it from now on
        except BaseException:
            response.close()
            raise
        return response


    def _origin_now(self, url: str) -> team_policy.Current:
        """The origin's current ETag and length of ``url``, from the origin itself, for a team cache that does
        not pass on its authorization's answer (never from anything the cache kept, which may be as old as its
        copy): one HEAD, no bytes; a one-byte ranged GET for an origin without HEAD."""
        with httpx_errors(url):
            response = self._client.head(url)
            if response.status_code in HEAD_UNSUPPORTED:
                with self._client.stream("GET", url, headers={"Range": "bytes=0-0"}) as ranged:
                    check_status(ranged, url)
                    length = answer_total(ranged) if ranged.status_code == 206 else None
                    return team_policy.Current(ranged.headers.get("ETag"), length)
        check_status(response, url)
        return team_policy.Current(response.headers.get("ETag"), answer_total(response))


NOT_MODIFIED = RemoteInfo(None, None, None)
HEAD_UNSUPPORTED = frozenset({405, 501})  # Method Not Allowed, Not Implemented: ask with a ranged GET


def remote_info(response: httpx.Response, url: str) -> RemoteInfo:
    content_type = response.headers.get("Content-Type")
    if looks_like_error_body(content_type):  # a maintenance page: its length is not the track's size
        raise NotAudio(f"the server answered {response.status_code} with a {content_type} page instead of audio")
    # An encoded answer's Content-Length is the encoded size, never the track's; a track is never empty, so a
    # length of 0 says nothing (a stat showing 0 would let a copier make an empty file without reading).
    size = None if encoding_of(response) else content_length(response) or None
    return RemoteInfo(size=size, etag=response.headers.get("ETag"), content_type=content_type,
                      last_modified=response.headers.get("Last-Modified"))


def encoding_of(response: httpx.Response) -> str | None:
    """The content coding the server applied (we ask for identity, but servers and CDNs compress anyway)."""
    codings = [c.strip().lower() for c in response.headers.get("Content-Encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    return ", ".join(codings) or None


def wrap_chunks(chunks: Iterator[bytes], url: str) -> Iterator[bytes]:
    # Errors raised while the body streams come out of the generator, outside the `with` above.
    with httpx_errors(url):
        yield from chunks


def cache_answer(response: httpx.Response, cache_url: str) -> httpx.Response:
    """The team cache's own answer: the last one from the cache itself. Not simply the first of the history,
    which also holds the 401 that the token refresh answered (its retry is the answer), and not a CDN's
    answer after a redirect the cache passed on (it carries no marker)."""
    chain = [*response.history, response]
    return next((r for r in reversed(chain) if origin_of(str(r.url)) == origin_of(cache_url)), chain[0])


def answer_total(response: httpx.Response) -> int | None:
    """The whole file's length a 2xx answer gives (None when it cannot be told, e.g. an encoded body)."""
    if not 200 <= response.status_code < 300 or encoding_of(response):
        return None
    return body_range(response)[1]


def body_range(response: httpx.Response) -> tuple[int, int | None]:
    """(offset of the first body byte, size of the whole file) from a 200 or 206."""
    if response.status_code == 206:
        value = response.headers.get("Content-Range", "")
        try:
            _unit, _, rest = value.partition(" ")
            span, _, total = rest.partition("/")
            first_text, _, last_text = span.partition("-")
            first, last = int(first_text), int(last_text)
            size = None if total == "*" else int(total)
        except ValueError as exc:
            raise NetworkError(f"the server sent an unreadable Content-Range {value!r}") from exc
        length = content_length(response)
        if length is not None and length != last - first + 1:
            # The body would end (by its Content-Length) before or after the range it claims: never the rest.
            raise NetworkError(f"the server sent Content-Range {value!r} with Content-Length {length}")
        return first, size
    return 0, content_length(response)


def content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


WAIT_EXTENSION = "mixvfs.server_wait"  # seconds a 429/503 asked to wait, set by HttpClient._after_response
NO_TOKEN_HINT = "set MIXVFS_TOKEN, --token-file or --token-command"


def check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status < 300:
        return
    what = f"HTTP {status} {response.reason_phrase}".strip()
    if status in (401, 403):
        final = str(response.url)
        if origin_of(final) != origin_of(url):
            # Redirected to another origin (a CDN), which never sees our token: what it refuses is the
            # URL it was given, typically a signed URL that has expired. Not a token problem.
            host = urlsplit(final).netloc.rpartition("@")[2]
            raise PermanentHttpError(f"the CDN host {host} refused the request ({what}): "
                                     "a signed URL may have expired", status)
        if "Authorization" not in response.request.headers:
            raise AuthRejected(f"the server asks for a token ({what}) and none is configured: "
                               f"{NO_TOKEN_HINT}", status)
        raise AuthRejected(f"token rejected by the server ({what})", status)
    if status == 429 or status >= 500:
        seconds = response.extensions.get(WAIT_EXTENSION)
        asked = "" if seconds is None else (f" and asked to wait {seconds:.0f} s "
                                            f"(Retry-After: {response.headers.get('Retry-After')})")
        raise ServerBusy(f"the server answered {what}{asked}", status,
                         wait_url=None if seconds is None else str(response.url))
    if status == 416:
        # Content-Range "bytes */N" says how long the file really is: a resume past it means the body
        # said more bytes than the file has (or the file shrank): say that, not only "refused".
        length = response.headers.get("Content-Range", "").rpartition("/")[2]
        asked = response.request.headers.get("Range", "")
        shorter = f": the file is {length} bytes, {asked} asked beyond it" if length.isdigit() else ""
        raise PermanentHttpError(f"the server refused the byte range ({what}){shorter}", status)
    raise PermanentHttpError(f"the server answered {what}", status)


# The request this thread sent whose answer (response headers) has not come yet, and the silences to tell how it
# ended: set by HttpClient's request hook, cleared by its response hook, or below when it ends without an answer.
_awaiting = threading.local()


def _tell_silences(exc: BaseException) -> bool:
    """Tell the silences how the request awaiting its answer ended; True when the stop cut it (nothing to tell)."""
    pending = getattr(_awaiting, "request", None)
    if pending is None:
        return False
    _awaiting.request = None
    client, url = pending
    if client._cut:  # the process is stopping: its connection was shut down, the server said nothing
        return True
    if isinstance(exc, httpx.ReadTimeout | httpx.ConnectTimeout):  # nothing came back within the timeout
        client.silences.unanswered(url, "connect timeout" if isinstance(exc, httpx.ConnectTimeout)
                                   else "stall timeout")
    else:  # refused, reset, closed: the server (or the network) said something
        client.silences.answered(url)
    return False


@contextlib.contextmanager
def httpx_errors(url: str) -> Iterator[None]:
    """Translate httpx's exceptions into ours. The URL's host is named; query strings (maybe secrets) not. The
    httpx error stays the cause, so the log's cause chain shows what the network said."""
    host = urlsplit(url).netloc or url
    try:
        try:
            yield
        except (httpx.HTTPError, httpx.StreamError) as exc:
            if _tell_silences(exc):
                raise Cancelled("the mount is stopping: the request was cut before the server answered") from exc
            raise
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        if (why := certificate_failure(exc)) is not None:
            raise CertificateNotTrusted(f"certificate not trusted: {host} ({why})") from exc
        raise ServerUnreachable(f"server unreachable: cannot connect to {host} ({short(exc)})") from exc
    except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
        raise StallTimeout(f"timed out: no data from {host} within the stall timeout ({short(exc)})") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError) as exc:
        raise NetworkError(f"network error talking to {host}: {short(exc)}") from exc
    except httpx.TooManyRedirects as exc:
        raise PermanentHttpError(f"too many redirects from {host}", 310) from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise PermanentHttpError(f"bad URL for {host}: {short(exc)}", 0) from exc
    except httpx.DecodingError as exc:  # before HTTPError, its base class
        raise BadBody(f"the server sent an encoded body that does not decode: {short(exc)}") from exc
    except httpx.HTTPError as exc:
        raise NetworkError(f"HTTP error talking to {host}: {short(exc)}") from exc
    except httpx.StreamError as exc:
        raise NetworkError(f"HTTP stream error from {host}: {short(exc)}") from exc


def certificate_failure(exc: BaseException) -> str | None:
    """Why the TLS certificate was refused, when that is what ended the connection (httpx keeps the ssl
    error in the cause chain); None for every other connection failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or short(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "…"
