"""The source index: which digest holds the bytes of a source, and what the server last said about it.

Four kinds of record, JSON values in a diskcache (:class:`mixvfs.cache.disk.JsonDisk`, never pickles):

* ``src:<identity>`` -> ``{"digest", "size", "content_type", "etag", "last_modified"}`` — a source
  identity is the URL plus what was known of the version when its download began (ETag, else size, else
  nothing); one row per URL (:meth:`SourceIndex.record`), found whatever a later caller knows
  (:meth:`SourceIndex.find`); the entry keeps the validators of the stored version, so a cached track is
  revalidated at its first open in each mount. Each row is tagged
  with its digest, so removing a blob removes its rows in one ``evict(tag)`` (:meth:`SourceIndex.forget_digest`,
  called by the blob store whenever it removes a blob);
* ``head:<url>`` -> ``{"size", "etag", "content_type", "magic_ext", "last_modified"}`` — the last HEAD
  answer, so sizes and names are known at mount time even when the server is down. Rows not refreshed for
  ``max_age`` (diskcache's ``store_time``) are dropped by :meth:`SourceIndex.prune`: the same rule as
  blobs, unused that long.

* ``seen:<identity>`` -> ``{"name", "session"}`` — the file name ("Artist - Title.ext") and the session a
  cached source was last seen under (by a mount, ``cachectl warm`` or ``pin``, or its download): what the
  ``cachectl`` commands show first, before digests and URLs. Written only for cached sources, and only when
  it changed (:meth:`SourceIndex.remember_seen`);
* ``pin:<manifest path>`` -> ``{"session", "urls"}`` — a session pinned by ``cachectl pin``: the blobs its
  URLs map to (whatever version of them is stored) are never chosen by eviction or prune
  (:meth:`SourceIndex.pinned_set`), until ``cachectl unpin``. By URL, not identity: a track whose
  server copy changed and was downloaded again stays pinned.

The index stays bounded: ``src:`` rows leave with their blob, ``seen:`` rows with their source's rows (the
sweep of :meth:`SourceIndex.prune`), ``head:`` rows with age; ``pin:`` rows only by ``cachectl unpin``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mixvfs.cache.disk import CheckedCache, JsonDisk
from mixvfs.cache.errors import CacheError
from mixvfs.cache.folder import CacheFolder, cache_errors
from mixvfs.cache.remote import RemoteInfo, Seen, identity, url_of

SRC = "src:"
HEAD = "head:"
SEEN = "seen:"
PIN = "pin:"
NAMES_BATCH = 500  # names written per transaction
# Up to this many names are compared with the index by key (two queries); more, by one pass over every row (a
# mount's whole session).
NAMES_BY_KEY = 2000
KEYED_BATCH = 500  # keys per query (SQLite allows 32 766 parameters)


@dataclass(frozen=True)
class SourceEntry:
    """A stored version: its blob, and the validators the server gave for it (for revalidation)."""

    digest: str
    size: int
    content_type: str | None
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class Pin:
    """A pinned session: ``key`` its manifest's path, ``session`` its name, ``urls`` its cloud tracks'."""

    key: str
    session: str
    urls: tuple[str, ...]
    at: float


class IndexCache(CheckedCache):
    COLUMNS = frozenset({"key", "raw", "tag", "store_time", "mode", "filename", "value"})

    def rows(self) -> list[tuple[str, str | None, float]]:
        """Every row's key, tag and time of writing, in one query (the sweep's input)."""
        rows = self._query("SELECT key, tag, store_time FROM Cache WHERE raw = 1")
        return [(str(key), tag if isinstance(tag, str) else None, float(stored)) for key, tag, stored in rows]

    def source_digests(self) -> list[tuple[str, str]]:
        """Every source identity with its digest (the row's tag), in one range query on the key index."""
        rows = self._query("SELECT key, tag FROM Cache WHERE raw = 1 AND key >= ? AND key < ? AND tag IS NOT NULL",
                           (SRC, "src;"))
        return [(str(key)[len(SRC):], str(tag)) for key, tag in rows]

    def values(self, prefix: str, keys: Collection[str] | None = None) -> dict[str, Any]:
        """Every row under ``prefix`` with its value, in one query (``get`` per key is a query each: a mount of
        100 000 cached tracks compares their names in one pass); with ``keys``, only those rows (``prefix`` +
        key), found through the key index. A value that does not decode is None."""
        if keys is None:
            upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # "seen:" .. "seen;": a range on the key index
            rows = self._query("SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key >= ? AND key < ?",
                               (prefix, upper))
        else:
            rows = self._keyed("key, mode, filename, value", [prefix + key for key in keys])
        disk = self._disk  # type: ignore[attr-defined]
        found = {}
        for key, mode, filename, value in rows:
            try:
                found[str(key)[len(prefix):]] = disk.fetch(mode, filename, value, False)
            except (OSError, CacheError):
                found[str(key)[len(prefix):]] = None
        return found

    def versions(self, url: str) -> list[tuple[str, Any]]:
        """Every source row of ``url`` (``src:<url>`` itself and ``src:<url>#...``), newest first, with its
        value: two ranges on the key index."""
        key = SRC + url
        rows = self._query("SELECT key, mode, filename, value, store_time FROM Cache WHERE raw = 1 AND "
                           "(key = ? OR (key >= ? AND key < ?)) ORDER BY store_time DESC", (key, key + "#", key + "$"))
        disk = self._disk  # type: ignore[attr-defined]
        found: list[tuple[str, Any]] = []
        for name, mode, filename, value, _ in rows:
            try:
                found.append((str(name)[len(SRC):], disk.fetch(mode, filename, value, False)))
            except (OSError, CacheError):
                continue
        return found

    def present(self, prefix: str, keys: Collection[str]) -> set[str]:
        """Which of ``keys`` have a row under ``prefix``, in one query per ``KEYED_BATCH``."""
        return {str(key)[len(prefix):] for (key,) in self._keyed("key", [prefix + key for key in keys])}

    def _keyed(self, columns: str, keys: list[str]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), KEYED_BATCH):
            batch = keys[start:start + KEYED_BATCH]
            marks = ", ".join("?" * len(batch))
            rows += self._query(f"SELECT {columns} FROM Cache WHERE raw = 1 AND key IN ({marks})", tuple(batch))
        return rows


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

    @cache_errors("looking up a source")
    def find(self, url: str, *, etag: str | None, size: int | None) -> tuple[str, SourceEntry] | None:
        """The stored version of ``url`` that agrees with what is known of it now (``etag``, ``size``: None
        for unknown), and the identity it is stored under. A row is keyed by what was known when its download
        began (the bare URL when neither size nor ETag was), which need not be what a later mount knows (the
        server down, or up again): the exact identity first, else the newest row of the URL whose validators
        agree. A version found so is revalidated at its first open like any whose identity lacks the ETag."""
        exact = identity(url, etag=etag, size=size)
        entry = self.lookup(exact)
        if entry is not None:
            return exact, entry
        for ident, data in self._db.versions(url):
            if url_of(ident) != url or not isinstance(data, dict) or (entry := entry_of(data)) is None:
                continue
            if (etag is None or entry.etag == etag) and (size is None or entry.size == size):
                return ident, entry
        return None

    @cache_errors("reading the index")
    def source_urls(self) -> set[str]:
        """The URL of every source the index maps, in one query (a superset of the tracks :meth:`find`
        finds): a mount of 100 000 tracks asks this once instead of looking each track up."""
        return {url_of(ident) for ident in self.source_idents()}

    @cache_errors("reading the index")
    def source_idents(self) -> set[str]:
        """Every source identity the index maps, in one query: a mount of 100 000 tracks asks this once
        instead of looking each track up (most are not cached)."""
        # Keys "src:..." sort between "src:" and "src;" (";" follows ":"): a range on the key index.
        rows = self._db._query("SELECT key FROM Cache WHERE raw = 1 AND key >= ? AND key < ?", (SRC, "src;"))
        return {str(key)[len(SRC):] for (key,) in rows}

    @cache_errors("recording a download")
    def record(self, ident: str, entry: SourceEntry) -> None:
        """Map ``ident`` to ``entry``; the row is tagged with the entry's digest (see :meth:`forget_digest`).
        One row per URL: the rows of its other versions go (a mount that knows less of the version than the
        download did must find this one, not an older one; their blobs leave by eviction)."""
        self._db.set(SRC + ident, asdict(entry), tag=entry.digest)
        for other, _ in self._db.versions(url_of(ident)):
            if other != ident and url_of(other) == url_of(ident):
                self._db.delete(SRC + other)

    @cache_errors("forgetting a source")
    def forget(self, ident: str) -> None:
        self._db.delete(SRC + ident)

    @cache_errors("forgetting a blob's sources")
    def forget_digest(self, digest: str) -> int:
        """Remove every source row that maps to ``digest`` (its blob is gone); returns how many."""
        return int(self._db.evict(digest))

    @cache_errors("listing sources")
    @cache_errors("reading the index")
    def named_digests(self) -> set[str]:
        """Every digest some source's row names (one query)."""
        return {digest for _ident, digest in self._db.source_digests()}

    def sources_by_digest(self) -> dict[str, list[str]]:
        """digest -> source identities that map to it (for ``cachectl ls``)."""
        result: dict[str, list[str]] = {}
        for key in self._keys(SRC):
            entry = self.lookup(key[len(SRC):])
            if entry is not None:
                result.setdefault(entry.digest, []).append(key[len(SRC):])
        return result

    # -- names ---------------------------------------------------------------------------------------

    @cache_errors("reading the index")
    def names_wanted(self, count: int) -> set[str] | None:
        """Which of ``count`` source identities about to be named (:meth:`remember_seen`) can be: for many, every
        identity the index maps (one query), so that the caller makes a name only for those (an identity and a
        name for each of 100 000 tracks, most not cached, were ~25 MB at a mount's start); None for a few, each
        looked up by key."""
        return self.source_idents() if count > NAMES_BY_KEY else None

    @cache_errors("remembering track names")
    def remember_seen(self, seen: Mapping[str, Seen], *, stop: Callable[[], bool] = lambda: False,
                      cached: set[str] | None = None) -> int:
        """Remember the name and session of each cached source identity in ``seen`` (others are skipped: a
        name is kept only for what the cache holds); only rows that changed are written, ``NAMES_BATCH`` to a
        transaction (a download's commit waits for the write lock at most one batch), until ``stop`` says.
        ``cached``: what :meth:`names_wanted` just answered. Returns how many were written."""
        if not seen:
            return 0
        if cached is None and len(seen) <= NAMES_BY_KEY:  # downloads just done: a few, in an index of maybe 100 000
            cached, known = self._db.present(SRC, seen), self._db.values(SEEN, seen)
        else:
            cached, known = self.source_idents() if cached is None else cached, self._db.values(SEEN)
        changed = [(ident, asdict(s)) for ident, s in seen.items() if ident in cached and known.get(ident) != asdict(s)]
        written = 0
        for start in range(0, len(changed), NAMES_BATCH):
            if stop():
                break
            with self._db.transact():
                for ident, value in changed[start:start + NAMES_BATCH]:
                    self._db.set(SEEN + ident, value)
                    written += 1
        return written

    @cache_errors("reading track names")
    def seen(self) -> dict[str, Seen]:
        """Source identity -> the name and session it was last seen under."""
        found = {}
        for ident, data in self._db.values(SEEN).items():
            if isinstance(data, dict) and isinstance(data.get("name"), str) and isinstance(data.get("session"), str):
                found[ident] = Seen(data["name"], data["session"])
        return found

    # -- pins ------------------------------------------------------------------------------------------

    @cache_errors("pinning a session")
    def pin(self, key: str, session: str, urls: Iterable[str]) -> Pin:
        pin = Pin(key, session, tuple(dict.fromkeys(urls)), time.time())
        self._db.set(PIN + key, {"session": pin.session, "urls": list(pin.urls), "at": pin.at})
        return pin

    @cache_errors("unpinning a session")
    def unpin(self, key: str) -> bool:
        return bool(self._db.delete(PIN + key))

    @cache_errors("reading the pins")
    def pins(self) -> list[Pin]:
        found = []
        for key, data in sorted(self._db.values(PIN).items()):
            if isinstance(data, dict) and isinstance(data.get("urls"), list):
                found.append(Pin(key, str(data.get("session", key)), tuple(str(u) for u in data["urls"]),
                                 float(data.get("at", 0.0))))
        return found

    @cache_errors("reading the pins")
    def pinned_digests(self, pins: list[Pin] | None = None) -> dict[str, list[str]]:
        """Digest -> the pinned sessions (names) holding it: the blobs eviction and prune must spare. One query
        over the source rows (each tagged with its digest) and one over the pins."""
        pins = self.pins() if pins is None else pins
        by_url: dict[str, list[str]] = {}
        for pin in pins:
            for url in pin.urls:
                by_url.setdefault(url, []).append(pin.session)
        found: dict[str, list[str]] = {}
        for url, digests in self.digests_of_urls(by_url).items():
            for digest in digests:
                names = found.setdefault(digest, [])
                names.extend(s for s in by_url[url] if s not in names)
        return found

    @cache_errors("reading the pins")
    def pinned_set(self) -> set[str]:
        """The digests of every pinned session, without their names: what each eviction spares."""
        urls = {url for pin in self.pins() for url in pin.urls}
        if not urls:
            return set()
        return {digest for ident, digest in self._db.source_digests() if url_of(ident) in urls}

    @cache_errors("reading the index")
    def digests_of_urls(self, urls: Collection[str]) -> dict[str, set[str]]:
        """URL -> the digests its source rows map to (any version), for the URLs in ``urls`` that have one."""
        found: dict[str, set[str]] = {}
        if not urls:
            return found
        for ident, digest in self._db.source_digests():
            if (url := url_of(ident)) in urls:
                found.setdefault(url, set()).add(digest)
        return found

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
        """Drop ``head:`` rows last written before ``cutoff``, ``src:`` rows whose blob is gone and ``seen:`` rows
        whose source is no longer cached; returns how many rows went. The blob store removes a blob's rows as it
        removes the blob; this sweep catches what that cannot: rows of a process that raced a removal, damaged
        (untagged) rows, names of sources gone. ``blobs`` (the stored digests) is asked after the rows are
        listed: a blob is committed before its row is written, so every listed row whose blob exists finds it
        there."""
        rows = self._db.rows()
        live = blobs()
        sources = {key[len(SRC):] for key, tag, _ in rows if key.startswith(SRC) and not self._orphan(tag, live)}
        removed = 0
        for key, tag, stored in rows:
            if key.startswith(HEAD):
                gone = stored < cutoff
            elif key.startswith(SRC):
                gone = self._orphan(tag, live)
            elif key.startswith(SEEN):
                gone = key[len(SEEN):] not in sources  # the name of a source no longer cached
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
        return {"sources": sum(k.startswith(SRC) for k in keys), "heads": sum(k.startswith(HEAD) for k in keys),
                "names": sum(k.startswith(SEEN) for k in keys), "pins": sum(k.startswith(PIN) for k in keys)}

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
