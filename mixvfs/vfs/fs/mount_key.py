"""What names a mount's own files: the mountpoint, never the session's name alone.

One session may be mounted twice at once (a forgotten mount and a new one, two users, two folders); a file
keyed by the session's name would be written by both, and ``mixvfs report MNT1`` would show MNT2's. Every
per-mount file (the default report, the history's entry) is keyed by :func:`mount_key`, and a file name made
from it by :func:`mount_tag`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def mount_key(mountpoint: Path | str) -> str:
    """The mountpoint as one mount is known by: absolute, symlinks resolved (``~/Tracks`` and ``./Tracks``
    are one). Computed before mounting: resolving a live mountpoint from inside libfuse's init would ask the
    daemon itself."""
    return os.path.realpath(mountpoint)


def slug(text: str, *, limit: int = 60, empty: str = "session") -> str:
    """``text`` as a readable part of a file name: letters, digits, ``-`` and ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)[:limit].strip("-") or empty


def mount_tag(key: str) -> str:
    """A short file-name part for the mount at ``key``: its folder's name (readable) and a hash of the whole
    path (two folders of one name in different places are two mounts)."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{slug(os.path.basename(key), limit=40, empty='root')}-{digest}"
