"""The blob store without a kernel: adoption by rename, dedupe, one eviction policy, one TTL, verify, a
bounded index, staging files owned by flock, no pickles."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import diskcache
import pytest

from mixvfs.cache import store as store_module
from mixvfs.cache.digest import hash_fd
from mixvfs.cache.disk import JsonDisk, SafeDisk
from mixvfs.cache.errors import CacheError
from mixvfs.cache.index import IndexCache, SourceEntry, SourceIndex
from mixvfs.cache.remote import RemoteInfo, Seen, identity, url_of
from mixvfs.cache.store import BlobCache, BlobInfo, BlobStore, victims
from tests.conftest import wait_until

MiB = 1 << 20


def stage(store: BlobStore, data: bytes) -> tuple[Path, str]:
    fd, path = store.new_staging_file()
    os.write(fd, data)
    digest = hash_fd(fd)
    os.close(fd)
    return path, digest


def put(store: BlobStore, data: bytes) -> str:
    path, digest = stage(store, data)
    store.commit(path, digest, len(data))
    store.settle(digest)  # as a download does once the index maps the blob
    return digest


def last_used_at(store: BlobStore, digest: str, when: float) -> None:
    """Set a blob's last use, as if it had been opened at ``when`` (diskcache's access_time, wall time)."""
    store._cache._query("UPDATE Cache SET access_time = ? WHERE key = ?", (when, digest))


def read_blob(store: BlobStore, digest: str) -> bytes:
    fd = store.open_blob(digest)
    assert fd is not None
    try:
        return os.pread(fd, 1 << 30, 0)
    finally:
        os.close(fd)


def test_commit_adopts_the_staging_file_by_rename(tmp_path):
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=3600)
    path, digest = stage(store, b"audio" * 1000)
    inode = path.stat().st_ino
    store.commit(path, digest, 5000)
    assert not path.exists()
    (info,) = store.infos()
    assert store.path_of(info).stat().st_ino == inode  # same file: moved, not copied
    assert read_blob(store, digest) == b"audio" * 1000


def test_identical_bytes_are_stored_once(tmp_path):
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=3600)
    first = put(store, b"same bytes" * 100)
    second = put(store, b"same bytes" * 100)
    assert first == second
    assert len(store.infos()) == 1
    assert list(store.staging.iterdir()) == []


def test_size_limit_evicts_least_recently_used_and_never_the_new_blob(tmp_path):
    now = [0.0]
    store = BlobStore(tmp_path, max_size=50 * MiB, max_age=3600, clock=lambda: now[0])
    a = put(store, b"a" * 20 * MiB)
    b = put(store, b"b" * 20 * MiB)
    now[0] += store_module.USE_RECORDED_FOR  # a use is recorded again a minute after the last
    os.close(store.open_blob(a) or -1)  # a is now more recently used than b
    c = put(store, b"c" * 20 * MiB)  # diskcache's own cull (batches of 10) would empty the cache here
    assert {i.digest for i in store.infos()} == {a, c}
    assert b not in {i.digest for i in store.infos()}
    assert store.used_bytes() <= 50 * MiB


def test_a_single_blob_over_the_limit_is_kept(tmp_path):
    store = BlobStore(tmp_path, max_size=1 * MiB, max_age=3600)
    big = put(store, b"x" * 3 * MiB)
    assert [i.digest for i in store.infos()] == [big]


def test_evicted_blob_keeps_reading_through_an_open_descriptor(tmp_path):
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=3600)
    digest = put(store, b"keep me" * 1000)
    fd = store.open_blob(digest)
    assert fd is not None
    store.remove(digest)
    assert store.open_blob(digest) is None
    assert os.pread(fd, 7000, 0) == b"keep me" * 1000
    os.close(fd)


def test_prune_by_time_since_last_use_and_by_size(tmp_path):
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=30 * 86400)
    old = put(store, b"o" * MiB)
    new = put(store, b"n" * MiB)
    now = time.time()
    assert store.prune(now=now) == []
    used = put(store, b"u")  # the cache in use now; the other two last used two hours ago
    last_used_at(store, old, now - 7201)
    last_used_at(store, new, now - 7200)
    assert [v.digest for v in store.prune(max_age=3600, now=now, dry_run=True)] == [old, new]
    assert len(store.infos()) == 3  # dry run
    os.close(store.open_blob(new) or -1)
    victims = store.prune(max_size=MiB + 10, now=time.time())
    assert [v.digest for v in victims] == [old]
    assert {i.digest for i in store.infos()} == {new, used}
    last_used_at(store, new, time.time() - 31 * 86400)
    assert [v.digest for v in store.prune(now=time.time())] == [new]  # the default TTL
    assert [i.digest for i in store.infos()] == [used]


def test_a_wall_clock_stepped_forward_does_not_empty_the_cache_in_one_prune(tmp_path):
    """Every blob used just now; the wall clock then jumps a year ahead (a wrong NTP answer, a user changing
    the date): the TTL counts from the cache's own newest use, so nothing looks unused for a year."""
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=30 * 86400)
    digests = {put(store, bytes([n]) * 1000) for n in range(3)}
    ahead = time.time() + 365 * 86400
    assert store.prune(now=ahead) == []
    assert {i.digest for i in store.infos()} == digests
    old = put(store, b"o" * 1000)  # and one that really was unused for 31 days of the cache's use
    last_used_at(store, old, time.time() - 31 * 86400)
    assert [v.digest for v in store.prune(now=ahead)] == [old]


