"""The content digest of the cache (XXH3-128): one hasher, fed while bytes stream, from a descriptor, or from
a whole file mapped under a read lease. Its own module so that what only hashes (``mixvfs check-export``) needs
xxhash and nothing of the store."""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

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
    offset = 0
    while length is None or offset < length:
        want = HASH_CHUNK if length is None else min(HASH_CHUNK, length - offset)
        chunk = os.pread(fd, want, offset)
        if not chunk:
            break
        hasher.update(chunk)
        offset += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return hasher


MAP_SPAN = 8 << 20  # bytes hashed per update (and per progress step) from a mapping


def hash_path(path: Path, *, progress: Callable[[int], None] | None = None) -> str:
    """Digest of the whole file at ``path``, read once.

    Mapped when it is safe, read with ``pread`` otherwise. Hashing a mapping skips the copy out of the page
    cache (about twice ``pread``'s rate, faster than ``xxhsum``), but a file cut short under a mapping kills
    the process with SIGBUS. So it is mapped only under a read lease: the lease is refused while anyone has
    the file open for writing, and it makes another process's later open-for-writing or truncate wait until
    we are done (the kernel tells the holder with SIGIO; see :func:`ignore_lease_breaks`)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a big readahead: one pass, in order
        if not take_read_lease(fd):
            return hash_fd(fd, progress=progress)
        try:
            return hash_mapped(fd, progress)
        finally:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    finally:
        os.close(fd)


def ignore_lease_breaks() -> None:
    """A lease break is signalled with SIGIO, whose default action ends the process; a command that hashes
    with :func:`hash_path` calls this once, from its main thread. Ignoring it is safe: the breaker's open waits
    (at most ``/proc/sys/fs/lease-break-time``) until the file is hashed and its lease given back."""
    signal.signal(signal.SIGIO, signal.SIG_IGN)


def take_read_lease(fd: int) -> bool:
    if signal.getsignal(signal.SIGIO) is not signal.SIG_IGN:
        return False  # a lease break would end the process: read instead
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:  # EAGAIN: open for writing somewhere; EACCES: not our file; EINVAL: no leases here (FUSE…)
        return False
    return True


def hash_mapped(fd: int, progress: Callable[[int], None] | None) -> str:
    size = os.fstat(fd).st_size
    hasher = new_hasher()
    if size == 0:
        return str(hasher.hexdigest())  # an empty file cannot be mapped
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
        mapped.madvise(mmap.MADV_SEQUENTIAL)
        with memoryview(mapped) as view:
            for offset in range(0, size, MAP_SPAN):
                with view[offset:offset + MAP_SPAN] as span:
                    hasher.update(span)
                if progress is not None:
                    progress(min(MAP_SPAN, size - offset))
    return str(hasher.hexdigest())
