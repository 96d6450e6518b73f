"""The blob store: whole, verified files keyed by the xxh3-128 digest of their bytes.

diskcache does the bookkeeping (transactional metadata, last-use time, TTL through ``expire``); we only
teach it two things it does not do by itself:

* :class:`BlobDisk` adopts a finished staging file by ``rename`` instead of copying it, and refuses
  pickled values (a writable cache folder must never be able to run code);
* :meth:`BlobCache.evict_to` evicts least-recently-used blobs one at a time down to a size, sparing the
  blob just stored — diskcache's own ``cull`` works in batches of ten and can evict the new entry.

Staging files live in ``<root>/staging``: outside diskcache's folder (its ``check(fix=True)`` deletes
files it does not know) but on the same filesystem, so the final rename is atomic and copy-free.
"""

from __future__ import annotations

import errno
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
import xxhash

from mixvfs.cache.errors import CacheError, NoSpace

PROCESS_STARTED = time.time()
HASH_CHUNK = 1 << 20  # xxhash releases the GIL only for inputs over 64 KiB; 1 MiB is its sweet spot.


def new_hasher() -> Any:
    return xxhash.xxh3_128()


def hash_fd(fd: int, *, size: int | None = None) -> str:
    """Digest of a whole file through a descriptor (pread: does not move a shared offset); with ``size``,
    of at most its first ``size`` + one chunk bytes (enough to tell a longer file from the blob)."""
    return str(hash_prefix(fd, None if size is None else size + 1).hexdigest())


def hash_prefix(fd: int, length: int | None) -> Any:
    """A hasher fed with the first ``length`` bytes of ``fd`` (all of it for None), ready for more."""
    hasher = new_hasher()
    offset = 0
    while length is None or offset < length:
        want = HASH_CHUNK if length is None else min(HASH_CHUNK, length - offset)
        chunk = os.pread(fd, want, offset)
        if not chunk:
            break
        hasher.update(chunk)
        offset += len(chunk)
    return hasher


@dataclass(frozen=True)
class Adopt:
    """A finished staging file that the store should take over by rename."""

    path: Path
    size: int


class SafeDisk(diskcache.Disk):
    """A diskcache Disk that never pickles or unpickles (CVE-2025-69872: pickles in a cache folder run code)."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, str | bytes | int | float):
            raise TypeError(f"refusing to store a {type(value).__name__}: only str, bytes and numbers")
        return super().store(value, read, key=key)

    def fetch(self, mode: Any, filename: Any, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise CacheError("the cache index holds a pickled value; refusing to load it (run `cachectl verify`)")
        return super().fetch(mode, filename, value, read)


class BlobDisk(SafeDisk):
    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, Adopt):
            raise TypeError("blobs enter the store only as finished staging files")
        # Keep diskcache's random file name: re-storing a key at a fixed path would lose the data.
        filename, full_path = self.filename(key, value)
        for attempt in range(10):
            try:
                os.makedirs(os.path.dirname(full_path), exist_ok=True)
                os.rename(value.path, full_path)
                break
            except FileNotFoundError:
                # An eviction (ours or `cachectl prune`) removed the emptied folder between makedirs and
                # rename: diskcache's own writer retries the same way.
                if attempt == 9 or not value.path.exists():
                    raise
        return value.size, diskcache.core.MODE_BINARY, filename, None


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    last_used: float
    stored: float
    expires: float | None
    filename: str


class BlobCache(diskcache.Cache):
    """diskcache.Cache plus the few queries we need over its documented ``Cache`` table."""

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        # diskcache's `_sql` is its documented-in-source cursor helper; the Cache table schema is stable.
        return list(self._sql(sql, args).fetchall())  # type: ignore[attr-defined]

    def infos(self) -> list[BlobInfo]:
        rows = self._query(
            "SELECT key, size, access_time, store_time, expire_time, filename FROM Cache ORDER BY access_time"
        )
        return [BlobInfo(str(k), int(s), float(a), float(st), e, str(f)) for k, s, a, st, e, f in rows]

    def info(self, digest: str) -> BlobInfo | None:
        rows = self._query(
            "SELECT key, size, access_time, store_time, expire_time, filename FROM Cache WHERE key = ? AND raw = 1",
            (digest,),
        )
        if not rows:
            return None
        k, s, a, st, e, f = rows[0]
        return BlobInfo(str(k), int(s), float(a), float(st), e, str(f))

    def stored_bytes(self) -> int:
        """diskcache's running total of value sizes (kept by its triggers), without summing the table."""
        return int(self.reset("size"))

    def used_bytes(self) -> int:
        ((total,),) = self._query("SELECT COALESCE(SUM(size), 0) FROM Cache")
        return int(total)

    def lru_victims(self, limit: int, protect: Iterable[str]) -> list[BlobInfo]:
        """Blobs to evict, least recently used first, until the rest fits in ``limit`` bytes."""
        spared = set(protect)
        excess = self.used_bytes() - limit
        victims: list[BlobInfo] = []
        for info in self.infos():
            if excess <= 0:
                break
            if info.digest in spared:
                continue
            victims.append(info)
            excess -= info.size
        return victims


