"""Where the cache lives: ``--cache-dir``, else ``$MIXVFS_CACHE_DIR``, else the platform's user cache folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from mixvfs.cache import defaults

DEFAULT_MAX_SIZE = defaults.MAX_SIZE
DEFAULT_MAX_AGE = defaults.MAX_AGE


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


BLOB_DB = Path("blobs") / "cache.db"  # diskcache's database in the store's blob folder


def is_cache(root: Path) -> bool:
    """A cache folder is one a store was opened in: its blob database exists (a store creates it at once,
    so a mount, a preflight or a warm that never downloaded a byte still leaves a cache)."""
    return (root / BLOB_DB).is_file()


def make_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or tighten it: cache contents are the user's business only."""
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
