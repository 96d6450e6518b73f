"""The blob store without a kernel: adoption by rename, dedupe, limits, TTL, verify, no pickles."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import diskcache
import pytest

from mixvfs.cache.errors import CacheError
from mixvfs.cache.index import RemoteInfo, SourceEntry, SourceIndex, identity
from mixvfs.cache.store import BlobStore, SafeDisk, hash_fd

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
    return digest


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
    store = BlobStore(tmp_path, max_size=50 * MiB, max_age=3600)
    a = put(store, b"a" * 20 * MiB)
    b = put(store, b"b" * 20 * MiB)
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
    assert [v.digest for v in store.prune(max_age=3600, now=now + 7200, dry_run=True)] == [old, new]
    assert len(store.infos()) == 2  # dry run
    os.close(store.open_blob(new) or -1)
    victims = store.prune(max_size=MiB, now=time.time())
    assert [v.digest for v in victims] == [old]
    assert [i.digest for i in store.infos()] == [new]
    assert [v.digest for v in store.prune(now=time.time() + 31 * 86400)] == [new]  # the default TTL
    assert store.infos() == []


def test_ttl_is_counted_from_last_use(tmp_path):
    store = BlobStore(tmp_path, max_size=100 * MiB, max_age=100)
    digest = put(store, b"t" * 1000)
    (before,) = store.infos()
    time.sleep(0.01)
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


def test_stale_staging_files_of_dead_processes_are_removed(tmp_path):
    store = BlobStore(tmp_path, max_size=MiB, max_age=3600)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = store.staging / f"{int(dead.stdout)}.abc.part"
    leftover.write_bytes(b"partial")
    fd, mine = store.new_staging_file()
    os.close(fd)
    assert store.clean_stale_staging() == [leftover]
    assert mine.exists() and not leftover.exists()


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
