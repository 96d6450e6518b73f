"""Files in the blob folder that no row names: a commit the database refused after its file was renamed in
leaves one. `cachectl stats` counts them, prune removes them once they are ``UNINDEXED_GRACE`` old, and a commit
still in flight (renamed, its row not written yet) keeps its file. Refusals and commits in flight are real:
an immutable database (``chattr +i``), a write lock held by another SQLite connection."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mixvfs.cache.defaults import UNINDEXED_GRACE
from mixvfs.cache.errors import CacheError
from mixvfs.cache.store import REFUSED_NOTE, BlobStore
from mixvfs.vfs.commands import cachectl
from tests.conftest import database_refusing_writes, wait_until
from tests.unit.conftest import GiB
from tests.unit.test_store import put, read_blob, stage


def refused_commit(store: BlobStore, data: bytes) -> str:
    """A verified download committed while the blob database refuses writes, as a mount's would be."""
    path, digest = stage(store, data)
    with database_refusing_writes(store.root / "blobs"), pytest.raises(CacheError, match="refused the write"):
        store.commit(path, digest, len(data))
    return digest


def files_in(store: BlobStore | Path) -> set[str]:
    """The value files in the blob folder of a store or a cache folder, as diskcache names them."""
    folder = (store.root if isinstance(store, BlobStore) else store) / "blobs"
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.val")}


@pytest.fixture
def blobs(tmp_path: Path) -> Iterator[BlobStore]:
    store = BlobStore(tmp_path / "cache", max_size=GiB, max_age=3600)
    yield store
    store.close()


def test_a_refused_commit_leaves_a_file_stats_counts_and_prune_removes_once_the_grace_has_passed(blobs):
    kept = put(blobs, b"a blob the index names" * 100)
    refused_commit(blobs, b"y" * 5000)

    [left] = blobs.unindexed()
    assert left.size == 5000 and left.filename in files_in(blobs)
    info = blobs.info(kept)
    assert info is not None and blobs.path_of(info).exists()
    assert (blobs.root / REFUSED_NOTE).exists()  # the next mount's housekeeping will look

    stats = cachectl.stats(blobs)
    assert stats["unindexed"] == {"files": 1, "bytes": 5000, "younger_than_grace": 1, "grace": UNINDEXED_GRACE}
    assert "1 file(s) (4.9 KiB) in the blob folder outside the index" in cachectl.format_stats(stats)
    assert "cachectl prune removes them" in cachectl.format_stats(stats)

    # Fresh: it may be a commit in flight, kept, and so is the note.
    assert blobs.sweep_unindexed(now=left.changed + UNINDEXED_GRACE - 1) == []
    assert blobs.sweep_unindexed(now=left.changed + UNINDEXED_GRACE - 1, if_noted=True) == []
    assert left.filename in files_in(blobs) and (blobs.root / REFUSED_NOTE).exists()
    # Past the grace: --dry-run names it and leaves it, prune removes it.
    later = left.changed + UNINDEXED_GRACE + 1
    assert blobs.sweep_unindexed(now=later, dry_run=True) == [left]
    assert left.filename in files_in(blobs)
    assert blobs.sweep_unindexed(now=later, if_noted=True) == [left]  # as a mount's housekeeping does
    assert left.filename not in files_in(blobs) and not (blobs.root / REFUSED_NOTE).exists()
    assert blobs.unindexed() == [] and cachectl.stats(blobs)["unindexed"]["files"] == 0
    assert read_blob(blobs, kept) == b"a blob the index names" * 100  # the indexed blob untouched
    assert blobs.sweep_unindexed(now=later) == []


def test_a_leftover_nothing_noted_is_left_to_prune_by_the_mount_s_housekeeping(blobs):
    """A mount start lists the blob folder only after a refused commit was noted (a folder opened per blob is
    too much for every start); `cachectl prune` always looks (a leftover of a mixvfs that left no note)."""
    put(blobs, b"first" * 100)
    refused_commit(blobs, b"w" * 4000)
    (blobs.root / REFUSED_NOTE).unlink()
    [left] = blobs.unindexed()
    later = left.changed + UNINDEXED_GRACE + 1
    assert blobs.sweep_unindexed(now=later, if_noted=True) == []
    assert left.filename in files_in(blobs)
    assert blobs.sweep_unindexed(now=later) == [left]
    assert left.filename not in files_in(blobs)


def test_only_diskcache_s_value_files_are_taken_for_leftovers(blobs):
    """The database's own files and anything that is not a value file where diskcache puts them stay."""
    put(blobs, b"one" * 100)
    folder = blobs.root / "blobs"
    (folder / "notes.val").write_bytes(b"not where diskcache puts values")
    (folder / "ab" / "cd").mkdir(parents=True, exist_ok=True)
    (folder / "ab" / "cd" / "readme.txt").write_bytes(b"not a value file")
    assert blobs.unindexed() == []
    assert blobs.sweep_unindexed(now=time.time() + 10 * UNINDEXED_GRACE) == []
    assert (folder / "notes.val").exists() and (folder / "ab" / "cd" / "readme.txt").exists()


