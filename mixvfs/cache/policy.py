"""The two small policies every download of a fetcher shares: how failed attempts are retried, and the limits
that bound a download and a stored blob's check. Plain frozen values: the runtime builds them from the settings
(``RuntimeConfig``, here too: ``mixvfs mount`` resolves it before it starts a daemon, and needs neither httpx
nor diskcache for that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mixvfs.cache import defaults

if TYPE_CHECKING:  # annotations only: the token runner imports subprocess, which check-export must not load
    from mixvfs.cache.location import CacheLimits
    from mixvfs.cache.token import TokenSource


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures are retried with backoff and jitter, bounded in attempts and in time (stamina)."""

    attempts: int = defaults.RETRIES
    total_timeout: float = 120.0
    wait_initial: float = defaults.RETRY_WAIT
    wait_max: float = 8.0
    wait_jitter: float = defaults.RETRY_WAIT


@dataclass(frozen=True)
class Limits:
    stall_timeout: float = defaults.STALL_TIMEOUT  # seconds without a byte before an attempt counts as stalled
    verify_hash_below: int = 16 << 20  # blobs up to this size are fully re-hashed on open (xxh3: ~ms)


@dataclass(frozen=True)
class RuntimeConfig:
    """Plain values resolved from the settings layers (see :mod:`mixvfs.vfs.commands.config`)."""

    cache: CacheLimits
    jobs: int
    stall_timeout: float
    retries: int
    retry_wait: float
    tokens: Callable[[], TokenSource | None]
    team_cache: str | None = None  # the team cache setting (already checked), or None: straight to the origin
    team_reset_after: float = defaults.TEAM_CACHE_RESET_AFTER
    bwlimit: int = defaults.BWLIMIT  # bytes per second for all downloads together; 0: no cap
    server_wait_max: float = defaults.SERVER_WAIT_MAX

    @property
    def retry(self) -> RetryPolicy:
        # Jitter in proportion to the first wait: a fixed 0.5 s would dwarf a short --retry-wait.
        return RetryPolicy(attempts=max(1, self.retries), wait_initial=self.retry_wait, wait_jitter=self.retry_wait,
                           # a wait the server asked for is spent inside the retries: it must not use them up
                           total_timeout=max(120.0, self.stall_timeout * 4) + self.server_wait_max)

    @property
    def limits(self) -> Limits:
        return Limits(stall_timeout=self.stall_timeout)
