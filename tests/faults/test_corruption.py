"""Corruption: a blob changed on disk is found by `cachectl verify` and by the check on open (size
always, full hash for small blobs), removed and fetched again. Wrong bytes are never served."""

from __future__ import annotations

import filecmp
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Mount, getxattr, write_session
from tests.faults.helpers import FAST, cachectl, cachectl_json, cloud_track, cp, name_of, stream_path
from tools.devserver import DevServer

MiB = 1 << 20


def cache_one_track(tmp_path: Path, server_root: Path, devserver: DevServer,
                    mounter: Callable[..., Mount]) -> tuple[Path, Path]:
    """Export one cloud track through a mount, unmount; return the session and the blob file on disk."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 400_000)], server=devserver.url)
    mount = mounter(session, *FAST)
    assert cp(mount.path / name_of("t1"), tmp_path / "first.wav").returncode == 0
    mount.unmount()
    (blob,) = (mount.cache_dir / "blobs").rglob("*.val")  # diskcache's random file name for the value
    assert blob.stat().st_size == 400_000
    return session, blob


def damage(blob: Path, how: str) -> None:
    if how == "flip":
        with open(blob, "r+b") as handle:
            handle.seek(200_000)
            byte = handle.read(1)
            handle.seek(200_000)
            handle.write(bytes([byte[0] ^ 0xFF]))
    else:
        os.truncate(blob, 399_000)


def test_cachectl_verify_finds_and_removes_a_changed_blob(tmp_path, server_root, devserver, mounter):
    session, blob = cache_one_track(tmp_path, server_root, devserver, mounter)
    digest = cachectl_json(tmp_path / "cache", "ls")[0]["digest"]
    damage(blob, "flip")
    done = cachectl(tmp_path / "cache", "verify")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == f"corrupt, removed: {name_of('t1')} (Test Session) (390.6 KiB) {digest}"
    assert "checked 1 blob(s): 1 corrupt" in done.stdout
    assert cachectl_json(tmp_path / "cache", "ls") == [] and not blob.exists()
    assert cachectl(tmp_path / "cache", "verify").returncode == 0
    mount = mounter(session, *FAST)
    assert cp(mount.path / name_of("t1"), tmp_path / "again.wav").returncode == 0
    assert filecmp.cmp(tmp_path / "again.wav", server_root / "stream" / "t1.wav", shallow=False)
    assert len(devserver.requests("GET", stream_path("t1"))) == 2  # fetched again


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_open_detects_a_damaged_blob_and_fetches_again(tmp_path, server_root, devserver, mounter, how):
    session, blob = cache_one_track(tmp_path, server_root, devserver, mounter)
    damage(blob, how)
    mount = mounter(session, *FAST)
    done = cp(mount.path / name_of("t1"), tmp_path / "again.wav")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "again.wav", server_root / "stream" / "t1.wav", shallow=False)
    assert len(devserver.requests("GET", stream_path("t1"))) == 2
    assert "was damaged on disk; removed, fetching again" in mount.log()
    mount.unmount()
    assert cachectl(mount.cache_dir, "verify").returncode == 0


def read_chars(pid: int) -> int:
    """Bytes the process has read through read-like calls (``rchar``: page cache hits included)."""
    with open(f"/proc/{pid}/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("rchar:"))


def test_a_blob_this_mount_stored_is_not_read_again_to_open_it(tmp_path, server_root, devserver, mounter):
    """The hash on open is skipped for a blob this very process wrote (hashing it as it came) and that is
    unchanged since: re-reading it doubled what a cold export of short tracks read."""
    size = 8 * MiB
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", size)], server=devserver.url)
    mount = mounter(session, *FAST)
    path = mount.path / name_of("t1")
    assert cp(path, tmp_path / "first.wav").returncode == 0  # downloads and stores it
    assert mount.wait_track("t1", lambda r: r["status"] == "cached")["status"] == "cached"
    pid = int(getxattr(mount.path, "user.mixvfs.pid"))
    before = read_chars(pid)
    with open(path, "rb"):  # an open alone: the kernel reads nothing
        pass
    assert read_chars(pid) - before < size // 2


def test_a_blob_damaged_after_this_mount_stored_it_is_caught_at_its_next_open(
        tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 400_000)], server=devserver.url)
    mount = mounter(session, *FAST)
    path = mount.path / name_of("t1")
    assert cp(path, tmp_path / "first.wav").returncode == 0
    assert mount.wait_track("t1", lambda r: r["status"] == "cached")["status"] == "cached"
    (blob,) = (mount.cache_dir / "blobs").rglob("*.val")
    damage(blob, "flip")  # same size, same inode: only its times tell
    done = cp(path, tmp_path / "again.wav")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "again.wav", server_root / "stream" / "t1.wav", shallow=False)
    assert len(devserver.requests("GET", stream_path("t1"))) == 2  # found at the open, fetched again
    assert "was damaged on disk; removed, fetching again" in mount.log()
