"""Where the cache lives: ``--cache-dir``, else ``$MIXVFS_CACHE_DIR``, else the platform's user cache folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

DEFAULT_MAX_SIZE = 10 << 30
DEFAULT_MAX_AGE = 30 * 86400.0


def resolve_cache_dir(flag: str | os.PathLike[str] | None) -> Path:
    if flag:
        return Path(flag).expanduser().resolve()
    env = os.environ.get("MIXVFS_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("mixvfs"))


@dataclass(frozen=True)
class CacheLimits:
    """Which cache, and how big and how old its blobs may grow."""

    root: Path
    max_size: int = DEFAULT_MAX_SIZE
    max_age: float = DEFAULT_MAX_AGE
