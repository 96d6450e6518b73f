"""The blob store: whole, verified files keyed by the xxh3-128 digest of their bytes.

diskcache does the bookkeeping (transactional metadata, last-use time kept by its LRU policy on every
``get``); we teach it what it does not do by itself:

* :class:`BlobDisk` adopts a finished staging file by ``rename`` instead of copying it, and refuses
  pickled values (a writable cache folder must never be able to run code);
* one eviction policy, :func:`victims`: blobs unused for ``max_age`` (the TTL), then least recently used
  down to a size, sparing protected blobs — the blob just stored, and every blob of a pinned session (the
  index's pins, read at each eviction: a ``cachectl pin`` beside a live mount is seen by its next eviction).
  Pinned bytes count toward the size limit; when pins alone exceed it, everything else goes and a warning
  says so. Commit-time eviction (size only, sparing the blob just stored —
  diskcache's own ``cull`` works in batches of ten and can evict it) and :meth:`BlobStore.prune` (TTL and
  size; at every mount start and ``cachectl prune``) both ask it;
* one TTL rule: last use + ``max_age`` < now, judged by :meth:`BlobStore.prune` with the max_age *it* is
  given. diskcache's ``expire_time`` is not used (kept NULL): its ``get`` hides a row whose stored expiry
  passed and its ``touch`` refuses to extend one, so a raised ``--max-age`` could not rescue a blob, and
  processes with different max_ages would overwrite each other's expiries;
* a blob leaves with its index rows (:meth:`BlobStore._remove` — eviction, prune, verify, a blob found
  damaged at open): the store opens its root's :class:`SourceIndex` as ``store.index``.
* files in the blob folder that no row names (a commit the database refused after its rename: SQLite
  read-only or failing, a full disk) are found by :meth:`BlobStore.unindexed` and removed by
  :meth:`BlobStore.sweep_unindexed` once older than ``UNINDEXED_GRACE`` (by ``cachectl prune``, and at a mount
  start after a refused commit was noted), never while a commit may still be writing its row.

Staging files live in ``<root>/staging``: outside diskcache's folder (its ``check(fix=True)`` deletes
files it does not know) but on the same filesystem, so the final rename is atomic and copy-free. A
download owns its staging file by holding an ``flock`` on it for as long as its descriptor (or a reader's
``dup`` of it) is open; the kernel drops the lock when the process dies, however it dies, so a staging
file whose lock can be taken is a dead download's leftover. No pids, no ``/proc``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import diskcache

from mixvfs.cache.defaults import UNINDEXED_GRACE
from mixvfs.cache.digest import hash_fd
from mixvfs.cache.disk import CheckedCache, SafeDisk
from mixvfs.cache.errors import CacheError, NoSpace
from mixvfs.cache.folder import CacheFolder, cache_errors, refused_write, translated
from mixvfs.cache.index import SourceIndex
from mixvfs.cache.units import format_size

log = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20
# A blob's use is recorded (LRU order, and the TTL's "unused since") at most once a minute by one process: an
# export opening a track just downloaded took the write lock for a time no eviction can tell from its commit's.
USE_RECORDED_FOR = 60.0
USES_KEPT = 4096  # digests remembered with their time of use before the older than a minute are dropped

@dataclass(frozen=True)
class Adopt:
    """A finished staging file that the store should take over by rename."""

    path: Path
    size: int


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


# diskcache's names for the files it keeps values in: two levels of folders from a random hex name, then the
# rest of it with ".val" (diskcache.Disk.filename). Only such files are ever taken for a refused commit's leftover.
VALUE_SUFFIX = ".val"
# In the cache folder: a commit was refused since the last sweep found nothing left. A mount's housekeeping lists
# the blob folder only when it is there (one stat, not a folder opened per blob: ~20 ms for 2000 blobs).
REFUSED_NOTE = "refused-commits"


@dataclass(frozen=True)
class Unindexed:
    """A file in the blob folder that no row of the blob database names."""

    filename: str  # relative to the blob folder, as diskcache names a row's file
    size: int
    changed: float  # wall time of its last change (a rename changes it): how long a commit may still name it


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    last_used: float
    stored: float
    expires: float | None  # when prune will drop it if unused until then: last use + the store's max_age
    filename: str


def ttl_reference(infos: Sequence[BlobInfo], now: float) -> float:
    """The "now" a blob's age is measured to: the wall clock, but never more than a second past the cache's
    own newest use. The TTL is wall time by nature, and a clock stepped forward (a wrong NTP answer, a user
    changing the date) would otherwise make every blob look unused for the size of the step and empty the
    cache in one prune; measured from the newest use, a blob goes once it has gone ``max_age`` unused while
    the cache itself was in use. (A last use in the future — the clock stepped back — is clamped to ``now``
    before this: see :meth:`BlobCache.clamp_future_uses`.)"""
    newest = max((info.last_used for info in infos), default=now)
    return min(now, newest + 1.0)


def victims(
    infos: Sequence[BlobInfo], *, limit: int, cutoff: float | None = None, protect: Collection[str] = ()
) -> list[BlobInfo]:
    """The one eviction policy. ``infos`` are least recently used first. Chosen: every blob last used
    before ``cutoff`` (the TTL; None: no TTL), then the least recently used until the rest fits in
    ``limit`` bytes. A digest in ``protect`` is never chosen (a single blob over the limit stays)."""
    expired = [i for i in infos if cutoff is not None and i.last_used < cutoff and i.digest not in protect]
    chosen = {i.digest for i in expired}
    excess = sum(i.size for i in infos if i.digest not in chosen) - limit
    by_size: list[BlobInfo] = []
    for info in infos:
        if excess <= 0:
            break
        if info.digest in protect or info.digest in chosen:
            continue
        by_size.append(info)
        excess -= info.size
    return expired + by_size


def pinned_bytes(infos: Iterable[BlobInfo], pinned: Collection[str]) -> int:
    return sum(info.size for info in infos if info.digest in pinned)


class BlobCache(CheckedCache):
    """diskcache.Cache plus the few queries we need over its ``Cache`` table."""

    COLUMNS = frozenset({"key", "raw", "size", "access_time", "store_time", "filename"})

    def infos(self) -> list[BlobInfo]:
        rows = self._query("SELECT key, size, access_time, store_time, filename FROM Cache ORDER BY access_time")
        return [BlobInfo(str(k), int(s), float(a), float(st), None, str(f)) for k, s, a, st, f in rows]

    def info(self, digest: str) -> BlobInfo | None:
        rows = self._query(
            "SELECT key, size, access_time, store_time, filename FROM Cache WHERE key = ? AND raw = 1", (digest,)
        )
        if not rows:
            return None
        k, s, a, st, f = rows[0]
        return BlobInfo(str(k), int(s), float(a), float(st), None, str(f))

    def clamp_future_uses(self, now: float) -> int:
        """Last uses later than ``now`` (stamped while the wall clock ran ahead, then corrected back) become
        ``now``: else such a blob would outlive the TTL and the LRU order by the size of the step."""
        if not self._query("SELECT 1 FROM Cache WHERE access_time > ? LIMIT 1", (now,)):
            return 0
        future = self._query("SELECT COUNT(*) FROM Cache WHERE access_time > ?", (now,))[0][0]
        self._query("UPDATE Cache SET access_time = ? WHERE access_time > ?", (now, now))
        return int(future)

    def digests(self) -> set[str]:
        return {str(key) for (key,) in self._query("SELECT key FROM Cache WHERE raw = 1")}

    def filenames(self) -> set[str]:
        """The file every row names (relative to the cache's folder)."""
        return {str(name) for (name,) in self._query("SELECT filename FROM Cache WHERE filename IS NOT NULL")}

    def names_file(self, filename: str) -> bool:
        return bool(self._query("SELECT 1 FROM Cache WHERE filename = ? LIMIT 1", (filename,)))

    def stored_bytes(self) -> int:
        """diskcache's running total of value sizes (kept by its triggers), without summing the table."""
        return int(self.reset("size"))

    def used_bytes(self) -> int:
        ((total,),) = self._query("SELECT COALESCE(SUM(size), 0) FROM Cache")
        return int(total)


class BlobStore:
    """Content-addressed blobs with a size limit and a time-since-last-use limit, and their index."""

    def __init__(self, root: Path, *, max_size: int, max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.clock = clock  # when this process last recorded a use of a blob (USE_RECORDED_FOR)
        self._uses: dict[str, float] = {}  # digest -> the clock's time of this process's last recorded use
        self.max_size = max_size
        self.max_age = max_age
        self.staging = root / "staging"
        # Removed or replaced while in use, the folder is made again at the next access (see CacheFolder).
        self.folder = CacheFolder(root, subfolders=("staging",))
        self._blobs = self.folder.database("blobs", self._open_blobs)
        self.index = SourceIndex(root, self.folder)  # a blob's rows leave with it (see _remove)
        self._evict_lock = threading.Lock()
        self._warned_pins = False
        # Why the last open could not record the blob's use (the database refusing writes), None once one could.
        self.use_refused: str | None = None
        self._refusal_said = False  # SQLite's words for a refused commit logged (once, until one is taken)
        self._own: set[Path] = set()  # staging files this store handed out and has not seen end
        self._own_bound = 64
        self._own_lock = threading.Lock()
        # Blobs committed whose index rows are not written yet: until then no pin can name them (pins find
        # blobs through those rows), so every eviction of this process spares them.
        self._settling: set[str] = set()

    def _open_blobs(self, path: str) -> BlobCache:
        cache = BlobCache(
            path,
            disk=BlobDisk,
            eviction_policy="least-recently-used",  # every get() records the use: LRU order and the TTL
            size_limit=self.max_size,
            cull_limit=0,  # we evict ourselves (see evict_to); diskcache's batch cull can drop the new blob
            disk_min_file_size=0,
        )
        return cache

    @property
    def _cache(self) -> BlobCache:
        return self._blobs.get()

    def close(self) -> None:
        self.index.close()
        self._blobs.close()

    # -- staging ---------------------------------------------------------------------------------------

    @cache_errors("starting a download")
    def new_staging_file(self) -> tuple[int, Path]:
        """An empty private file for a download, locked (``flock``) until the descriptor and every ``dup``
        of it are closed: the lock is the download's claim on the file. The pid in the name is for
        people reading the folder; nothing decides by it."""
        self.folder.ensure()
        while True:
            path = self.staging / f"{os.getpid()}.{secrets.token_hex(8)}.part"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                if hold(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # a cleaner saw it unlocked in the instant after creation and removed it: again
        with self._own_lock:
            self._own.add(path)
            if len(self._own) > self._own_bound:  # downloads that failed unlinked theirs without telling us
                self._own = {p for p in self._own if p.exists()}
                self._own_bound = 2 * len(self._own) + 64
        return fd, path

    @contextlib.contextmanager
    def restaged(self, fd: int, path: Path, size: int) -> Iterator[Path]:
        """The staging file to commit: ``path``, or — when the cache folder was removed while the download ran,
        taking the file's name with it — a new staging file holding the same ``size`` bytes, copied from ``fd``
        (still ours: POSIX keeps an unlinked file's bytes for its descriptors). Its lock is held until the
        commit has renamed it."""
        if os.fstat(fd).st_nlink > 0:
            yield path
            return
        copy_fd, copy_path = self.new_staging_file()
        try:
            with translated("copying a download whose staging file was removed"):
                done = 0
                while done < size:
                    chunk = os.pread(fd, min(COPY_CHUNK, size - done), done)
                    if not chunk:
                        raise CacheError("the download's bytes were cut short while they were copied")
                    done += os.pwrite(copy_fd, chunk, done)
            log.info("the staging file of a download went with the cache folder: its bytes were copied back")
            yield copy_path
        finally:
            os.close(copy_fd)
            self._disown(path)

    def clean_stale_staging(self, *, dry_run: bool = False) -> list[Path]:
        """Remove staging files no process holds: the downloads of a process that crashed or was killed.
        Safe while other processes (or this one) download into the same folder: their files are locked.
        With ``dry_run``, only say which files those are."""
        stale = []
        for path in sorted(self.staging.glob("*.part")):
            with claimed(path) as unheld:
                if unheld:
                    if not dry_run:
                        path.unlink(missing_ok=True)
                    stale.append(path)
        return stale

    def clean_own_staging(self) -> list[Path]:
        """Remove this store's staging files (after its downloads were stopped, e.g. on Ctrl-C): a
        download queued but never started still has its empty staging file, a worker blocked in a
        stalled read still holds its lock, so these are not stale yet, and a failed download's file may not
        have been removable then (the folder's permissions changed). One that still cannot be removed is
        named in the log; the next mount's cleaning removes it."""
        with self._own_lock:
            own, self._own = self._own, set()
        removed = []
        for path in sorted(own):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("staging file %s left: %s; the next mount or cachectl removes it", path,
                            exc.strerror or exc)
                continue
            removed.append(path)
        return removed

    def discard_staging(self, path: Path) -> None:
        """A failed download's staging file, removed; one that cannot be removed now (its folder made
        unreadable) stays this store's, for :meth:`clean_own_staging` to try again at the end."""
        try:
            path.unlink()
        except FileNotFoundError:
            self._disown(path)
        except OSError:
            with self._own_lock:
                self._own.add(path)
        else:
            self._disown(path)

    def _disown(self, staged: Path) -> None:
        with self._own_lock:
            self._own.discard(staged)

    # -- blobs -----------------------------------------------------------------------------------------

    def commit(self, staged: Path, digest: str, size: int) -> None:
        """Adopt a verified staging file as the blob ``digest``; identical bytes are stored once. The blob is
        spared by every eviction until :meth:`settle`, which the committer calls once the index maps it."""
        with self._own_lock:
            self._settling.add(digest)
        try:
            # Asked first without a transaction: the stored-already case is rare (identical bytes behind two
            # sources), and a use recorded on a miss took the write lock for nothing, once per download. Should
            # another process store the same bytes in between, the adoption replaces its row with the same bytes.
            if self._stored(digest) and self._mark_used(digest):
                staged.unlink(missing_ok=True)  # open readers keep their descriptor (POSIX)
            else:
                self._adopt(staged, digest, size)
        except BaseException:
            with self._own_lock:
                self._settling.discard(digest)
            raise
        finally:
            self._disown(staged)

    @cache_errors("evicting blobs")
    def settle(self, digest: str) -> bool:
        """The index maps the blob committed as ``digest`` (a pin finds it now): back to the size limit. Returns
        whether the blob is still stored: another process's eviction may have taken it before its index row was
        written (that eviction could not remove a row not yet there), in which case the committer removes the
        row. Two reads and no lock, after each commit, when the cache is under its limit."""
        with self._own_lock:
            self._settling.discard(digest)
        self.evict_to(self.max_size, protect=[digest])
        return self._stored(digest)

    def _adopt(self, staged: Path, digest: str, size: int) -> None:
        try:
            self._cache.set(digest, Adopt(staged, size), read=True)  # stored now: its last use is now
            self._used(digest)
            self._refusal_said = False
            self._uses_recorded_again()
        except OSError as exc:
            raise translate_os_error(exc, "storing a download in the cache") from exc
        except (diskcache.Timeout, sqlite3.Error) as exc:
            # The rename may have happened (diskcache removes the file itself only when BEGIN times out): a
            # file no row names, which `unindexed` counts and `sweep_unindexed` removes after UNINDEXED_GRACE.
            self._note_refused_commit()
            words = str(exc) or type(exc).__name__
            if (refused := refused_write(exc)) is not None:
                if not self._refusal_said:  # SQLite's own words, once: the report says the one sentence
                    self._refusal_said = True
                    log.warning("the cache database refuses writes: %s", words)
                raise CacheError(refused) from exc
            raise CacheError(f"the cache database did not take the download: {words}") from exc

    @cache_errors("recording a use")
    def _mark_used(self, digest: str) -> bool:
        """Record a use of ``digest`` (LRU and TTL) if it is stored; False if it is not."""
        handle = self._cache.get(digest, read=True)
        if handle is None:
            return False
        handle.close()
        self._used(digest)
        self._uses_recorded_again()
        return True

    @cache_errors("looking up a blob")
    def has(self, digest: str) -> bool:
        return digest in self._cache

    @cache_errors("looking up a blob")
    def _stored(self, digest: str) -> bool:
        return self._cache.info(digest) is not None

    @cache_errors("opening a blob")
    def open_blob(self, digest: str) -> int | None:
        """A descriptor of the blob, or None. Records the use (diskcache's LRU ``get`` sets the last-use
        time, which the TTL counts from, in a write transaction): once per open, not per read, and not again
        within ``USE_RECORDED_FOR`` of this process's last record of it (its commit, mostly: an exporter opens
        a track just prefetched), when a read finds its file. A database that refuses the write (read-only,
        immutable, its disk failing) does not keep the bytes from a reader: the blob is opened without it, and
        :attr:`use_refused` says why until a use is recorded again."""
        recorded = self._uses.get(digest)
        if recorded is not None and self.clock() - recorded < USE_RECORDED_FOR:
            return self._open_by_lookup(digest)
        try:
            handle = self._cache.get(digest, read=True)
        except (sqlite3.Error, diskcache.Timeout) as exc:
            return self._open_unrecorded(digest, exc)
        self._uses_recorded_again()
        if handle is None:
            return None
        with handle:
            fd = os.dup(handle.fileno())
        self._used(digest)
        return fd

    def _uses_recorded_again(self) -> None:
        """A write of the blob database went through (a use, a commit): :attr:`use_refused` no longer holds."""
        if self.use_refused is not None:
            self.use_refused = None
            log.info("the cache database records the uses of cached tracks again")

    def _used(self, digest: str) -> None:
        now = self.clock()
        with self._own_lock:
            if len(self._uses) >= USES_KEPT:  # only the last minute's matter
                self._uses = {d: t for d, t in self._uses.items() if now - t < USE_RECORDED_FOR}
            self._uses[digest] = now

    def _open_unrecorded(self, digest: str, exc: sqlite3.Error | diskcache.Timeout) -> int | None:
        """The blob opened by a lookup alone (a read), its use not recorded: it may be evicted before blobs
        used less recently. The bytes are the caller's to check, as for any stored blob."""
        reason = refused_write(exc) or f"the cache database: {exc or type(exc).__name__}"
        if self.use_refused != reason:
            log.warning("cached tracks are served, but their use cannot be recorded (%s): they may be evicted "
                        "before tracks used less recently", reason)
        self.use_refused = reason
        return self._open_by_lookup(digest)

    def _open_by_lookup(self, digest: str) -> int | None:
        """The blob's file opened after a read of its row, recording no use."""
        info = self._cache.info(digest)
        if info is None:
            return None
        try:
            return os.open(self.path_of(info), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # evicted since the read: as diskcache's get says then

    @cache_errors("looking up a blob")
    def info(self, digest: str) -> BlobInfo | None:
        info = self._cache.info(digest)
        return None if info is None else self._with_expiry(info)

    @cache_errors("removing a blob")
    def remove(self, digest: str) -> bool:
        """Remove a blob (e.g. found damaged at open) and its index rows."""
        return self._remove_digest(digest)

    @cache_errors("listing blobs")
    def infos(self) -> list[BlobInfo]:
        """Every blob, least recently used first."""
        return [self._with_expiry(info) for info in self._cache.infos()]

    def path_of(self, info: BlobInfo) -> Path:
        return self.root / "blobs" / info.filename

    @cache_errors("measuring the cache")
    def used_bytes(self) -> int:
        return self._cache.used_bytes()

    def _with_expiry(self, info: BlobInfo) -> BlobInfo:
        return replace(info, expires=info.last_used + self.max_age)

    def _remove(self, infos: Iterable[BlobInfo]) -> None:
        for info in infos:
            self._remove_digest(info.digest)

    def _remove_digest(self, digest: str) -> bool:
        """The one way a blob leaves the store: its row and file (diskcache), then its index rows."""
        removed = bool(self._cache.delete(digest))
        self.index.forget_digest(digest)
        return removed

    # -- limits ----------------------------------------------------------------------------------------

    @cache_errors("evicting blobs")
    def evict_to(self, limit: int, *, protect: Iterable[str] = ()) -> list[BlobInfo]:
        """Least recently used blobs out until the rest fits in ``limit`` (after each commit); pinned blobs
        stay."""
        if self._cache.stored_bytes() <= limit:
            return []  # the common case, answered from diskcache's running total: no table scan per commit
        with self._evict_lock:
            infos = self.infos()
            pinned = self.index.pinned_set()
            with self._own_lock:
                settling = frozenset(self._settling)
            chosen = victims(infos, limit=limit, protect=frozenset(protect) | pinned | settling)
            self._remove(chosen)
            self._warn_if_pins_exceed(infos, pinned, limit)
            return chosen

    def _warn_if_pins_exceed(self, infos: Sequence[BlobInfo], pinned: Collection[str], limit: int) -> None:
        """One warning per process while the pinned blobs alone are over the size limit."""
        held = pinned_bytes(infos, pinned)
        if held > limit and not self._warned_pins:
            log.warning("pinned sessions alone hold %s, over the cache's size limit (%s): nothing else is kept; "
                        "`cachectl unpin SESSION` or a larger max_size", format_size(held), format_size(limit))
        self._warned_pins = held > limit

    @cache_errors("reading the pins")
    def pinned(self) -> dict[str, list[str]]:
        """Digest -> the pinned sessions holding it (stored blobs only)."""
        stored = self._cache.digests()
        return {digest: names for digest, names in self.index.pinned_digests().items() if digest in stored}

    @cache_errors("pruning the cache")
    def prune(
        self,
        *,
        max_age: float | None = None,
        max_size: int | None = None,
        dry_run: bool = False,
        now: float | None = None,
        warn: bool = True,
    ) -> list[BlobInfo]:
        """Drop blobs unused for ``max_age`` (default: the store's), then least recently used down to
        ``max_size``, sparing pinned blobs; and bound the index (its rows of removed blobs, HEAD answers older
        than max_age). ``warn``: log when pins alone exceed ``max_size`` (a command that says so itself: False)."""
        now = time.time() if now is None else now
        limit = self.max_size if max_size is None else max_size
        with self._evict_lock:
            if not dry_run and (clamped := self._cache.clamp_future_uses(now)):
                log.info("%d blobs were last used in the future (the clock was set back): counted as used now",
                         clamped)
            infos = self.infos()
            cutoff = ttl_reference(infos, now) - (self.max_age if max_age is None else max_age)
            pinned = self.index.pinned_set()
            chosen = victims(infos, limit=limit, cutoff=cutoff, protect=pinned)
            if warn:
                self._warn_if_pins_exceed(infos, pinned, limit)
            if not dry_run:
                self._remove(chosen)
                self.index.prune(cutoff=cutoff, blobs=self._cache.digests)
        return chosen

    @cache_errors("reading the index")
    def unnamed(self, infos: Sequence[BlobInfo] | None = None, *, now: float | None = None,
                grace: float = UNINDEXED_GRACE) -> list[BlobInfo]:
        """Blobs stored more than ``grace`` ago that no source's row names: their commit stored the bytes, then
        the index refused the row (a full disk). No open can find them (a track finds its blob through its
        row); only the size limit, or their age, would ever take them. Younger ones may be a commit whose row
        is being written."""
        now = time.time() if now is None else now
        infos = self.infos() if infos is None else infos
        named = self.index.named_digests()
        return [info for info in infos if info.digest not in named and info.stored < now - grace]

    @cache_errors("removing blobs no source names")
    def remove_unnamed(self, *, now: float | None = None, dry_run: bool = False) -> list[BlobInfo]:
        """Remove (``dry_run``: only list) the blobs :meth:`unnamed` finds: ``cachectl prune``'s."""
        with self._evict_lock:
            unnamed = self.unnamed(now=now)
            if not dry_run:
                for info in unnamed:
                    if info.digest not in self.index.named_digests():  # a row written meanwhile: keep it
                        self._remove_digest(info.digest)
        return unnamed

    # Files left outside the index. diskcache's own ``Cache.check(fix=True)`` would remove them too, but it is
    # not fit to run beside a live mount or a second process: it deletes every unknown file at once, a commit in
    # flight's included (diskcache renames a value's file before the transaction that writes its row), so a
    # blob would be committed naming a file just deleted; and it runs ``PRAGMA integrity_check`` and ``VACUUM``
    # and holds the write lock over a walk of the whole folder, stalling every download's commit on a big cache.
    # Ours is narrower: diskcache's value files only, rows read in one query after the walk, no lock held, and
    # a file removed only once it has gone ``grace`` seconds unchanged and still no row names it.

    @cache_errors("looking for files outside the index")
    def unindexed(self) -> list[Unindexed]:
        """Every value file in the blob folder that no row names, oldest change first. The folder is listed
        before the rows are read (a commit that renamed its file into the listing has its row read, if it is
        written), names only: just the few files no row names are ``stat``-ed."""
        folder = str(self.root / "blobs")
        listed = list(value_files(folder))
        named = self._cache.filenames() if listed else set()
        left = []
        for name in listed:
            if name in named:
                continue
            try:
                st = os.stat(os.path.join(folder, name), follow_symlinks=False)
            except FileNotFoundError:  # evicted meanwhile
                continue
            left.append(Unindexed(name, st.st_size, max(st.st_mtime, st.st_ctime)))
        return sorted(left, key=lambda u: u.changed)

    @cache_errors("removing files outside the index")
    def sweep_unindexed(self, *, now: float | None = None, grace: float = UNINDEXED_GRACE,
                        dry_run: bool = False, if_noted: bool = False) -> list[Unindexed]:
        """Remove (``dry_run``: only name) the files no row names that have gone ``grace`` seconds unchanged:
        their commits were refused. Younger ones may be a commit in flight, here or in another process sharing
        the cache (its row is written a moment after its rename), and stay. Each is asked for by name again
        just before it goes. ``if_noted``: only when a refused commit was noted (:data:`REFUSED_NOTE`), which
        goes once a sweep leaves nothing behind and no refusal was noted meanwhile."""
        now = time.time() if now is None else now
        note = self.root / REFUSED_NOTE
        try:
            noted: int | None = note.stat().st_mtime_ns
        except FileNotFoundError:
            noted = None
        if if_noted and noted is None:
            return []
        folder = self.root / "blobs"
        swept, kept = [], 0
        for left in self.unindexed():
            if now - left.changed < grace:
                kept += 1
                continue
            if not dry_run:
                if self._cache.names_file(left.filename):
                    continue  # a row names it now: written since the walk
                path = folder / left.filename
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                with contextlib.suppress(OSError):  # emptied folders go, as diskcache's own removal does
                    os.removedirs(path.parent)
            swept.append(left)
        if noted is not None and not dry_run and not kept:
            with contextlib.suppress(FileNotFoundError):
                if note.stat().st_mtime_ns == noted:  # no refusal noted since this sweep began
                    note.unlink()
        return swept

    def _note_refused_commit(self) -> None:
        """Leave :data:`REFUSED_NOTE`, so that the next mount's housekeeping looks for the file. If even this
        cannot be written (the disk full to its last inode), `cachectl prune` still finds the file and `stats`
        tells of it."""
        note = self.root / REFUSED_NOTE
        try:
            os.close(os.open(note, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            os.utime(note)  # a refusal after a sweep began keeps the note (the sweep compares its time)
        except OSError as exc:
            log.info("could not note a refused commit for the next mount's clean-up (%s): cachectl prune "
                     "removes its file", exc.strerror or exc)

    @cache_errors("verifying blobs")
    def verify(self) -> tuple[int, list[BlobInfo]]:
        """Re-hash every blob; remove and return the ones whose bytes changed. Returns (checked, corrupt)."""
        corrupt = []
        infos = self.infos()
        for info in infos:
            try:
                fd = os.open(self.path_of(info), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if self.has(info.digest):  # not evicted meanwhile: its file is really gone
                    corrupt.append(info)
                    self._remove_digest(info.digest)
                continue
            try:
                ok = os.fstat(fd).st_size == info.size and hash_fd(fd, size=info.size) == info.digest
            finally:
                os.close(fd)
            if not ok:
                corrupt.append(info)
                self._remove_digest(info.digest)
        return len(infos), corrupt


def value_files(folder: str) -> Iterator[str]:
    """The files where diskcache puts values ("ab/cd/<name>.val"), relative to ``folder``: two levels of
    folders, nothing else (the database's own files, anything a user left) looked at."""
    for top in subfolders(folder):
        for sub in subfolders(os.path.join(folder, top)):
            # A folder emptied and removed meanwhile holds nothing.
            with contextlib.suppress(FileNotFoundError, NotADirectoryError), \
                    os.scandir(os.path.join(folder, top, sub)) as entries:
                for entry in entries:
                    if entry.name.endswith(VALUE_SUFFIX) and entry.is_file(follow_symlinks=False):
                        yield f"{top}/{sub}/{entry.name}"


def subfolders(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


LOCKS_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_warned_no_locks = False


def hold(fd: int) -> bool:
    """Lock a new staging file for its download's life. False if a cleaner removed it first: for an
    instant after creation it was unlocked, so it looked like a dead download's leftover."""
    global _warned_no_locks
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a cleaner holds it, to unlink it
    except OSError as exc:
        if exc.errno not in LOCKS_UNSUPPORTED:
            raise
        # No locks on this filesystem: cleaners cannot take the lock either, so they keep every file.
        if not _warned_no_locks:
            _warned_no_locks = True
            log.warning("the cache filesystem has no flock: dead downloads' staging files will not be removed")
    return os.fstat(fd).st_nlink > 0


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[bool]:
    """Whether no process holds ``path`` (a staging file): its lock was taken here and is held for the
    with-block, so no download can claim the file meanwhile. False when a live download holds it, when the
    file is gone, or when its lock cannot be asked for (then it is kept: never remove what may be in use)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: a live download's lock
            stale = False
        else:
            stale = same_file(path, fd)  # not renamed away (committed) and replaced meanwhile
        yield stale
    finally:
        os.close(fd)


def same_file(path: Path, fd: int) -> bool:
    try:
        there = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


def translate_os_error(exc: OSError, doing: str) -> Exception:
    """The single place where the cache's OS errors become ours."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left on the cache disk while {doing}")
    return CacheError(f"{doing}: {exc.strerror or exc}")
