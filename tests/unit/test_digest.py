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

    def progress(length):
        global truncate
        if truncate is not None:
            return
        # A shell's `>` (not truncate(1): it opens with O_NONBLOCK, so a lease makes it fail with EAGAIN).
        truncate = subprocess.Popen(["sh", "-c", ': > "$1"', "sh", str(path)])
        # Gate on the kernel's own state: the truncate is waiting for our lease (/proc/locks: BREAKING).
        inode = path.stat().st_ino
        deadline = time.monotonic() + 60  # hang guard only
        while not any("BREAKING" in line and line.split()[5].endswith(":%d" % inode)
                      for line in open("/proc/locks")):
            if truncate.poll() is not None:
                sys.exit("the truncate did not wait for the lease")
            assert time.monotonic() < deadline, "no lease break seen"
            time.sleep(0.005)

    print(digest.hash_path(path, progress=progress), flush=True)
    print(truncate.wait(timeout=60), path.stat().st_size)
""")


def test_a_truncate_while_hashing_waits_for_the_digest(tmp_path: Path) -> None:
    """Without the lease the truncate would cut the file under the mapping and the next span would end the
    hashing process with SIGBUS (run in a child so that this would fail the test, not kill pytest)."""
    data = os.urandom(4 * digest.MAP_SPAN)
    path = tmp_path / "track.wav"
    path.write_bytes(data)
    done = subprocess.run([sys.executable, "-c", TRUNCATE_MID_HASH, str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    got, truncate_status, size_after = done.stdout.split()
    assert got == xxhash.xxh3_128(data).hexdigest()  # all of the bytes as they were, none of the cut
    assert (truncate_status, size_after) == ("0", "0")  # the truncate went through once the lease was given back


def test_no_lease_left_behind(tmp_path: Path, leases_ignored: None) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"y" * 5000)
    digest.hash_path(path)
    fd = os.open(path, os.O_WRONLY)  # would wait for lease-break-time (45 s) if a lease were still held
    os.close(fd)
    with open("/proc/locks") as locks:
        assert not any("LEASE" in line and line.split()[5].endswith(f":{path.stat().st_ino}") for line in locks)