class BlobStore:
    """Content-addressed blobs with a size limit and a time-since-last-use limit."""

    def __init__(self, root: Path, *, max_size: int, max_age: float) -> None:
        self.root = root
        self.max_size = max_size
        self.max_age = max_age
        self.staging = root / "staging"
        make_private_dir(root)
        make_private_dir(self.staging)
        self._cache = BlobCache(
            str(root / "blobs"),
            disk=BlobDisk,
            eviction_policy="least-recently-used",
            size_limit=max_size,
            cull_limit=0,  # we evict ourselves (see evict_to); diskcache's batch cull can drop the new blob
            disk_min_file_size=0,
        )
        self._evict_lock = threading.Lock()

    def close(self) -> None:
        self._cache.close()

    # -- staging ---------------------------------------------------------------------------------------

    def new_staging_file(self) -> tuple[int, Path]:
        """An empty private file for a download; its name carries our pid so leftovers can be cleaned."""
        path = self.staging / f"{os.getpid()}.{secrets.token_hex(8)}.part"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return fd, path

    def clean_stale_staging(self) -> list[Path]:
        """Remove staging files of processes that are gone (killed mid-download)."""
        removed = []
        for path in self.staging.glob("*.part"):
            pid_text = path.name.split(".", 1)[0]
            if not pid_text.isdigit():
                continue
            pid = int(pid_text)
            # Our own pid on an older file: a dead process whose pid we were given again.
            reused = pid == os.getpid() and path.stat().st_mtime < PROCESS_STARTED
            if reused or not pid_alive(pid):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def clean_own_staging(self) -> list[Path]:
        """Remove this process's staging files (after its downloads were stopped, e.g. on Ctrl-C): a
        download queued but never started still has its empty staging file."""
        removed = []
        for path in self.staging.glob(f"{os.getpid()}.*.part"):
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    # -- blobs -----------------------------------------------------------------------------------------

    def commit(self, staged: Path, digest: str, size: int) -> None:
        """Adopt a verified staging file as the blob ``digest``; identical bytes are stored once."""
        if self.has(digest):
            staged.unlink(missing_ok=True)  # open readers keep their descriptor (POSIX)
            self._cache.touch(digest, expire=self.max_age)
        else:
            try:
                self._cache.set(digest, Adopt(staged, size), read=True, expire=self.max_age)
            except OSError as exc:
                raise translate_os_error(exc, "storing a download in the cache") from exc
            except (diskcache.Timeout, sqlite3.Error) as exc:
                # The rename may have happened: the orphan file is diskcache's to clean (check(fix=True)).
                raise CacheError(f"the cache database did not take the download: {exc or type(exc).__name__}") from exc
        self.evict_to(self.max_size, protect=[digest])

    def has(self, digest: str) -> bool:
        return digest in self._cache

    def open_blob(self, digest: str) -> int | None:
        """A descriptor of the blob, or None. Marks the blob used (LRU and TTL): once per open, not per read."""
        handle = self._cache.get(digest, read=True)
        if handle is None:
            return None
        with handle:
            fd = os.dup(handle.fileno())
        self._cache.touch(digest, expire=self.max_age)
        return fd

    def info(self, digest: str) -> BlobInfo | None:
        return self._cache.info(digest)

    def remove(self, digest: str) -> bool:
        return bool(self._cache.delete(digest))

    def infos(self) -> list[BlobInfo]:
        return self._cache.infos()

    def path_of(self, info: BlobInfo) -> Path:
        return self.root / "blobs" / info.filename

    def used_bytes(self) -> int:
        return self._cache.used_bytes()

    # -- limits ----------------------------------------------------------------------------------------

    def evict_to(self, limit: int, *, protect: Iterable[str] = ()) -> list[BlobInfo]:
        if self._cache.stored_bytes() <= limit:
            return []  # the common case, answered from diskcache's running total: no table scan per commit
        with self._evict_lock:
            victims = self._cache.lru_victims(limit, protect)
            for info in victims:
                self._cache.delete(info.digest)
            return victims

    def prune(
        self,
        *,
        max_age: float | None = None,
        max_size: int | None = None,
        dry_run: bool = False,
        now: float | None = None,
    ) -> list[BlobInfo]:
        """Expire blobs unused for ``max_age`` (default: the store's), then LRU down to ``max_size``."""
        now = time.time() if now is None else now
        age = self.max_age if max_age is None else max_age
        limit = self.max_size if max_size is None else max_size
        infos = self._cache.infos()
        expired = [i for i in infos if now - i.last_used > age or (i.expires is not None and i.expires < now)]
        gone = {i.digest for i in expired}
        remaining = [i for i in infos if i.digest not in gone]
        excess = sum(i.size for i in remaining) - limit
        by_size: list[BlobInfo] = []
        for info in remaining:  # already least recently used first
            if excess <= 0:
                break
            by_size.append(info)
            excess -= info.size
        victims = expired + by_size
        if not dry_run:
            for info in victims:
                self._cache.delete(info.digest)
        return victims

    def verify(self) -> tuple[int, list[BlobInfo]]:
        """Re-hash every blob; remove and return the ones whose bytes changed. Returns (checked, corrupt)."""
        corrupt = []
        infos = self._cache.infos()
        for info in infos:
            try:
                fd = os.open(self.path_of(info), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if self.has(info.digest):  # not evicted meanwhile: its file is really gone
                    corrupt.append(info)
                    self._cache.delete(info.digest)
                continue
            try:
                ok = os.fstat(fd).st_size == info.size and hash_fd(fd, size=info.size) == info.digest
            finally:
                os.close(fd)
            if not ok:
                corrupt.append(info)
                self._cache.delete(info.digest)
        return len(infos), corrupt


def translate_os_error(exc: OSError, doing: str) -> Exception:
    """The single place where the cache's OS errors become ours."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left on the cache disk while {doing}")
    return CacheError(f"{doing}: {exc.strerror or exc}")


def make_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or tighten it: cache contents are the user's business only."""
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed daemon whose parent never reaps it (a container's init may not) is a zombie: dead.
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we know
