"""cache/digest.py: a whole file hashed from a mapping only under a read lease, else with pread — same digest,
and a file cut short while it is hashed never kills the process (SIGBUS) nor yields a digest of mixed bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from mixvfs.cache import digest


@pytest.fixture
def leases_ignored() -> Iterator[None]:
    before = signal.getsignal(signal.SIGIO)
    digest.ignore_lease_breaks()
    yield
    signal.signal(signal.SIGIO, before)


@pytest.mark.parametrize("size", [0, 1, digest.MAP_SPAN - 1, digest.MAP_SPAN, 2 * digest.MAP_SPAN + 7])
def test_mapped_and_read_digests_are_the_xxh3_128_of_the_bytes(tmp_path: Path, size: int,
                                                                 leases_ignored: None) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[int] = []
    assert digest.hash_path(path, progress=seen.append) == xxhash.xxh3_128(data).hexdigest()
    assert sum(seen) == size
    fd = os.open(path, os.O_RDONLY)
    try:
        assert digest.hash_fd(fd) == xxhash.xxh3_128(data).hexdigest()
    finally:
        os.close(fd)


def test_no_lease_while_sigio_would_end_the_process(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    before = signal.signal(signal.SIGIO, signal.SIG_DFL)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert digest.take_read_lease(fd) is False
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, before)


def test_a_file_open_for_writing_is_read_not_mapped(tmp_path: Path, leases_ignored: None) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    writer = os.open(path, os.O_WRONLY)  # a writer could cut it short under a mapping: no lease is given
    fd = os.open(path, os.O_RDONLY)
    try:
        assert digest.take_read_lease(fd) is False
        assert digest.hash_path(path) == xxhash.xxh3_128(b"abc" * 1000).hexdigest()
    finally:
        os.close(fd)
        os.close(writer)


TRUNCATE_MID_HASH = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    from mixvfs.cache import digest

    path = Path(sys.argv[1])
    digest.ignore_lease_breaks()
    truncate = None
    calls = 0
    after_break = []

    def progress(length):
        global truncate, calls
        calls += 1
        if calls == 1:
            # A shell's `>` (not truncate(1): it opens with O_NONBLOCK, so a lease makes it fail with EAGAIN).
            truncate = subprocess.Popen(["sh", "-c", ': > "$1"', "sh", str(path)])
            # Gate on the kernel's own state: the truncate waits for our lease (/proc/locks: BREAKING).
            inode = path.stat().st_ino
            deadline = time.monotonic() + 30  # hang guard only
            while not any("BREAKING" in line and line.split()[5].endswith(":%d" % inode)
                          for line in open("/proc/locks")):
                if truncate.poll() is not None:
                    sys.exit("the truncate did not wait for the lease")
                assert time.monotonic() < deadline, "no lease break seen"
                time.sleep(0.005)
        else:
            after_break.append(length)

    print(digest.hash_path(path, progress=progress), flush=True)
    print(",".join(map(str, after_break)) or "-", truncate.wait(timeout=30), path.stat().st_size, flush=True)
""")


@pytest.mark.linux_facilities
def test_a_writer_waiting_mid_hash_ends_the_mapping_and_the_hashing_survives(tmp_path: Path) -> None:
    """Once a writer waits for the lease, no further span is hashed from the mapping (the kernel would take
    the lease after 45 s and a cut under the mapping ends the process with SIGBUS): the rest is read with
    pread (1 MiB chunks, told apart from 8 MiB spans), the lease given back, the writer goes on, and the
    hashing process survives (run in a child so that a SIGBUS fails the test instead of killing pytest)."""
    data = os.urandom(4 * digest.MAP_SPAN)
    path = tmp_path / "track.wav"
    path.write_bytes(data)
    done = subprocess.run([sys.executable, "-c", TRUNCATE_MID_HASH, str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    _digest, after_break, truncate_status, size_after = done.stdout.split()
    assert all(int(n) < digest.MAP_SPAN for n in after_break.split(",") if n != "-")
    assert (truncate_status, size_after) == ("0", "0")


@pytest.mark.parametrize("fstype, mapped", [("ext4", True), ("tmpfs", True), ("fuse.sshfs", False),
                                            ("nfs4", False), (None, False)])
def test_only_local_file_systems_are_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            fstype: str | None, mapped: bool) -> None:
    """On NFS or a FUSE file system a file can be cut short behind the kernel's back, lease or not."""
    path = tmp_path / "f"
    path.write_bytes(b"z" * 1000)
    monkeypatch.setattr(digest, "fs_type", lambda dev: fstype)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert digest.mappable(fd) is mapped
    finally:
        os.close(fd)


@pytest.mark.linux_facilities
def test_the_file_system_type_is_found_for_this_folder(tmp_path: Path) -> None:
    found = digest.fs_type(tmp_path.stat().st_dev)
    mounts = Path("/proc/self/mounts").read_text().split()
    assert found in mounts  # one of the types /proc lists, e.g. ext4, overlay or tmpfs


def test_no_lease_left_behind(tmp_path: Path, leases_ignored: None) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"y" * 5000)
    digest.hash_path(path)
    fd = os.open(path, os.O_WRONLY)  # would wait for lease-break-time (45 s) if a lease were still held
    os.close(fd)
    with open("/proc/locks") as locks:
        assert not any("LEASE" in line and line.split()[5].endswith(f":{path.stat().st_ino}") for line in locks)
