"""Cache pressure: a session bigger than --max-size still exports completely and the cache stays within
its limit; `cachectl prune` in the middle of an export breaks nothing; a full disk is EIO with
"no space left" and leaves the store consistent."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mixvfs.cache.defaults import UNINDEXED_GRACE
from tests.conftest import run, write_session
from tests.faults.helpers import cachectl, cachectl_json, cloud_track, cp, name_of, stream_path

IDS = [f"p{i}" for i in range(6)]
LIMIT = 1_500_000


def six_tracks(tmp_path: Path, server_root: Path, url: str) -> Path:
    tracks = [cloud_track(server_root, track_id, 600_000, seed=i) for i, track_id in enumerate(IDS)]
    return write_session(tmp_path / "s.json", tracks, server=url)


def assert_exported(out: Path, server_root: Path) -> None:
    assert sorted(os.listdir(out)) == sorted(name_of(t) for t in IDS)
    for track_id in IDS:
        assert filecmp.cmp(out / name_of(track_id), server_root / "stream" / f"{track_id}.wav", shallow=False)


def test_session_larger_than_max_size_exports_completely(tmp_path, server_root, devserver, mounter):
    session = six_tracks(tmp_path, server_root, devserver.url)  # 3.6 MB of cloud bytes
    mount = mounter(session, "--max-size", str(LIMIT), "--retry-wait", "0.01s")  # prefetch on: it competes
    done = run(["cp", "-r", f"{mount.path}/.", str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr
    assert_exported(tmp_path / "out", server_root)
    mount.unmount()
    stats = cachectl_json(mount.cache_dir, "stats")
    assert 0 < stats["bytes"] <= LIMIT and stats["staging_files"] == 0
    assert cachectl(mount.cache_dir, "verify").returncode == 0


def test_cachectl_prune_during_an_export_causes_no_failure(tmp_path, server_root, devserver, mounter):
    session = six_tracks(tmp_path, server_root, devserver.url)
    devserver.set_faults({"*": {"rate": 3_000_000}})  # about 0.2 s per track: the export takes a while
    mount = mounter(session, "--retry-wait", "0.01s")
    assert mount.wait_track("p0", lambda r: r["status"] == "cached")["status"] == "cached"  # prefetched
    export = subprocess.Popen(["cp", "-r", f"{mount.path}/.", str(tmp_path / "out")], stderr=subprocess.PIPE,
                              text=True)
    freed = 0
    while export.poll() is None:
        done = cachectl(mount.cache_dir, "prune", "--max-size", "0", "--max-age", "0s", "--json")
        assert done.returncode == 0, done.stderr
        freed += json.loads(done.stdout)["freed_blobs"]
    assert export.returncode == 0, export.stderr.read() if export.stderr else ""
    assert freed >= 1  # blobs really went away under the running export
    assert_exported(tmp_path / "out", server_root)
    assert all(mount.wait_track(t, lambda r: r["status"] != "fetching")["status"] in ("cached", "pending")
               for t in IDS)  # "pending": pruned after the copy, never "failed"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs as the cache folder (root only). Set up before `mounter`, so torn down after it."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(disk)], check=True)
    yield disk
    run(["umount", "-l", str(disk)])


def test_disk_full_while_downloading_is_eio_and_the_store_stays_consistent(
        tmp_path, server_root, devserver, small_disk, mounter):
    tracks = [cloud_track(server_root, "small", 500_000), cloud_track(server_root, "huge", 5_000_000, seed=1)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, "--no-prefetch", "--retry-wait", "0.01s", cache_dir=small_disk / "cache")
    assert cp(mount.path / name_of("small"), tmp_path / "small.wav").returncode == 0
    done = cp(mount.path / name_of("huge"), tmp_path / "huge.wav")
    assert done.returncode != 0 and "Input/output error" in done.stderr
    record = mount.track("huge")
    assert record["status"] == "failed" and "no space left" in record["error"]
    assert len(devserver.requests("GET", stream_path("huge"))) == 1  # a full disk is not retried
    assert list((mount.cache_dir / "staging").iterdir()) == []  # the partial body is gone
    mount.unmount()
    assert [b["size"] for b in cachectl_json(mount.cache_dir, "ls")] == [500_000]
    assert cachectl_json(mount.cache_dir, "stats")["unindexed"] == {
        "files": 0, "bytes": 0, "younger_than_grace": 0, "grace": UNINDEXED_GRACE}  # no bytes left outside it
    assert cachectl(mount.cache_dir, "verify").returncode == 0
