"""Which opens the kernel may read by FUSE passthrough, and the backing files they share.

The kernel's rules (fs/fuse/iomode.c, measured on 6.18), each one an EIO at ``open`` for the reader if broken:

* one backing file per inode: every passthrough open of a file while another is live must name the same one;
* no passthrough open while a page-cached (normal) open of the file is live, and no normal open — not even a
  direct-I/O one — while a passthrough open is live;
* ``keep_cache`` or ``direct_io`` with passthrough: the first fails, the second sends every read to the daemon.

So, per file name (the kernel's inode of the high-level API): the first open of a whole, verified blob with no
normal open live registers the blob as the backing file; later opens of the same version share it (counted,
closed on the last release); a normal open of the same version while it is live is served through it too. An
open of another version while it is live cannot be served either way: ContentChanged (EIO and a report line,
like the page table's refusal of another size). Downloads, local files and failed tracks always open normally;
once a download is a blob, new opens use passthrough only when no normal open of the file is left.

Any refusal by the kernel when registering (EPERM without CAP_SYS_ADMIN in the initial user namespace, ELOOP
for a blob on a stacked file system, ...) serves that open normally and turns the tier off for the mount,
with one log line: the reader never sees it.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from mixvfs.cache.errors import ContentChanged

log = logging.getLogger(__name__)


@dataclass
class _File:
    normal: int = 0  # open normally (page cache or direct I/O)
    through: int = 0  # open by passthrough, all on ``backing``
    backing: int | None = None
    key: str | None = None  # the version ``backing`` holds
    fd: int | None = None  # our own descriptor of the backing file: new opens can share it after an eviction


@dataclass
class BackingStats:
    opens: int = 0  # opens served by passthrough
    normal: int = 0  # opens of whole blobs served normally (a normal open of the file was live, or a refusal)
    refusals: dict[str, int] = field(default_factory=dict)  # errno name -> count


class BackingTable:
    def __init__(self, register: Callable[[int], int], unregister: Callable[[int], None]) -> None:
        self._register = register
        self._unregister = unregister
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self.off_reason: str | None = None
        self.stats = BackingStats()

    def open(self, name: str, key: str, blob_fd: int | None) -> int | None:
        """Account for an open of ``name`` serving version ``key``; ``blob_fd``: the descriptor of the whole,
        verified blob it serves, or None when it must be served normally. Returns the backing id the open
        must carry (passthrough), or None (serve it normally); raises ContentChanged when it can be neither."""
        with self._lock:
            state = self._files.setdefault(name, _File())
            if state.through:
                if state.key != key:
                    raise ContentChanged("the file changed while another program is reading it; copy it again "
                                         "once that program has closed it")
                state.through += 1
                self.stats.opens += 1
                return state.backing
            if blob_fd is not None and state.normal == 0 and self.off_reason is None:
                backing = self._try_register(blob_fd)
                if backing is not None:
                    state.through, state.backing, state.key, state.fd = 1, backing, key, os.dup(blob_fd)
                    self.stats.opens += 1
                    return backing
            if blob_fd is not None:
                self.stats.normal += 1
            state.normal += 1
            return None

    def held(self, name: str) -> tuple[str, int] | None:
        """While ``name`` is open by passthrough: the version its backing file holds and a new descriptor of
        that file (the caller's to close). A new open of ``name`` must then be served from it: once the blob
        is evicted (prune, ``--max-size``) the cache would download the track again, and a download cannot
        be opened beside a passthrough open — the kernel refuses it, and the reader got EIO for a track that
        had not changed. The backing file still holds those bytes, unlinked or not."""
        with self._lock:
            state = self._files.get(name)
            if state is None or not state.through or state.fd is None or state.key is None:
                return None
            return state.key, os.dup(state.fd)

    def _try_register(self, fd: int) -> int | None:
        try:
            return self._register(fd)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self.stats.refusals[name] = self.stats.refusals.get(name, 0) + 1
            why = "needs CAP_SYS_ADMIN in the initial user namespace" if exc.errno == errno.EPERM else (
                exc.strerror or os.strerror(exc.errno or 0))
            self.off_reason = f"the kernel refused a backing file ({name}: {why})"
            log.warning("FUSE passthrough off: %s; cached tracks are served by the daemon", self.off_reason)
            return None

    def release(self, name: str, backing: int | None) -> None:
        """An open of ``name`` made with :meth:`open` (``backing``: what it returned) was closed."""
        with self._lock:
            state = self._files.get(name)
            if state is None:
                return
            if backing is None:
                state.normal = max(0, state.normal - 1)
            elif state.through:
                state.through -= 1
                if state.through == 0:
                    self._unregister(backing)
                    if state.fd is not None:
                        os.close(state.fd)
                    state.backing = state.key = state.fd = None
            if state.normal == 0 and state.through == 0:
                del self._files[name]

    def live(self) -> dict[str, int]:
        """Open now: files with a backing file, opens by passthrough, opens served normally."""
        with self._lock:
            files = self._files.values()
            return {"backing_files": sum(1 for s in files if s.through),
                    "passthrough_opens": sum(s.through for s in files), "normal_opens": sum(s.normal for s in files)}