def test_a_last_use_in_the_future_is_clamped_so_a_clock_stepped_back_makes_no_blob_immortal(tmp_path):
    """A blob opened while the wall clock ran a year ahead, then the clock was corrected: its last use is
    counted as the first prune that sees it, and it ages from there like any other."""
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=3600)
    ahead = put(store, b"a" * 1000)
    now = time.time()
    last_used_at(store, ahead, now + 365 * 86400)
    assert store.prune(now=now) == []
    (info,) = store.infos()
    assert info.last_used == now  # clamped: also last in the LRU order no longer
    put(store, b"u")  # the cache in use an hour and a bit later
    later = now + 3601
    last_used_at(store, next(i.digest for i in store.infos() if i.digest != ahead), later)
    assert [v.digest for v in store.prune(now=later)] == [ahead]


def test_ttl_is_counted_from_last_use(tmp_path):
    now = [0.0]
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=100, clock=lambda: now[0])
    digest = put(store, b"t" * 1000)
    (before,) = store.infos()
    assert wait_until(lambda: time.time() > before.last_used)  # the clock has moved on: a later use is later
    now[0] += store_module.USE_RECORDED_FOR
    os.close(store.open_blob(digest) or -1)
    (after,) = store.infos()
    assert after.last_used > before.last_used
    assert after.expires is not None and before.expires is not None and after.expires > before.expires


def test_verify_removes_blobs_whose_bytes_changed(tmp_path):
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=3600)
    good = put(store, b"g" * 5000)
    bad = put(store, b"b" * 5000)
    info = next(i for i in store.infos() if i.digest == bad)
    with open(store.path_of(info), "r+b") as handle:
        handle.seek(100)
        handle.write(b"X")
    checked, corrupt = store.verify()
    assert checked == 2
    assert [c.digest for c in corrupt] == [bad]
    assert [i.digest for i in store.infos()] == [good]


def test_cache_folder_is_private(tmp_path):
    root = tmp_path / "c"
    root.mkdir(mode=0o755)
    BlobStore(root, max_size=MiB, max_age=1)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_no_pickles_in_or_out(tmp_path):
    cache = diskcache.Cache(str(tmp_path / "x"), disk=SafeDisk)
    with pytest.raises(TypeError):
        cache.set("k", {"a": 1})
    plain = diskcache.Cache(str(tmp_path / "x"))  # what an attacker with write access could plant
    plain.set("evil", {"payload": 1})
    with pytest.raises(CacheError, match="pickled"):
        cache.get("evil")


def test_index_maps_identities_and_remembers_remote_info(tmp_path):
    index = SourceIndex(tmp_path)
    url = "http://h/s/1"
    assert identity(url, etag='"e1"', size=10) == 'http://h/s/1#etag="e1"'
    assert identity(url, etag=None, size=10) == "http://h/s/1#size=10"
    index.record(identity(url, etag=None, size=10), SourceEntry("d1", 10, "audio/wav"))
    index.record(identity(url + "x", etag=None, size=10), SourceEntry("d1", 10, "audio/wav"))
    assert index.lookup("http://h/s/1#size=10") == SourceEntry("d1", 10, "audio/wav")
    assert sorted(index.sources_by_digest()["d1"]) == ["http://h/s/1#size=10", "http://h/s/1x#size=10"]
    index.remember_remote(url, RemoteInfo(10, '"e1"', "audio/wav", None))
    assert index.remote(url) == RemoteInfo(10, '"e1"', "audio/wav", None)


