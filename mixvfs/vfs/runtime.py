"""The composition root: the one place that builds the cache's parts — blob store, source index, HTTP client
(with its token source), fetcher — from the layered settings. ``mixvfs mount`` (in the daemon),
``mixvfs preflight`` and ``cachectl warm`` all open their runtime here, so they share the same retry policy,
the same warnings and the same start-up housekeeping.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from mixvfs.cache.bwlimit import Budget
from mixvfs.cache.concurrency import START
from mixvfs.cache.defaults import QUESTIONS
from mixvfs.cache.errors import CacheError, ConfigError, FetchError
from mixvfs.cache.fetcher import Fetcher, Foreground
from mixvfs.cache.http import HttpClient, install_reaches, origin_of, trust_store_later, warn_if_insecure
from mixvfs.cache.index import SourceIndex
from mixvfs.cache.location import CacheLimits, is_cache, make_private_dir
from mixvfs.cache.origin_wait import OriginWaits
from mixvfs.cache.policy import RuntimeConfig
from mixvfs.cache.store import BlobStore
from mixvfs.cache.team import TeamCache
from mixvfs.cache.token import TokenSource

log = logging.getLogger(__name__)



@dataclass
class Runtime:
    store: BlobStore
    index: SourceIndex
    http: HttpClient
    fetcher: Fetcher
    foreground: Foreground  # the mount's browsing and reading, which background downloads make way for
    tokens: TokenSource | None
    token_error: str | None  # the token source failed (e.g. its command): requests go without a token
    jobs: int
    closing: threading.Event = field(default_factory=threading.Event)

    def watch_team_stores(self, every: float) -> None:
        """With a team cache: check now, then every ``every`` seconds, in the background, whether each cache
        stores what it fetches (a cache whose workers cannot write answers everything from the origin, only
        slower): ``mixvfs status`` and the log say so."""
        if self.http.team is None:
            return

        def watch() -> None:
            while not self.closing.is_set():
                self.http.check_team_stores()
                self.closing.wait(every)

        threading.Thread(target=watch, name="team-store-check", daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.fetcher.close()
        try:
            # Queued downloads never started (the workers left first) still have their empty staging files, and
            # a worker blocked in a stalled read past the close's wait still holds its own: a clean end leaves none.
            self.store.clean_own_staging()
            # The blob committed last is spared by the eviction at commit (its reader needs it); once nothing
            # reads, the cache keeps to its limit.
            self.store.evict_to(self.store.max_size)
        except CacheError as exc:  # the folder gone for good: nothing to tidy, the rest must still close
            log.warning("the cache was not tidied at the end: %s", exc)
        self.http.close()
        self.index.close()
        self.store.close()


def open_cache(limits: CacheLimits, *, create: bool = True) -> tuple[BlobStore, SourceIndex]:
    """The store and the index, or one CacheError line (e.g. "file is not a database"), never a traceback.
    ``create=False`` (the commands that only look): a folder that is not a cache is a ConfigError (a mistyped
    ``--cache-dir`` must not become a new, empty cache that answers "0 blobs")."""
    if not create and not is_cache(limits.root):
        raise ConfigError(f"no cache at {limits.root}")
    try:
        make_private_dir(limits.root)
        store = BlobStore(limits.root, max_size=limits.max_size, max_age=limits.max_age)
        return store, store.index  # the store keeps the index: a blob removed takes its rows with it
    except (OSError, sqlite3.Error) as exc:
        raise CacheError(f"cache folder {limits.root}: cannot open it: {exc}") from None


def distinct_origins(urls: Iterable[str | None]) -> set[str]:
    """The origins of ``urls``. A session's track URLs share one or a few: each ``scheme://authority`` prefix
    (up to the first "/" after "//", which the authority cannot hold) is parsed once, not each of 100 000 URLs."""
    prefixes = set()
    for url in urls:
        if url:
            start = url.find("//")
            end = url.find("/", start + 2) if start >= 0 else -1
            prefixes.add(url if end < 0 else url[:end])
    return {origin_of(prefix) for prefix in prefixes}


def open_runtime(config: RuntimeConfig, *, origins: Iterable[str | None], housekeeping: bool = True,
                 tolerate_token_error: bool = False) -> Runtime:
    """Everything a command needs to read or fill the cache. ``origins``: every URL the token may travel to
    (warned about when it is plain http to another machine). ``housekeeping``: remove dead downloads'
    staging files, expired blobs and the files of refused commits first (commands that download; preflight only
    looks)."""
    install_reaches()  # the library reaches below httpx, each checked (warned about at the start when it fails)
    trust = trust_store_later()  # read while the cache opens
    store, index = open_cache(config.cache)
    if housekeeping:
        for path in store.clean_stale_staging():
            log.info("removed a dead download's leftover %s", path.name)
        store.prune()
        # Only after a refused commit was noted: listing the blob folder opens a folder per blob or so (~20 ms
        # for 2000 blobs, more from a cold disk), too much for every mount start; nor after each commit, where
        # eviction answers from diskcache's running total without reading the table.
        for left in store.sweep_unindexed(if_noted=True):
            log.info("removed %s, a file no cache row named (a commit the cache database refused)", left.filename)
    token_error = None
    try:
        tokens = config.tokens()
    except FetchError as exc:
        if not tolerate_token_error:
            index.close()
            store.close()
            raise
        tokens, token_error = None, exc.reason
    for origin in sorted(distinct_origins(origins)):
        warn_if_insecure(origin, tokens)
    team = TeamCache(config.team_cache, reset_after=config.team_reset_after) if config.team_cache else None
    # A connection for each download and each question in flight: a size or a revalidation never queues for a
    # connection behind downloads (nor a download behind them).
    http = HttpClient(tokens=tokens, stall_timeout=config.stall_timeout, team=team,
                      max_connections=config.jobs + QUESTIONS, waits=OriginWaits(max_wait=config.server_wait_max),
                      ssl_context=trust())
    foreground = Foreground()
    budget = Budget(config.bwlimit) if config.bwlimit else None
    # Through a team cache a track that is there costs one round trip to the origin (the cache's authorization)
    # and no internet bytes: a session the studio holds is latency-bound, and it is gone in the second or two a
    # doubling start from a few downloads would take to measure its way up. So all of --jobs at once from the
    # start; the measurement still steps down when that buys nothing (tracks the cache must fetch).
    fetcher = Fetcher(store, index, http, jobs=config.jobs, retry=config.retry, limits=config.limits,
                      foreground=foreground, budget=budget, adaptive=True,
                      start=config.jobs if team is not None else START)
    return Runtime(store, index, http, fetcher, foreground, tokens, token_error, config.jobs)
