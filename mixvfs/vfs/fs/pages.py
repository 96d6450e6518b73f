"""What the kernel may hold for each file of the mount, and what each open may let it keep.

The kernel caches a FUSE file's pages and size per file (inode), across opens, and trusts them when an
open says ``keep_cache``. A track's bytes can change under the mount — a local file re-rendered in place
or replaced by rename, a cloud track re-rendered on the server — so every open names the *version* it
serves (``Version.key``: a local file's inode, size, mtime and ctime; a blob's digest; one download), and:

* pages are kept only when the open serves the version they were read from (else the kernel drops them);
* an open whose size differs from the size the kernel was last told reads with direct I/O, to the end
  of *its* version, so a stale size can neither cut a copy short nor pad it;
* while a page-cached reader of one version is open, ``stat`` keeps answering that version's size and
  mtime (a new size would make the kernel cut that reader off at it: a short copy with exit 0); a new
  open of another version of the same size reads with direct I/O beside it, without touching its pages,
  and one of another size is refused (EIO) until that reader is done — never a wrong copy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from mixvfs.cache.download import Download
from mixvfs.cache.errors import ContentChanged


@dataclass(frozen=True)
class Version:
    key: str  # what the bytes are; equal keys mean identical bytes
    size: int | None  # None: not known yet (a download whose server sends no length)
    mtime: float


@dataclass(frozen=True)
class Admission:
    keep_cache: bool
    direct_io: bool
    pinned: bool  # counted as a page-cached reader: call ``release`` when the file is closed
    stale: bool  # the kernel may hold another size or pages for this file: invalidate them now


@dataclass(slots=True)
class _File:
    """A file opened at least once in this mount."""

    key: str | None = None  # the version whose pages the kernel may hold
    size: int | None = None  # that version's size: what ``stat`` answers while it has readers
    mtime: float = 0.0
    readers: int = 0  # open page-cached readers of ``key``


class PageTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        # The size ``stat`` last told the kernel, per file (it may keep it for the attribute timeout): set for
        # every file a listing shows, so a size alone, not a ``_File`` (~110 bytes more per file: 11 MB
        # during ``ls -l`` of 100 000 tracks).
        self._told: dict[str, int | None] = {}

    def admit(self, name: str, version: Version) -> Admission:
        """How ``name`` may be opened to serve ``version``; raises ContentChanged when it cannot be
        served beside another version's reader."""
        with self._lock:
            state = self._files.setdefault(name, _File())
            if state.readers and state.key != version.key:
                if version.size != state.size:
                    raise ContentChanged("the file changed while another program is reading it; copy it again "
                                         "once that program has closed it")
                # keep_cache: leave the other reader's pages be; nothing is invalidated under it.
                return Admission(keep_cache=True, direct_io=True, pinned=False, stale=False)
            keep = state.key == version.key
            stale = version.size is None or version.size != self._told.get(name)
            state.key, state.size, state.mtime = version.key, version.size, version.mtime
            state.readers += 1
            return Admission(keep_cache=keep, direct_io=stale, pinned=True, stale=stale or not keep)

    def release(self, name: str) -> None:
        with self._lock:
            state = self._files.get(name)
            if state is not None and state.readers > 0:
                state.readers -= 1

    def answer(self, name: str, size: int | None, mtime: float) -> tuple[int | None, float]:
        """What ``stat`` tells the kernel: the file as it is now (``size``, ``mtime``) — or, while a
        page-cached reader is open, that reader's version."""
        with self._lock:
            state = self._files.get(name)
            if state is not None and state.readers:
                size, mtime = state.size, state.mtime
            self._told[name] = size
            return size, mtime

    def pinned(self, name: str) -> bool:
        with self._lock:
            state = self._files.get(name)
            return state is not None and state.readers > 0

    def relabel(self, old_key: str, new_key: str) -> None:
        """A download finished as a blob: pages read from the download are the blob's bytes."""
        with self._lock:
            for state in self._files.values():
                if state.key == old_key:
                    state.key = new_key


def blob_key(digest: str) -> str:
    """The version key of a stored blob: the same bytes whichever track or download they came from."""
    return f"blob:{digest}"


def download_key(download: Download) -> str:
    """The version key of a download under way; relabelled to its blob's key when it is committed."""
    return f"download:{download.serial}"