def test_pinned_blobs_survive_commit_eviction_and_prune_and_follow_a_new_version(tmp_path, caplog):
    store = BlobStore(tmp_path, max_size=2 * MiB, max_age=3600)
    index = store.index
    pinned = put(store, b"p" * MiB)
    index.record(identity("http://h/p", etag='"v1"', size=None), SourceEntry(pinned, MiB, None))
    index.pin("/s/friday.json", "Friday", ["http://h/p"])
    assert index.pinned_digests() == {pinned: ["Friday"]}
    others = [put(store, bytes([i]) * MiB) for i in range(3)]  # each commit evicts: never the pinned blob
    assert {i.digest for i in store.infos()} == {pinned, others[-1]}
    # Pins alone over the limit: everything else goes (at prune, at each commit), and the log says so once.
    store.max_size = MiB // 2
    with caplog.at_level(logging.WARNING, logger="mixvfs.cache.store"):
        assert [v.digest for v in store.prune()] == [others[-1]]
        assert [i.digest for i in store.infos()] == [pinned]
        put(store, b"x" * 1000)
        put(store, b"y" * 1000)
    assert [r.getMessage() for r in caplog.records] == [
        "pinned sessions alone hold 1.0 MiB, over the cache's size limit (512.0 KiB): nothing else is kept; "
        "`cachectl unpin SESSION` or a larger max_size"]
    assert len(store.infos()) == 2 and pinned in {i.digest for i in store.infos()}
    # The server's copy changed and was downloaded again: the new version is pinned (the pin is by URL); the
    # old one, no longer mapped by any row (one per URL), is not held any more.
    newer = put(store, b"q" * 1000)
    index.record(identity("http://h/p", etag='"v2"', size=None), SourceEntry(newer, 1000, None))
    assert set(index.pinned_digests()) == {newer}
    assert index.unpin("/s/friday.json") and not index.unpin("/s/friday.json")
    assert index.pinned_digests() == {}
    store.prune(max_size=0)
    assert store.infos() == []


def test_names_are_written_only_for_cached_sources_and_only_when_they_change(tmp_path):
    index = SourceIndex(tmp_path)
    cached, other = "http://h/a#size=1", "http://h/b#size=1"
    index.record(cached, SourceEntry("d1", 1, None))
    seen = {cached: Seen("A - One.wav", "Friday"), other: Seen("B - Two.wav", "Friday")}
    assert index.remember_seen(seen) == 1  # b is not cached: no name kept for it
    assert index.remember_seen(seen) == 0  # unchanged: nothing written
    assert index.remember_seen({cached: Seen("A - One.wav", "Saturday")}) == 1
    assert index.seen() == {cached: Seen("A - One.wav", "Saturday")}
    index.forget_digest("d1")
    assert index.prune(cutoff=0, blobs=set) == 1  # the name of a source no longer cached goes with the sweep
    assert index.seen() == {}


def test_url_of_an_identity():
    assert url_of(identity("http://h/a", etag='"x#size=3"', size=None)) == "http://h/a"
    assert url_of(identity("http://h/a", etag=None, size=3)) == "http://h/a"
    assert url_of("http://h/a") == "http://h/a"


# -- one eviction policy ----------------------------------------------------------------------------------


def blob(digest: str, size: int, last_used: float) -> BlobInfo:
    return BlobInfo(digest, size, last_used, last_used, None, digest)


def test_victims_takes_the_expired_then_the_least_recently_used_and_spares_the_protected():
    infos = [blob("a", 10, 1.0), blob("b", 10, 2.0), blob("c", 10, 3.0), blob("d", 10, 4.0)]  # LRU first
    assert victims(infos, limit=40) == []
    assert [v.digest for v in victims(infos, limit=25)] == ["a", "b"]
    assert [v.digest for v in victims(infos, limit=25, protect={"a"})] == ["b", "c"]
    assert [v.digest for v in victims(infos, limit=100, cutoff=2.5)] == ["a", "b"]  # the TTL alone
    assert [v.digest for v in victims(infos, limit=15, cutoff=1.5)] == ["a", "b", "c"]  # TTL, then size
    assert victims([blob("big", 99, 1.0)], limit=10, protect={"big"}) == []


