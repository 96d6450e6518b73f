"""The content digest of the cache (XXH3-128): one hasher, fed while bytes stream, from a descriptor, or from
a whole file mapped under a read lease. Its own module so that what only hashes (``mixvfs check-export``) needs
xxhash and nothing of the store."""

from __future__ import annotations

import functools
import mmap
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from mixvfs import host

HASH_CHUNK = 1 << 20  # xxhash releases the GIL only for inputs over 64 KiB; 1 MiB is its sweet spot.


def new_hasher() -> Any:
    return xxhash.xxh3_128()


def hash_fd(fd: int, *, size: int | None = None, progress: Callable[[int], None] | None = None) -> str:
    """Digest of a whole file through a descriptor (pread: does not move a shared offset); with ``size``,
    of at most its first ``size`` + one chunk bytes (enough to tell a longer file from the blob).
    ``progress`` is told the length of each chunk hashed (``mixvfs check-export``'s display)."""
    return str(hash_prefix(fd, None if size is None else size + 1, progress=progress).hexdigest())


def hash_prefix(fd: int, length: int | None, *, progress: Callable[[int], None] | None = None) -> Any:
    """A hasher fed with the first ``length`` bytes of ``fd`` (all of it for None), ready for more."""
    hasher = new_hasher()
    feed(fd, hasher, 0, length, progress)
    return hasher


def feed(fd: int, hasher: Any, offset: int, end: int | None, progress: Callable[[int], None] | None) -> None:
    """Hash ``fd`` from ``offset`` up to ``end`` (its end for None) with ``pread``, into ``hasher``."""
    while end is None or offset < end:
        want = HASH_CHUNK if end is None else min(HASH_CHUNK, end - offset)
        chunk = os.pread(fd, want, offset)
        if not chunk:
            break
        hasher.update(chunk)
        offset += len(chunk)
        if progress is not None:
            progress(len(chunk))


MAP_SPAN = 8 << 20  # bytes hashed per update from a mapping; the lease is looked at between spans
# Local file systems, where every change to a file goes through this kernel, which honours the lease. On a
# network or FUSE file system the file can change behind the kernel's back (a truncate on the server) and a
# mapping would end in SIGBUS whatever the lease says: those are read.
LEASE_HONOURING = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "bcachefs"})


def hash_path(path: Path, *, progress: Callable[[int], None] | None = None) -> str:
    """Digest of the whole file at ``path``, read once.

    Mapped when it is safe, read with ``pread`` otherwise. Hashing a mapping skips the copy out of the page
    cache (about twice ``pread``'s rate, faster than ``xxhsum``), but a file cut short under a mapping kills
    the process with SIGBUS. So a file is mapped only on a local file system and under a read lease: the lease
    is refused while anyone has the file open for writing, and another process's later open-for-writing or
    truncate must wait for it. The kernel waits only ``/proc/sys/fs/lease-break-time`` (45 s) before it takes
    the lease away, so between spans the lease is looked at: once a writer is waiting, the rest of the file is
    read with ``pread`` (a file cut short then just hashes differently) and the lease given back at once."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        host.advise_sequential(fd)  # a big readahead: one pass, in order
        hasher = new_hasher()
        offset = 0
        if mappable(fd) and take_read_lease(fd):
            try:
                offset = feed_mapped(fd, hasher, progress)
            finally:
                give_back_lease(fd)
        feed(fd, hasher, offset, None, progress)  # the rest (all of it when nothing was mapped)
        return str(hasher.hexdigest())
    finally:
        os.close(fd)


def ignore_lease_breaks() -> None:
    """A lease break is signalled with SIGIO, whose default action ends the process; a command that hashes
    with :func:`hash_path` calls this once, from its main thread. Ignoring the signal is safe: the lease itself
    is looked at between spans (:func:`feed_mapped`)."""
    signal.signal(signal.SIGIO, signal.SIG_IGN)


def mappable(fd: int) -> bool:
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and st.st_size > 0 and fs_type(st.st_dev) in LEASE_HONOURING


@functools.cache
def fs_type(dev: int) -> str | None:
    """The file system type of device ``dev`` (None when it cannot be told: then nothing is mapped)."""
    return host.file_system_type(dev)


def take_read_lease(fd: int) -> bool:
    if signal.getsignal(signal.SIGIO) is not signal.SIG_IGN:
        return False  # a lease break would end the process: read instead
    return host.take_read_lease(fd)


lease_held = host.lease_held
give_back_lease = host.give_back_lease


def feed_mapped(fd: int, hasher: Any, progress: Callable[[int], None] | None) -> int:
    """Hash ``fd`` from a mapping, span by span, while the lease is held; the offset reached."""
    size = os.fstat(fd).st_size
    offset = 0
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
        mapped.madvise(mmap.MADV_SEQUENTIAL)
        with memoryview(mapped) as view:
            while offset < size and lease_held(fd):
                with view[offset:offset + MAP_SPAN] as span:
                    hasher.update(span)
                    length = len(span)
                offset += length
                if progress is not None:
                    progress(length)
    return offset