@contextlib.contextmanager
def write_lock_held(database: Path) -> Iterator[None]:
    """Another connection holds the database's write lock (as a second process's transaction would)."""
    con = sqlite3.connect(database, isolation_level=None, timeout=0)
    try:
        con.execute("BEGIN IMMEDIATE")
        yield
        con.execute("COMMIT")
    finally:
        con.close()


COMMIT_IN_ANOTHER_PROCESS = """
import sys
from pathlib import Path
from mixvfs.cache.store import BlobStore
store = BlobStore(Path(sys.argv[1]), max_size=1 << 30, max_age=3600)  # opening writes: before the lock is taken
print("open", flush=True)
sys.stdin.readline()
store.commit(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
store.settle(sys.argv[3])
store.close()
"""


def test_the_file_of_another_process_s_commit_in_flight_is_never_removed(blobs):
    """The same, the committer a second process sharing the cache (a mount beside `cachectl prune`)."""
    put(blobs, b"first" * 100)
    data = b"theirs" * 2000
    path, digest = stage(blobs, data)
    other = subprocess.Popen([sys.executable, "-c", COMMIT_IN_ANOTHER_PROCESS, str(blobs.root), str(path), digest,
                              str(len(data))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdin is not None and other.stdout is not None
        assert other.stdout.readline() == "open\n"
        with write_lock_held(blobs.root / "blobs" / "cache.db"):
            other.stdin.write("commit\n")
            other.stdin.flush()
            assert wait_until(lambda: not path.exists() or other.poll() is not None)
            assert other.poll() is None, "the other process ended before its commit waited for the lock"
            [in_flight] = blobs.unindexed()
            assert in_flight.size == len(data)
            assert blobs.sweep_unindexed() == []
            assert in_flight.filename in files_in(blobs)
        assert other.wait(timeout=60) == 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert blobs.unindexed() == []
    assert read_blob(blobs, digest) == data


def test_the_file_of_a_commit_in_flight_is_never_removed(blobs):
    """diskcache renames a value's file into its folder, then waits for the write lock to insert its row: while
    another process holds the lock, the file is in the folder and no row names it. A prune then keeps it, and
    the commit ends with its blob whole."""
    put(blobs, b"first" * 100)  # the database exists
    data = b"in flight" * 1000
    path, digest = stage(blobs, data)
    outcome: list[BaseException | None] = []

    def commit() -> None:
        try:
            blobs.commit(path, digest, len(data))
        except BaseException as exc:  # the test's finding
            outcome.append(exc)
        else:
            outcome.append(None)

    committer = threading.Thread(target=commit)
    with write_lock_held(blobs.root / "blobs" / "cache.db"):
        committer.start()
        assert wait_until(lambda: not path.exists())  # renamed into the blob folder: its row waits for the lock
        [in_flight] = blobs.unindexed()
        assert in_flight.size == len(data)
        assert blobs.sweep_unindexed() == []  # now: the file is a moment old
        assert blobs.sweep_unindexed(dry_run=True) == []
        assert in_flight.filename in files_in(blobs)
    committer.join()
    assert outcome == [None]
    blobs.settle(digest)
    assert blobs.unindexed() == []
    assert read_blob(blobs, digest) == data



def test_a_blob_whose_index_row_was_refused_is_counted_and_pruned_once_the_grace_has_passed(blobs):
    """A full disk can refuse the index's row after the blob database took the blob (a download commits the
    blob, then its row): no track can find such a blob, and only its age would ever take it. Stats says so,
    `cachectl prune` removes it once UNINDEXED_GRACE old (younger, it may be a commit whose row is on its way),
    and a blob a source names is never taken for one."""
    from mixvfs.cache.index import SourceEntry

    named = put(blobs, b"a blob a source names" * 100)
    blobs.index.record("https://music.example/a.wav", SourceEntry(named, 2100, None))
    path, digest = stage(blobs, b"z" * 7000)
    blobs.commit(path, digest, 7000)  # the blob is stored ...
    with database_refusing_writes(blobs.root / "index"), pytest.raises(CacheError):
        blobs.index.record("https://music.example/z.wav", SourceEntry(digest, 7000, None))  # ... its row refused
    info = blobs.info(digest)
    assert info is not None
    stats = cachectl.stats(blobs)
    assert stats["unnamed"] == {"blobs": 1, "bytes": 7000}
    assert "1 blob(s) (6.8 KiB) no track's source names" in cachectl.format_stats(stats)
    assert blobs.remove_unnamed(now=info.stored + UNINDEXED_GRACE - 1) == []  # may be a commit in flight
    assert blobs.remove_unnamed(now=info.stored + UNINDEXED_GRACE + 1, dry_run=True) == [info]
    assert blobs.has(digest)
    assert blobs.remove_unnamed(now=info.stored + UNINDEXED_GRACE + 1) == [info]
    assert not blobs.has(digest) and blobs.has(named)
    assert cachectl.stats(blobs)["unnamed"] == {"blobs": 0, "bytes": 0}