def test_commit_eviction_and_prune_ask_the_same_victims_function(tmp_path, monkeypatch):
    calls: list[dict[str, object]] = []

    def spy(infos, **kwargs):
        calls.append(kwargs)
        return victims(infos, **kwargs)

    monkeypatch.setattr(store_module, "victims", spy)
    store = BlobStore(tmp_path, max_size=2 * MiB, max_age=3600)
    first = put(store, b"1" * MiB)
    put(store, b"2" * MiB)
    third = put(store, b"3" * MiB)  # over the limit: commit-time eviction
    assert first not in {i.digest for i in store.infos()}
    assert calls == [{"limit": 2 * MiB, "protect": frozenset({third})}]
    assert len(store.prune(max_size=MiB, now=time.time())) == 1
    assert calls[1]["limit"] == MiB and calls[1]["cutoff"] is not None


# -- one TTL ----------------------------------------------------------------------------------------------


def test_raising_max_age_rescues_a_blob_past_the_old_one(tmp_path):
    short = BlobStore(tmp_path, max_size=100 * MiB, max_age=100)
    digest = put(short, b"r" * 1000)
    later = time.time()
    last_used_at(short, digest, later - 200)  # past the old max_age, inside the new one
    put(short, b"u")  # the cache in use now
    assert [v.digest for v in short.prune(dry_run=True, now=later)] == [digest]
    short.close()
    longer = BlobStore(tmp_path, max_size=100 * MiB, max_age=10_000)
    assert longer.prune(now=later) == []
    assert read_blob(longer, digest) == b"r" * 1000


# -- a bounded index --------------------------------------------------------------------------------------


def recorded(tmp_path: Path, digest: str, *names: str) -> SourceIndex:
    """A separate index handle, as the fetcher has: the store's removals must reach it."""
    index = SourceIndex(tmp_path)
    for name in names:
        index.record(identity(f"http://h/{name}", etag=None, size=1), SourceEntry(digest, 1, "audio/wav"))
    return index


def test_index_rows_leave_with_a_blob_evicted_at_commit(tmp_path):
    store = BlobStore(tmp_path, max_size=MiB, max_age=3600)
    old = put(store, b"o" * MiB)
    index = recorded(tmp_path, old, "a", "b")
    assert len(index.sources_by_digest()[old]) == 2
    put(store, b"n" * MiB)
    assert not store.has(old)
    assert index.lookup("http://h/a#size=1") is None and old not in index.sources_by_digest()


def test_index_rows_leave_with_a_pruned_blob(tmp_path):
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=3600)
    gone = put(store, b"g" * 1000)
    index = recorded(tmp_path, gone, "a")
    last_used_at(store, gone, time.time() - 7200)
    put(store, b"u")  # the cache in use now
    assert [v.digest for v in store.prune(now=time.time())] == [gone]
    assert index.lookup("http://h/a#size=1") is None


def test_index_rows_leave_with_a_corrupt_blob(tmp_path):
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=3600)
    bad = put(store, b"b" * 5000)
    damaged = put(store, b"d" * 5000)
    index = recorded(tmp_path, bad, "a")
    recorded(tmp_path, damaged, "b")
    with open(store.path_of(next(i for i in store.infos() if i.digest == bad)), "r+b") as handle:
        handle.write(b"X")
    assert [c.digest for c in store.verify()[1]] == [bad]
    assert index.lookup("http://h/a#size=1") is None
    assert store.remove(damaged)  # what the fetcher does with a blob found damaged at open
    assert index.lookup("http://h/b#size=1") is None and index.sources_by_digest() == {}


def test_head_rows_older_than_max_age_are_pruned(tmp_path):
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=3600)
    store.index.remember_remote("http://h/a", RemoteInfo(1, None, None))
    store.prune(now=time.time() + 60)
    assert store.index.remote("http://h/a") == RemoteInfo(1, None, None)
    store.prune(dry_run=True, now=time.time() + 7200)
    assert store.index.remote("http://h/a") is not None  # a dry run changes nothing
    store.prune(now=time.time() + 7200)
    assert store.index.remote("http://h/a") is None
    assert store.index.counts() == {"sources": 0, "heads": 0, "names": 0, "pins": 0}


