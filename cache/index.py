"""The source index: which digest holds the bytes of a source, and what the server last said about it.

Two kinds of record, JSON text in a diskcache (never pickles; see :class:`mixvfs.cache.store.SafeDisk`):

* ``src:<identity>`` -> ``{"digest", "size", "content_type", "etag", "last_modified"}`` — a source
  identity is the URL plus the version the server gave (ETag, else size); the entry keeps the validators of
  the stored version, so a cached track is revalidated at its first open in each mount;
* ``head:<url>`` -> ``{"size", "etag", "content_type", "magic_ext", "t"}`` — the last HEAD answer, so sizes
  and names are known at mount time even when the server is down.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import diskcache

from mixvfs.cache.store import SafeDisk


@dataclass(frozen=True)
class RemoteInfo:
    """What a HEAD (or the headers of a GET) told us about a URL."""

    size: int | None
    etag: str | None
    content_type: str | None
    magic_ext: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class SourceEntry:
    """A stored version: its blob, and the validators the server gave for it (for revalidation)."""

    digest: str
    size: int
    content_type: str | None
    etag: str | None = None
    last_modified: str | None = None


def identity(url: str, *, etag: str | None, size: int | None) -> str:
    """The cache identity of a remote file version: URL plus ETag, else size."""
    if etag:
        return f"{url}#etag={etag}"
    if size is not None:
        return f"{url}#size={size}"
    return url


class SourceIndex:
    def __init__(self, root: Path) -> None:
        self._db = diskcache.Cache(str(root / "index"), disk=SafeDisk, eviction_policy="none", cull_limit=0)

    def close(self) -> None:
        self._db.close()

    def lookup(self, ident: str) -> SourceEntry | None:
        data = self._get(f"src:{ident}")
        if data is None:
            return None
        return SourceEntry(str(data["digest"]), int(data["size"]), data.get("content_type"), data.get("etag"),
                           data.get("last_modified"))

    def record(self, ident: str, entry: SourceEntry) -> None:
        self._db.set(f"src:{ident}", json.dumps(asdict(entry)))

    def forget(self, ident: str) -> None:
        self._db.delete(f"src:{ident}")

    def remote(self, url: str) -> RemoteInfo | None:
        data = self._get(f"head:{url}")
        if data is None:
            return None
        return RemoteInfo(data.get("size"), data.get("etag"), data.get("content_type"), data.get("magic_ext"),
                          data.get("last_modified"))

    def remember_remote(self, url: str, info: RemoteInfo) -> None:
        self._db.set(f"head:{url}", json.dumps({**asdict(info), "t": time.time()}))

    def sources_by_digest(self) -> dict[str, list[str]]:
        """digest -> source identities that map to it (for ``cachectl ls``)."""
        result: dict[str, list[str]] = {}
        for key in self._db.iterkeys():
            if isinstance(key, str) and key.startswith("src:"):
                data = self._get(key)
                if data is not None:
                    result.setdefault(str(data["digest"]), []).append(key[4:])
        return result

    def _get(self, key: str) -> dict[str, Any] | None:
        raw = self._db.get(key)
        if not isinstance(raw, str):
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None  # a damaged record is a cache miss, never a crash
        return data if isinstance(data, dict) else None
