"""Where we reach into diskcache beyond its API, in one place.

* ``Disk`` classes that never unpickle: a writable cache folder must never be able to run code
  (CVE-2025-69872 — diskcache pickles any value that is not str, bytes or a number, and unpickles on
  read). :class:`SafeDisk` stores only str, bytes and numbers and refuses a pickled value on read;
  :class:`JsonDisk` is diskcache's own ``JSONDisk`` for the index's records (dicts), with plain-text keys
  and the same refusal.
* :class:`CheckedCache`: raw SQL over diskcache's ``Cache`` table, for what its API cannot answer in one
  query ("every entry with its size and last use"). Each subclass names the columns it reads; they are
  checked when the cache opens, so a diskcache release that changed the schema fails loudly there,
  never with a wrong answer later. It also keeps diskcache's SQLite connections per OS thread (see
  :meth:`CheckedCache._con`).

Both the blob store and the source index build on this module; it imports neither.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import zlib
from collections.abc import Callable
from typing import Any, ClassVar

import diskcache

from mixvfs.cache.errors import CacheError


def refuse_pickle(mode: Any) -> None:
    if mode == diskcache.core.MODE_PICKLE:
        raise CacheError("the cache holds a pickled value; refusing to load it (run `cachectl verify`)")


class SafeDisk(diskcache.Disk):
    """A diskcache Disk that never pickles or unpickles."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, str | bytes | int | float):
            raise TypeError(f"refusing to store a {type(value).__name__}: only str, bytes and numbers")
        return super().store(value, read, key=key)

    def fetch(self, mode: Any, filename: Any, value: Any, read: bool) -> Any:
        refuse_pickle(mode)
        return super().fetch(mode, filename, value, read)


class JsonDisk(diskcache.JSONDisk):
    """JSON values (zlib-compressed, as diskcache's JSONDisk writes them), plain str keys, no pickles.

    Keys stay plain text rather than JSONDisk's compressed JSON: the index's one raw query (``rows``) reads
    them as text and picks them by prefix. A value that does not decode reads as None: a damaged record is a
    cache miss, never a crash."""

    def put(self, key: Any) -> Any:
        return diskcache.Disk.put(self, key)

    def get(self, key: Any, raw: bool) -> Any:
        return diskcache.Disk.get(self, key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if read:
            raise TypeError("the index holds JSON values, not files")
        return super().store(value, read, key=key)  # JSON bytes: diskcache stores bytes as they are

    def fetch(self, mode: Any, filename: Any, value: Any, read: bool) -> Any:
        refuse_pickle(mode)
        try:
            return super().fetch(mode, filename, value, read)
        except (ValueError, zlib.error):  # json's and UnicodeDecodeError are ValueErrors
            return None


def refusal(exc: sqlite3.OperationalError) -> bool:
    """A write the database file refused (read-only, immutable: SQLite's READONLY and IOERR families), not a
    lock another connection holds nor an error of the statement."""
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR)