def test_an_untagged_source_row_is_dropped_by_prune(tmp_path):
    """Every source row is written tagged with its blob's digest; one without a tag (damaged, or written by
    another program) cannot leave with its blob, so prune drops it."""
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=3600)
    kept = put(store, b"k" * 1000)
    store.index.record("http://h/k#size=1000", SourceEntry(kept, 1000, None))
    raw = diskcache.Cache(str(tmp_path / "index"), disk=JsonDisk)
    raw.set("src:http://h/untagged#size=1000", {"digest": kept, "size": 1000, "content_type": None})
    raw.close()
    assert store.index.lookup("http://h/untagged#size=1000") == SourceEntry(kept, 1000, None)
    store.prune()
    assert store.index.lookup("http://h/untagged#size=1000") is None
    assert store.index.lookup("http://h/k#size=1000") is not None


def test_index_values_are_json_not_pickles(tmp_path):
    index = SourceIndex(tmp_path)
    index.record("http://h/a#size=1", SourceEntry("d1", 1, "audio/wav"))
    index.close()
    with sqlite3.connect(tmp_path / "index" / "cache.db") as db:
        ((key, tag, value),) = db.execute("SELECT key, tag, value FROM Cache").fetchall()
    assert key == "src:http://h/a#size=1" and tag == "d1"
    assert json.loads(zlib.decompress(value)) == {"digest": "d1", "size": 1, "content_type": "audio/wav",
                                                  "etag": None, "last_modified": None}
    diskcache.Cache(str(tmp_path / "index")).set("src:evil", {"payload": 1})  # pickled, as an attacker could
    with pytest.raises(CacheError, match="pickled"):
        SourceIndex(tmp_path).lookup("evil")


# -- diskcache's table, read by raw SQL -------------------------------------------------------------------


def test_the_columns_our_sql_reads_exist_in_diskcache(tmp_path):
    """BlobCache reads diskcache's Cache table by SQL: if a diskcache release renames a column this
    fails here, not as a wrong eviction in the field."""
    diskcache.Cache(str(tmp_path / "plain")).close()
    with sqlite3.connect(tmp_path / "plain" / "cache.db") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(Cache)")}
    assert columns >= BlobCache.COLUMNS | IndexCache.COLUMNS
    for cache in (BlobCache, IndexCache):
        assert sql_columns(cache) <= cache.COLUMNS, f"{cache.__name__}.COLUMNS must list every column its SQL names"


def sql_columns(cache: type) -> set[str]:
    """The lower-case words of the SQL statements in a class's methods: the columns they name."""
    sql = " ".join(text for method in vars(cache).values() if callable(method)
                   for text in method.__code__.co_consts
                   if isinstance(text, str) and text.startswith(("SELECT", "UPDATE")))
    words = sql.replace(",", " ").replace("(", " ").replace(")", " ").split()
    named = {word for word in words if word.islower() and word.isidentifier()}
    assert named
    return named


def test_a_changed_diskcache_schema_fails_loudly_at_open(tmp_path):
    BlobStore(tmp_path, max_size=MiB, max_age=3600).close()
    with sqlite3.connect(tmp_path / "blobs" / "cache.db") as db:
        db.execute("ALTER TABLE Cache RENAME COLUMN access_time TO last_access")
    with pytest.raises(CacheError, match="access_time"):
        BlobStore(tmp_path, max_size=MiB, max_age=3600)


