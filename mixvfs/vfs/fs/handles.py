"""The open files of the mount: each kind of open answers its reads, and says itself how its failures count
(the track's, or this reader's alone) and whether the kernel may read it by passthrough."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from mixvfs.cache.download import Download
from mixvfs.cache.errors import ContentChanged
from mixvfs.cache.fetcher import Fetcher
from mixvfs.vfs.session.tracks import Track


class Handle:
    """An open file of the mount."""

    track: Track
    name: str  # the file's name when it was opened (the kernel's file; a live reload may rename the track)
    pinned: bool = False  # counted as a page-cached reader in the page table
    backing: int | None = None  # the passthrough backing file this open was given (see vfs/fs/backing.py)
    counted: bool = False  # counted in the backing table: release it there

    def span(self, size: int, offset: int) -> tuple[int, int]:
        """(descriptor, byte count) that hold bytes [offset, offset+size) now, for a zero-copy reply:
        libfuse reads them from the descriptor itself, without the GIL and without Python bytes."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def fails_alone(self) -> bool:
        """Whether a read error fails this reader only: the track and the bytes already held stay good for
        everybody else (a reader that gave up on a download still going, a local file that changed)."""
        return False

    @property
    def backing_fd(self) -> int | None:
        """The descriptor the kernel may read this open from by passthrough: whole, verified, immutable
        bytes only (never a download, nor a local file its owner may rewrite under the reader)."""
        return None


class BlobHandle(Handle):
    """A stored blob: immutable bytes, plain ``pread`` on a descriptor held for the life of the handle."""

    def __init__(self, track: Track, fd: int) -> None:
        self.track, self.name, self.fd = track, track.name, fd

    def span(self, size: int, offset: int) -> tuple[int, int]:
        return self.fd, size  # a short read at the end of the file is the end of the file

    def close(self) -> None:
        os.close(self.fd)

    @property
    def backing_fd(self) -> int | None:
        return self.fd


class LocalHandle(BlobHandle):
    """A local file, which its owner may rewrite while we read it: every read first checks that the file
    is still the version that was opened (a file replaced by rename keeps reading the old one whole)."""

    def __init__(self, track: Track, fd: int, stamp: tuple[int, ...]) -> None:
        super().__init__(track, fd)
        self.stamp = stamp

    def span(self, size: int, offset: int) -> tuple[int, int]:
        if file_stamp(os.fstat(self.fd)) != self.stamp:
            raise ContentChanged(f"local file {self.track.local_path} changed while it was being read")
        return self.fd, size

    def fails_alone(self) -> bool:
        return True

    @property
    def backing_fd(self) -> int | None:
        return None


class StreamHandle(Handle):
    """A cloud track still downloading: reads wait for just the bytes they need."""

    def __init__(self, track: Track, download: Download, fd: int, fetcher: Fetcher,
                 request_wait: float | None = None) -> None:
        self.track, self.name = track, track.name
        self.download = download
        self.fd = fd
        self.fetcher = fetcher
        self.request_wait = request_wait

    def span(self, size: int, offset: int) -> tuple[int, int]:
        return self.fd, self.download.wait_for(size, offset, deadline_after(self.request_wait)) - offset

    def close(self) -> None:
        os.close(self.fd)
        self.fetcher.release(self.download)

    def fails_alone(self) -> bool:
        return self.download.error is None  # the download goes on: only this reader gave up


@dataclass(frozen=True)
class Opened:
    """An open as the adapter answers it: the handle, and what the kernel may keep or must drop."""

    handle: Handle
    keep_cache: bool  # the kernel may keep the pages it has: they are of this very version
    direct_io: bool  # read to the end of this version, whatever size the kernel holds
    stale: bool = False  # the kernel's size or pages of this file may be another version's: drop them now
    backing: int | None = None  # FUSE passthrough: the kernel reads this open from that backing file


def deadline_after(wait: float | None) -> float | None:
    """The ``time.monotonic()`` by which a request waiting now must be answered (None: no bound)."""
    return None if wait is None else time.monotonic() + wait


def file_stamp(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file's bytes may have: a rewrite in place changes size or mtime; a replacement
    by rename changes the inode. (Not ctime: unlinking the replaced file changes it, not its bytes.)"""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
