"""The source index: which digest holds the bytes of a source, and what the server last said about it.

Two kinds of record, JSON values in a diskcache (:class:`mixvfs.cache.disk.JsonDisk`, never pickles):

* ``src:<identity>`` -> ``{"digest", "size", "content_type", "etag", "last_modified"}`` — a source
  identity is the URL plus the version the server gave (ETag, else size); the entry keeps the validators of
  the stored version, so a cached track is revalidated at its first open in each mount. Each row is tagged
  with its digest, so removing a blob removes its rows in one ``evict(tag)`` (:meth:`SourceIndex.forget_digest`,
  called by the blob store whenever it removes a blob);
* ``head:<url>`` -> ``{"size", "etag", "content_type", "magic_ext", "last_modified"}`` — the last HEAD
  answer, so sizes and names are known at mount time even when the server is down. Rows not refreshed for
  ``max_age`` (diskcache's ``store_time``) are dropped by :meth:`SourceIndex.prune`: the same rule as
  blobs, unused that long.

The index stays bounded: ``src:`` rows leave with their blob, ``head:`` rows with age.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mixvfs.cache.disk import CheckedCache, JsonDisk
from mixvfs.cache.folder import CacheFolder, cache_errors
from mixvfs.cache.remote import RemoteInfo

SRC = "src:"
HEAD = "head:"


@dataclass(frozen=True)
class SourceEntry:
    """A stored version: its blob, and the validators the server gave for it (for revalidation)."""

    digest: str
    size: int
    content_type: str | None
    etag: str | None = None
    last_modified: str | None = None


class IndexCache(CheckedCache):
    COLUMNS = frozenset({"key", "raw", "tag", "store_time"})

    def rows(self) -> list[tuple[str, str | None, float]]:
        """Every row's key, tag and time of writing, in one query (the sweep's input)."""
        rows = self._query("SELECT key, tag, store_time FROM Cache WHERE raw = 1")
        return [(str(key), tag if isinstance(tag, str) else None, float(stored)) for key, tag, stored in rows]


def open_index(path: str) -> IndexCache:
    # tag_index: `evict(digest)` finds a blob's rows through an index, not a table scan.
    return IndexCache(path, disk=JsonDisk, eviction_policy="none", cull_limit=0, tag_index=True)


class SourceIndex:
    def __init__(self, root: Path, folder: CacheFolder | None = None) -> None:
        """The index in ``root/index``; ``folder``: the cache folder it lives in, watched for removal (the
        blob store's), else its own."""
        self._live = (folder or CacheFolder(root)).database("index", open_index)

    @property
    def _db(self) -> IndexCache:
        return self._live.get()

    def close(self) -> None:
        self._live.close()

    # -- sources ---------------------------------------------------------------------------------------

    @cache_errors("looking up a source")
    def lookup(self, ident: str) -> SourceEntry | None:
        data = self._get(SRC + ident)
        return None if data is None else entry_of(data)

    @cache_errors("reading the index")
    def source_idents(self) -> set[str]:
        """Every source identity the index maps, in one query: a mount of 100 000 tracks asks this once
        instead of looking each track up (most are not cached)."""
        # Keys "src:..." sort between "src:" and "src;" (";" follows ":"): a range on the key index.
        rows = self._db._query("SELECT key FROM Cache WHERE raw = 1 AND key >= ? AND key < ?", (SRC, "src;"))
        return {str(key)[len(SRC):] for (key,) in rows}

    @cache_errors("recording a download")
    def record(self, ident: str, entry: SourceEntry) -> None:
        """Map ``ident`` to ``entry``; the row is tagged with the entry's digest (see :meth:`forget_digest`)."""
        self._db.set(SRC + ident, asdict(entry), tag=entry.digest)

    @cache_errors("forgetting a source")
    def forget(self, ident: str) -> None:
        self._db.delete(SRC + ident)

    @cache_errors("forgetting a blob's sources")
    def forget_digest(self, digest: str) -> int:
        """Remove every source row that maps to ``digest`` (its blob is gone); returns how many."""
        return int(self._db.evict(digest))

    @cache_errors("listing sources")
    def sources_by_digest(self) -> dict[str, list[str]]:
        """digest -> source identities that map to it (for ``cachectl ls``)."""
        result: dict[str, list[str]] = {}
        for key in self._keys(SRC):
            entry = self.lookup(key[len(SRC):])
            if entry is not None:
                result.setdefault(entry.digest, []).append(key[len(SRC):])
        return result

    # -- what servers said -----------------------------------------------------------------------------

    @cache_errors("reading what a server said")
    def remote(self, url: str) -> RemoteInfo | None:
        data = self._get(HEAD + url)
        if data is None:
            return None
        return RemoteInfo(data.get("size"), data.get("etag"), data.get("content_type"), data.get("magic_ext"),
                          data.get("last_modified"))

    @cache_errors("remembering what a server said")
    def remember_remote(self, url: str, info: RemoteInfo) -> None:
        self._db.set(HEAD + url, asdict(info))  # diskcache keeps the time (store_time): see prune

    # -- bounds ----------------------------------------------------------------------------------------

    @cache_errors("pruning the index")
    def prune(self, *, cutoff: float, blobs: Callable[[], Collection[str]]) -> int:
        """Drop ``head:`` rows last written before ``cutoff`` and ``src:`` rows whose blob is gone; returns
        how many rows went. The blob store removes a blob's rows as it removes the blob; this sweep catches
        what that cannot: rows of a process that raced a removal, damaged (untagged) rows. ``blobs`` (the
        stored digests) is asked after the rows are listed: a blob is committed before its row is written, so
        every listed row whose blob exists finds it there."""
        rows = self._db.rows()
        live = blobs()
        removed = 0
        for key, tag, stored in rows:
            if key.startswith(HEAD):
                gone = stored < cutoff
            elif key.startswith(SRC):
                gone = self._orphan(tag, live)
            else:
                continue
            if gone:
                removed += bool(self._db.delete(key))
        return removed

    @staticmethod
    def _orphan(tag: str | None, live: Collection[str]) -> bool:
        return tag is None or tag not in live  # every row is written tagged with its digest (record)

    @cache_errors("counting the index")
    def counts(self) -> dict[str, int]:
        """How many rows of each kind (for ``cachectl stats``)."""
        keys = [key for key, _, _ in self._db.rows()]
        return {"sources": sum(k.startswith(SRC) for k in keys), "heads": sum(k.startswith(HEAD) for k in keys)}

    def _keys(self, prefix: str) -> list[str]:
        return [key for key, _, _ in self._db.rows() if key.startswith(prefix)]

    def _get(self, key: str) -> dict[str, Any] | None:
        data = self._db.get(key)
        return data if isinstance(data, dict) else None


def entry_of(data: dict[str, Any]) -> SourceEntry | None:
    """A source row's entry; None for a row that lacks its fields (damaged): a miss, never a crash."""
    try:
        return SourceEntry(str(data["digest"]), int(data["size"]), data.get("content_type"), data.get("etag"),
                           data.get("last_modified"))
    except (KeyError, TypeError, ValueError):
        return None