class CheckedCache(diskcache.Cache):
    """A diskcache.Cache that may be queried by SQL on the ``COLUMNS`` it names (checked at open)."""

    COLUMNS: ClassVar[frozenset[str]] = frozenset()
    MAX_CONNECTIONS = 256  # past this many threads seen, the idle ones' connections are dropped (closed)

    def __init__(self, directory: str, **settings: Any) -> None:
        self._txns: dict[int, int] = {}
        self._thread_cons: dict[int, sqlite3.Connection] = {}
        self._refused: set[int] = set()  # the threads whose connection met a refusal: reopened at next access
        self._cons_pid = os.getpid()
        super().__init__(directory, **settings)
        self.check_schema()

    @property
    def _con(self) -> sqlite3.Connection:
        """diskcache's connection for this thread, kept per OS thread rather than per Python thread state.

        diskcache keeps one connection per ``threading.local``; but libfuse's threads are not Python's, and
        ctypes gives such a thread a fresh thread state (so fresh thread-locals) for every callback: each FUSE
        open reconnected to both databases and re-applied their pragmas, ~1 ms of a ~1.7 ms open
        (BENCHMARKS.md). ``threading.get_ident()`` is the OS thread's, stable across callbacks and the very
        id sqlite3's same-thread check compares, so a connection is still only ever used by its thread."""
        pid = os.getpid()
        if pid != self._cons_pid:  # forked: the parent's connections are not ours to use
            self._thread_cons, self._cons_pid = {}, pid
        key = threading.get_ident()
        if key in self._refused and key not in self._txns:  # never within a transaction: it ends on its own
            # Let go of it, not closed: a caller may still hold its ``execute`` (diskcache captures it across
            # calls); it closes once the last such reference goes.
            self._refused.discard(key)
            self._thread_cons.pop(key, None)
            self._local.__dict__.pop("con", None)  # type: ignore[attr-defined]  # diskcache's thread-local
        con = self._thread_cons.get(key)
        if con is None:
            con = super()._con  # type: ignore[misc]  # diskcache connects and applies its pragmas
            if len(self._thread_cons) >= self.MAX_CONNECTIONS:
                self._thread_cons = {}  # threads that ended keep none open for ever (in use: still referenced)
            self._thread_cons[key] = con
        return con

    # diskcache marks "a transaction of this thread is open" in one attribute of the cache, ``_txn_id``, and
    # asserts at its end that the mark is still its own. That holds while SQLite serialises writers; but a write
    # SQLite refuses with an I/O error (a read-only or immutable database) may roll the transaction back there
    # and then, so another thread's BEGIN succeeds and overwrites the mark before the first thread's rollback
    # runs: an AssertionError instead of the refusal. Kept per OS thread (diskcache's connections are), each
    # thread sees its own mark, and the rollback of a transaction SQLite already ended is a no-op (``_sql``).
    @property
    def _txn_id(self) -> int | None:
        return self._txns.get(threading.get_ident())

    @_txn_id.setter
    def _txn_id(self, value: int | None) -> None:
        if value is None:
            self._txns.pop(threading.get_ident(), None)
        else:
            self._txns[threading.get_ident()] = value

    @property
    def _sql(self) -> Callable[..., sqlite3.Cursor]:
        con = self._con
        execute = con.execute

        def sql(statement: str, *args: Any) -> sqlite3.Cursor:
            if statement == "ROLLBACK" and not con.in_transaction:
                return con.cursor()  # SQLite rolled it back itself (an I/O error): the refusal is the error
            try:
                return execute(statement, *args)
            except sqlite3.OperationalError as exc:
                if refusal(exc):
                    # SQLite opens a database it may not write (immutable, read-only) read-only for the
                    # connection's life: this thread's next access connects anew, so a database writable
                    # again is written again.
                    self._refused.add(threading.get_ident())
                raise

        return sql

    def close(self) -> None:
        """This thread's connection, as diskcache's ``close`` (which its ``_con`` also calls for a new thread
        state: the other threads' connections must survive that)."""
        super().close()
        con = self._thread_cons.pop(threading.get_ident(), None)
        if con is not None:
            con.close()

    def check_schema(self) -> None:
        try:
            columns = {str(row[1]) for row in self._query("PRAGMA table_info(Cache)")}
        except (AttributeError, sqlite3.Error) as exc:
            raise CacheError(f"diskcache {diskcache.__version__}: cannot read its Cache table ({exc})") from exc
        missing = self.COLUMNS - columns
        if missing:
            raise CacheError(f"diskcache {diskcache.__version__} changed its Cache table (no column "
                             f"{', '.join(sorted(missing))}); this mixvfs needs diskcache 5.x")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        # diskcache's `_sql` is its cursor helper (autocommit: one statement is one transaction).
        return list(self._sql(sql, args).fetchall())
