"""The two small policies every download of a fetcher shares: how failed attempts are retried, and the limits
that bound a download and a stored blob's check. Plain frozen values: the runtime builds them from the settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixvfs.cache import defaults


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
