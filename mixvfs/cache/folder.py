"""The cache folder as a live thing: removed or replaced while in use (``rm -rf ~/.cache/mixvfs``, a disk
cleaner that moves it away), it is noticed at the next access, made again (mode 0700) with one warning, and
each database is opened afresh in it. Blobs that went with the old folder are simply not there any more: the
tracks they held are downloaded again.

A database is the one diskcache opened on a subfolder; it is known by the identity (device, inode) of its
``cache.db``: a removed database file, a removed folder and a replaced one (whose ``cache.db`` is another file, or
none) all change it. Checking costs one ``stat`` per access: a download's dozen accesses each released the GIL
twice more for the folder's, which told nothing the file's did not.

Every failure here is a :class:`CacheError` naming the folder, and so is every error of SQLite or the file
system met while using a database (:func:`cache_errors`): the layers above report them per track, never as
a crash.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, ParamSpec, Protocol, TypeVar

import diskcache

from mixvfs.cache.errors import CacheError, MixvfsError, NoSpace
from mixvfs.cache.location import make_private_dir

log = logging.getLogger(__name__)

DB_FILE = "cache.db"  # diskcache's database file in the folder it is opened on


class Closable(Protocol):
    def close(self) -> None: ...


D = TypeVar("D", bound=Closable)
P = ParamSpec("P")
R = TypeVar("R")
Identity = tuple[tuple[int, int] | None, ...]


def identity(*paths: str | Path) -> Identity:
    """(device, inode) of each path, None for one that is not there."""
    found: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append(None)
        else:
            found.append((st.st_dev, st.st_ino))
    return tuple(found)


class CacheFolder:
    """The root folder and its plain subfolders (staging), and the databases opened in it."""

    def __init__(self, root: Path, subfolders: tuple[str, ...] = ()) -> None:
        self.root = root
        self.subfolders = subfolders
        self._lock = threading.RLock()
        self._dbs: list[LiveDb[Closable]] = []
        self._make()
        self._identity = identity(root)

    def _make(self) -> None:
        make_private_dir(self.root)
        for name in self.subfolders:
            make_private_dir(self.root / name)

    def database(self, subfolder: str, opener: Callable[[str], D]) -> LiveDb[D]:
        """``opener(path)`` opened on ``root/subfolder`` now, and again whenever that is no longer the one opened."""
        db = LiveDb(self, self.root / subfolder, opener)
        with self._lock:
            self._dbs.append(db)  # type: ignore[arg-type]
        return db

    def ensure(self) -> None:
        """Make the folder and its subfolders again if they went (one warning); CacheError if impossible."""
        if identity(self.root) == self._identity and all(os.path.isdir(self.root / n) for n in self.subfolders):
            return
        self.recover()

    def recover(self) -> None:
        """The folder, or a database in it, is not the one in use: make what is missing and open every database
        whose folder or file changed, afresh. One warning per event, whichever access noticed it first."""
        with self._lock:
            root_changed = identity(self.root) != self._identity
            stale = [db for db in self._dbs if db.stale()]
            missing = [n for n in self.subfolders if not os.path.isdir(self.root / n)]
            if not (root_changed or stale or missing):
                return  # another thread recovered it meanwhile
            denied = first_denied(self.root, *(self.root / n for n in self.subfolders),
                                  *(path for db in self._dbs for path in db.paths))
            if denied is not None:  # still there, but no longer ours to use (chmod): nothing to make again
                raise CacheError(f"the cache folder {self.root} cannot be used: {describe(denied)}; mixvfs needs "
                                 f"to read and write it (chmod 700 {self.root})") from denied
            try:
                self._make()
                for db in stale:
                    db.reopen()
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                raise CacheError(f"the cache folder {self.root} was removed or replaced while in use and cannot be "
                                 f"made again: {describe(exc)}") from exc
            self._identity = identity(self.root)
            what = "was removed or replaced" if root_changed else "lost " + ", ".join(
                [db.folder.name for db in stale] + missing)
            log.warning("the cache folder %s %s while in use: made again; tracks whose blobs went with it are "
                        "downloaded again", self.root, what)


def first_denied(*paths: str | Path) -> PermissionError | None:
    """The permission error of the first of ``paths`` that cannot be looked at (a folder on its way made
    unreadable), None when each is there or simply missing."""
    for path in paths:
        try:
            os.stat(path)
        except PermissionError as exc:
            return exc
        except OSError:
            continue
    return None


class LiveDb(Generic[D]):
    """A database of the cache folder, opened again in place when its folder or file is no longer the one
    opened. ``get()`` gives the database to use now."""

    def __init__(self, owner: CacheFolder, folder: Path, opener: Callable[[str], D]) -> None:
        self.owner = owner
        self.folder = folder
        self._opener = opener
        self._path = str(folder / DB_FILE)  # as str: a Path costs as much again per stat
        self.paths = (str(folder), self._path)  # what a permission change may hide (CacheFolder.recover)
        self._db = opener(str(folder))
        self._identity = self._now()

    def _now(self) -> Identity:
        return identity(self._path)

    def stale(self) -> bool:
        return self._now() != self._identity

    def get(self) -> D:
        if self.stale():
            self.owner.recover()
        return self._db

    def reopen(self) -> None:
        old, self._db = self._db, self._opener(str(self.folder))
        self._identity = self._now()
        with contextlib.suppress(Exception):  # this thread's connection; the others' go with the old object
            old.close()

    def close(self) -> None:
        self._db.close()


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    return str(exc) or type(exc).__name__


def cache_errors(doing: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a method of a store over the cache folder: SQLite's and the file system's errors leave it as
    ours (NoSpace for a full disk, else CacheError naming ``doing`` and the cause)."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:  # not `with translated(...)`: a context manager costs microseconds on every cache access
                return func(*args, **kwargs)
            except MixvfsError:
                raise
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                raise ours(exc, doing) from exc

        return wrapper

    return decorate


@contextlib.contextmanager
def translated(doing: str) -> Iterator[None]:
    try:
        yield
    except MixvfsError:
        raise
    except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
        raise ours(exc, doing) from exc


REFUSED_WRITE = "the cache database refused the write (read-only, immutable, or its disk failing)"


def refused_write(exc: BaseException) -> str | None:
    """The one sentence for a write the blob database would not take — whichever way SQLite (or diskcache, which
    turns a refused ``BEGIN IMMEDIATE`` into its ``Timeout``) says it — or None when ``exc`` is something else
    (a full disk keeps its own words). Every download a refusing database fails says the same."""
    if isinstance(exc, diskcache.Timeout):
        return REFUSED_WRITE
    if isinstance(exc, sqlite3.OperationalError) and "full" not in str(exc):
        return REFUSED_WRITE
    return None


def ours(exc: BaseException, doing: str) -> MixvfsError:
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(f"no space left on the cache disk while {doing}")
        return CacheError(f"the cache, {doing}: {describe(exc)}")
    return CacheError(f"the cache database, {doing}: {describe(exc)}")