# -- staging files owned by flock -------------------------------------------------------------------------


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()  # until the test kills us
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """Another process holding the lock of a staging file (a download of another mount). The file is
    named after a process that has exited: only the lock tells that it is in use."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    path = tmp_path / "staging" / f"{exited.pid}.held.part"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    try:
        yield path, child
    finally:
        child.kill()
        child.wait()


def test_a_staging_file_whose_lock_is_held_is_kept_and_removed_once_its_holder_dies(tmp_path, holder):
    path, child = holder
    store = BlobStore(tmp_path, max_size=MiB, max_age=3600)
    assert store.clean_stale_staging() == [] and store.clean_stale_staging(dry_run=True) == []
    assert path.exists()
    child.kill()  # as a crash would: the kernel drops the lock
    child.wait()
    assert store.clean_stale_staging(dry_run=True) == [path]
    assert store.clean_stale_staging() == [path] and not path.exists()


def test_a_staging_file_nobody_holds_is_removed_whatever_its_name_says(tmp_path):
    store = BlobStore(tmp_path, max_size=MiB, max_age=3600)
    alive = store.staging / f"{os.getppid()}.abc.part"  # a live process's pid: a dead one's, reused
    alive.write_bytes(b"partial")
    fd, mine = store.new_staging_file()
    try:
        assert store.clean_stale_staging() == [alive]
        assert mine.exists() and not alive.exists()  # ours is held by our open descriptor
        copy = os.dup(fd)  # a reader's dup shares the lock
        os.close(fd)
        fd = -1
        assert store.clean_stale_staging() == []
        os.close(copy)
        assert store.clean_stale_staging() == [mine]
    finally:
        if fd >= 0:
            os.close(fd)


def test_a_new_staging_file_is_locked_against_other_processes(tmp_path):
    store = BlobStore(tmp_path, max_size=MiB, max_age=3600)
    fd, path = store.new_staging_file()
    try:
        probe = "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\n" \
                "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n"
        assert subprocess.run([sys.executable, "-c", probe, str(path)]).returncode == 3
    finally:
        os.close(fd)


def test_own_staging_files_are_removed_even_while_held(tmp_path):
    """After Ctrl-C, warm removes the files of downloads that never started (still open, so locked)."""
    store = BlobStore(tmp_path, max_size=MiB, max_age=3600)
    fd, queued = store.new_staging_file()
    put(store, b"whole")  # committed: no longer this store's to clean
    try:
        assert store.clean_own_staging() == [queued]
        assert list(store.staging.iterdir()) == []
    finally:
        os.close(fd)


def test_cachectl_prune_removes_dead_downloads_and_stats_counts_the_index(tmp_path, capsys):
    from mixvfs.vfs.commands import cachectl

    store = BlobStore(tmp_path, max_size=MiB, max_age=3600)
    left = store.staging / "1.dead.part"
    left.write_bytes(b"partial")
    store.index.remember_remote("http://h/a", RemoteInfo(1, None, None))
    store.close()

    def run(*args: str) -> dict[str, object]:
        assert cachectl.main(["--cache-dir", str(tmp_path), *args, "--json"]) == 0
        result: dict[str, object] = json.loads(capsys.readouterr().out)
        return result

    stats = run("stats")
    assert stats["staging_files"] == 1 and stats["staging_left_over"] == 1
    assert stats["index"] == {"sources": 0, "heads": 1, "names": 0, "pins": 0}
    assert run("prune", "--dry-run")["staging_files"] == 1 and left.exists()
    assert run("prune")["staging_files"] == 1 and not left.exists()


def test_source_idents_names_every_source_row_and_nothing_else(tmp_path: Path) -> None:
    """The one query a mount asks instead of a lookup per track: every ``src:`` row (whatever its identity
    holds), no ``head:`` row, and a source whose blob is forgotten is gone from it."""
    index = SourceIndex(tmp_path / "idx")
    try:
        assert index.source_idents() == set()
        idents = [identity("http://h/a.wav", etag='"x;y"', size=None), identity("http://h/b c.wav", etag=None,
                                                                               size=3), "http://h/\u00e9"]
        for i, ident in enumerate(idents):
            index.record(ident, SourceEntry(f"{i:064x}", 3, None))
        index.remember_remote("http://h/a.wav", RemoteInfo(size=3, etag=None, content_type=None))
        assert index.source_idents() == set(idents)
        index.forget_digest(f"{0:064x}")
        assert index.source_idents() == set(idents[1:])
    finally:
        index.close()


def test_a_commit_takes_the_write_lock_once_and_its_settling_none(tmp_path: Path) -> None:
    """Per download: the adoption is the one write transaction of the blob database (asking whether the bytes
    were stored already takes no lock), and what follows the index row (the running total, whether the blob is
    still there) two reads. SQLite's own trace of this thread's connection counts them."""
    store = BlobStore(tmp_path / "cache", max_size=MiB, max_age=3600)
    put(store, b"first")  # the database and this thread's connection are made
    statements: list[str] = []
    store._cache._con.set_trace_callback(statements.append)
    path, digest = stage(store, b"second")
    store.commit(path, digest, 6)
    assert sum(s.startswith("BEGIN") for s in statements) == 1, statements
    statements.clear()
    assert store.settle(digest) is True
    assert len(statements) == 2 and not any(s.startswith("BEGIN") for s in statements), statements
    again, same = stage(store, b"second")  # the same bytes again: a use recorded, the staging file dropped
    store.commit(again, same, 6)
    assert not again.exists() and store.settle(same) and len(store.infos()) == 2
    store._remove_digest(same)  # as another process's eviction before the row: settle says so
    assert store.settle(same) is False
    store._cache._con.set_trace_callback(None)
    store.close()


def test_each_database_access_asks_the_file_system_once_and_still_sees_its_folder_replaced(tmp_path, monkeypatch):
    blobs = BlobStore(tmp_path / "cache", max_size=1 << 30, max_age=3600)
    try:
        entry = SourceEntry("d", 1, None)
        blobs.index.record("src", entry)
        stats: list[str] = []
        real_stat = os.stat

        def counted(path, *args, **kwargs):
            stats.append(str(path))
            return real_stat(path, *args, **kwargs)

        monkeypatch.setattr(os, "stat", counted)
        assert blobs.index.lookup("src") == entry
        # One stat per access, of the database file: each one releases the GIL (a download makes about a dozen).
        assert stats == [str(tmp_path / "cache" / "index" / "cache.db")]
        monkeypatch.setattr(os, "stat", real_stat)
        # A folder replaced by a copy (another cache.db) is still told, and opened afresh.
        subprocess.run(["cp", "-a", str(tmp_path / "cache" / "index"), str(tmp_path / "copy")], check=True)
        subprocess.run(["rm", "-rf", str(tmp_path / "cache" / "index")], check=True)
        os.rename(tmp_path / "copy", tmp_path / "cache" / "index")
        blobs.index.record("src2", entry)
        assert blobs.index.lookup("src2") == entry
        con = sqlite3.connect(tmp_path / "cache" / "index" / "cache.db")
        assert con.execute("SELECT COUNT(*) FROM Cache WHERE key = 'src:src2'").fetchone() == (1,)
        con.close()
    finally:
        blobs.close()


def test_a_blob_opened_within_a_minute_of_its_last_recorded_use_is_read_without_a_write(tmp_path):
    now = [0.0]
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=100, clock=lambda: now[0])
    digest = put(store, b"t" * 1000)  # its commit is a use
    (committed,) = store.infos()
    assert wait_until(lambda: time.time() > committed.last_used)
    now[0] += store_module.USE_RECORDED_FOR - 1
    with sqlite3.connect(tmp_path / "blobs" / "cache.db", isolation_level=None) as other:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: a read is not held up by it
        assert read_blob(store, digest) == b"t" * 1000
        other.execute("COMMIT")
    assert store.infos()[0].last_used == committed.last_used
    now[0] += 1
    assert read_blob(store, digest) == b"t" * 1000  # a minute on: the use is recorded
    (used,) = store.infos()
    assert used.last_used > committed.last_used
    now[0] += store_module.USE_RECORDED_FOR - 1
    store.remove(digest)
    assert store.open_blob(digest) is None  # gone: as diskcache's own answer says


def test_a_source_is_found_whatever_was_known_when_its_download_began(tmp_path):
    """A row is keyed by what was known when its download began; a later mount that knows more (or less) of the
    version still finds it, and never a version whose validators disagree. One row per URL: the newest version."""
    index = SourceIndex(tmp_path)
    url = "http://h/stream/a.wav"
    index.record(url, SourceEntry("d1", 10, "audio/wav", etag='"e1"'))  # began knowing the URL only
    index.record("http://h/stream/a.wav2", SourceEntry("other", 3, None))  # a URL that merely starts alike
    assert index.find(url, etag=None, size=None) == (url, SourceEntry("d1", 10, "audio/wav", etag='"e1"'))
    assert index.find(url, etag='"e1"', size=10) is not None and index.find(url, etag=None, size=10) is not None
    assert index.find(url, etag='"e2"', size=None) is None  # another version: downloaded anew
    assert index.find(url, etag=None, size=11) is None
    later = identity(url, etag='"e2"', size=12)
    index.record(later, SourceEntry("d2", 12, None, etag='"e2"'))
    assert index.find(url, etag='"e2"', size=None) == (later, SourceEntry("d2", 12, None, etag='"e2"'))
    assert index.find(url, etag=None, size=None) == (later, SourceEntry("d2", 12, None, etag='"e2"'))  # one row
    assert index.find(url, etag='"e1"', size=None) is None
    assert index.find("http://h/stream/a", etag=None, size=None) is None
    assert index.source_urls() == {url, "http://h/stream/a.wav2"}
