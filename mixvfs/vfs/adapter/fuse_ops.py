"""The FUSE adapter: paths, handles, stat dicts and errno — nothing else. All behaviour is in
:class:`mixvfs.vfs.fs.sessionfs.SessionFS`. Uses mfusepy (libfuse3 when present) in its multithreaded loop."""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import stat
import threading
from collections.abc import Callable
from typing import Any

import mfusepy as fuse  # host.prefer_libfuse3() ran first: loading.libfuse_problem loads this module

from mixvfs import host
from mixvfs.vfs.adapter import passthrough
from mixvfs.vfs.adapter.errno_map import fuse_errors
from mixvfs.vfs.adapter.libfuse import (
    WAITING_READS,
    ExitWatch,
    KernelEntries,
    allow_waiting_reads,
    invalidate_path,
    raise_readahead,
)
from mixvfs.vfs.adapter.thread_states import ThreadStates
from mixvfs.vfs.fs import finder
from mixvfs.vfs.fs.backing import BackingTable
from mixvfs.vfs.fs.handles import Handle
from mixvfs.vfs.fs.sessionfs import BLOCK_SIZE, SessionFS
from mixvfs.vfs.session.tracks import Kind, Track

log = logging.getLogger(__name__)

FuseOSError = fuse.FuseOSError
LIBFUSE_MAJOR: int = fuse.fuse_version_major
guard = fuse_errors(FuseOSError)
XATTR_PREFIX = "user.mixvfs."
XATTR_PREFIX_BYTES = XATTR_PREFIX.encode()
# Linux's xattr namespaces other than ``user.``, which mixvfs holds nothing in and can store nothing in: a name
# there is answered ENOTSUP (the namespace is not supported), as by a Linux file system without a handler for
# it, not ENODATA (supported, none on this file). GNU ls remembers ENOTSUP per file system and asks no more:
# `ls -l` then sends 2 questions in all instead of 2 per file (security.selinux, the POSIX ACL), each a round
# trip through libfuse into Python that the kernel never caches for FUSE. With SELinux on, the kernel answers
# security.selinux itself and never asks us. macOS's names (com.apple.*) are none of these: ENOATTR as before.
UNSUPPORTED_NAMESPACES = ("security.", "system.", "trusted.")
UNSUPPORTED_NAMESPACES_BYTES = tuple(prefix.encode() for prefix in UNSUPPORTED_NAMESPACES)
FUSE_READDIR_PLUS = 1  # libfuse 3's readdir flags: the kernel asks for attributes too
FUSE_FILL_DIR_PLUS = 2  # the filler's flag: this entry's stat is complete
NEVER_INDEX_PATH = "/" + finder.NEVER_INDEX
EMPTY_FH = 0  # the handle of the empty marker file (track handles start at 1)


class MixOps(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, core: SessionFS, *, on_ready: Callable[[], None], root_xattrs: dict[str, str]) -> None:
        self.core = core
        self.on_ready = on_ready
        self.root_xattrs = root_xattrs
        self.uid, self.gid = os.getuid(), os.getgid()
        self._handles: dict[int, Handle] = {}
        self._next = 1
        self._lock = threading.Lock()
        self.passthrough_off: str | None = "the mount has not started"  # why not, or None once on
        self.daemon_reads = 0  # read requests that reached the daemon (passthrough opens send none)
        # Counts for the root's ``user.mixvfs.requests`` (racing increments may be lost; 0 means none came).
        self.file_getattrs = 0  # getattr of a file: each LOOKUP and GETATTR the kernel sends for one
        self.listed_with_attributes = 0  # entries a READDIRPLUS listing handed over with their attributes
        self.foreign_xattrs = 0  # getxattr of names not ours (`ls -l` asks security.selinux and the ACL)
        self._listings: dict[int, list[Track]] = {}  # open directory handle -> its snapshot of the tracks
        self.kernel_entries: KernelEntries | None = None  # set in init: tells the kernel what a reload changed
        self.exit_watch: ExitWatch | None = None  # set in init: the loop is ending, waiting reads must fail now
        self.thread_states: ThreadStates | None = None  # set by MixFUSE: libfuse's threads' Python states

    # -- lifecycle ------------------------------------------------------------------------------------

    mountpoint = ""  # set by run()
    waiting_reads = 0  # set by run(): 0 leaves the kernel's limit on reads in flight
    passthrough_setting = "auto"  # set by run(): "off" keeps every read in the daemon

    def init_with_config(self, conn: Any, config: Any) -> None:
        """libfuse's init; mfusepy hands the connection's parameters only to this form of it."""
        if conn is not None and self.waiting_reads:
            allow_waiting_reads(conn, self.waiting_reads)
        self._negotiate_passthrough(conn)
        # Here, in a request of this mount, libfuse's context names it: a live reload tells the kernel later.
        self.kernel_entries = KernelEntries.of_this_mount(fuse._libfuse, LIBFUSE_MAJOR)
        self.core.kernel = self.kernel_entries
        # A stop signal or an unmount only sets libfuse's exit flag, and its loop then waits for the reads under
        # way: the core fails those waiting for downloads, so that the loop (and the daemon) end at once.
        self.exit_watch = ExitWatch.of_this_mount(fuse._libfuse, on_exit=self.core.stop_now)
        if self.mountpoint:
            # The kernel applies libfuse's init reply (which caps readahead) only after init returns.
            threading.Thread(target=self._tune_after_init, name="readahead", daemon=True).start()
        self.on_ready()

    def _tune_after_init(self) -> None:
        try:
            os.stat(self.mountpoint)  # answered only once the kernel has processed the init reply
        except OSError:
            return
        raise_readahead(self.mountpoint)

    def _negotiate_passthrough(self, conn: Any) -> None:
        """FUSE passthrough for cached tracks when everything allows it; else one line saying why not."""
        why = self._passthrough_problem(conn)
        if why is None:
            device = passthrough.Device(passthrough.session_fd(fuse._libfuse))
            self.core.backings = BackingTable(device.open_backing, device.close_backing)
            self.passthrough_off = None
            log.info("FUSE passthrough on (libfuse %s): the kernel reads cached tracks from the cache's blob files",
                     passthrough.library_version(fuse._libfuse))
        else:
            self.passthrough_off = why
            log.info("FUSE passthrough off: %s", why)

    def _passthrough_problem(self, conn: Any) -> str | None:
        if self.passthrough_setting == "off":
            return "the passthrough setting is off"
        if conn is None:
            return "libfuse gave no connection parameters"
        platform_problem = host.passthrough_possible()
        if platform_problem is not None:
            return platform_problem
        problem = passthrough.layout_problem((fuse.fuse_version_major, fuse.fuse_version_minor),
                                             fuse.fuse_file_info, fuse.fuse_conn_info)
        if problem is None and not passthrough.has_sys_admin():
            problem = "not running as root (the kernel lets only CAP_SYS_ADMIN name backing files)"
        return problem if problem is not None else passthrough.want_passthrough(fuse._libfuse, conn)

    def passthrough_status(self) -> dict[str, Any]:
        """The root's ``user.mixvfs.passthrough``: on or off (and why), opens served each way."""
        table = self.core.backings
        why = self.passthrough_off if table is None else table.off_reason
        status: dict[str, Any] = {"state": "off" if why else "on", "why": why, "daemon_reads": self.daemon_reads}
        if table is not None:
            status.update(opens=table.stats.opens, normal=table.stats.normal, refusals=table.stats.refusals,
                          **table.live())
        return status

    def destroy(self, path: str) -> None:
        if self.exit_watch is not None:  # first, with the notices: libfuse frees the session after this returns
            self.exit_watch.close()
        if self.kernel_entries is not None:
            self.core.kernel = None
            self.kernel_entries.close()
        table = self.core.backings
        if table is not None:
            log.info("FUSE passthrough: %d opens read by the kernel, %d cached opens served by the daemon",
                     table.stats.opens, table.stats.normal)
        self.core.close()

    def answered_eio(self, operation: str, args: tuple[Any, ...]) -> None:
        """An EIO went to a program (see errno_map.EioWitness): counted in the report against its track."""
        track: Track | None = None
        path = next((a for a in args if isinstance(a, str)), None)
        if path is not None and path.count("/") == 1 and path != "/":
            track = self.core.lookup(path[1:])
        if track is None:
            info = next((a for a in args if hasattr(a, "fh")), None)
            handle = self._handles.get(info.fh) if info is not None else None
            track = handle.track if handle is not None else None
        self.core.answered_eio(track, operation)

    # -- names and attributes ------------------------------------------------------------------------

    def _track(self, path: str) -> Track:
        name = path[1:]
        # Finder's and Spotlight's own names are never tracks: no lookup (vfs/fs/finder.py).
        track = self.core.lookup(name) if path.count("/") == 1 and not finder.is_probe(name) else None
        if track is None:
            raise FuseOSError(errno.ENOENT)
        return track

    @guard
    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        if path == "/":
            # 0755 like rclone: `cp -r MNT/. OUT` gives OUT the root's mode, and the user must be able to add
            # to and clean up their own export; writes here still fail with EROFS.
            return self._stat(stat.S_IFDIR | 0o755, 0, int(self.core.mtime * 1e9), nlink=2)
        if path == NEVER_INDEX_PATH:  # found by name, never listed: no export carries it
            return self._stat(stat.S_IFREG | 0o444, 0, int(self.core.mtime * 1e9))
        # An open file is asked about by its handle when the kernel has one (fstat, reads revalidating
        # the page cache): answer from the handle's track, which a live reload may have renamed or removed.
        handle = self._handles.get(fh.fh) if fh is not None and hasattr(fh, "fh") else None
        self.file_getattrs += 1
        return self._file_stat(*self.core.attributes(handle.track if handle is not None else self._track(path)))

    def _file_stat(self, size: int, mtime: float) -> dict[str, int]:
        # 0644 like other read-only network mounts (writes still fail with EROFS): with 0444 every exported
        # copy came out read-only, and deleting an export folder asked about each file.
        return self._stat(stat.S_IFREG | 0o644, size, int(mtime * 1e9))

    def _stat(self, mode: int, size: int, mtime_ns: int, nlink: int = 1) -> dict[str, int]:
        return {"st_mode": mode, "st_nlink": nlink, "st_size": size, "st_uid": self.uid, "st_gid": self.gid,
                "st_mtime": mtime_ns, "st_ctime": mtime_ns, "st_atime": mtime_ns,
                "st_blksize": BLOCK_SIZE, "st_blocks": (size + 511) // 512}

    @guard
    def readdir(self, path: str, fh: int) -> list[str]:
        if path != "/":
            raise FuseOSError(errno.ENOTDIR)
        return [".", "..", *self.core.names()]

    @guard
    def opendir(self, path: str) -> int:
        if path != "/":
            raise FuseOSError(errno.ENOTDIR)
        with self._lock:
            fh, self._next = self._next, self._next + 1
        return int(fh)

    @guard
    def releasedir(self, path: str, fh: int) -> int:
        with self._lock:
            self._listings.pop(fh, None)
        return 0

    @guard
    def listing(self, fh: int, offset: int) -> list[Track]:
        """The tracks an open directory lists. One snapshot per open directory, taken when it is read from
        the start, so that the offsets of a listing read in parts stay valid across a live reload."""
        with self._lock:
            if offset == 0 or fh not in self._listings:
                self._listings[fh] = self.core.listing()
            return self._listings[fh]

    @guard
    def listed_stat(self, track: Track) -> dict[str, int] | None:
        """What ``getattr`` would answer for ``track`` now, when that needs no request to a server (a
        READDIRPLUS entry then spares the kernel its LOOKUP and GETATTR); None: the name goes alone."""
        known = self.core.known_attributes(track)
        return None if known is None else self._file_stat(*known)

    def requests_status(self) -> dict[str, int]:
        """The root's ``user.mixvfs.requests``: how the kernel learnt about the files' attributes, and how many
        callbacks found their libfuse thread's Python state kept by an earlier one."""
        states = self.thread_states
        return {"file_getattrs": self.file_getattrs, "listed_with_attributes": self.listed_with_attributes,
                "foreign_xattrs": self.foreign_xattrs,
                "thread_states_kept": states.kept if states else 0,
                "callbacks_on_kept_states": states.reused if states else 0}

    @guard
    def statfs(self, path: str) -> dict[str, int]:
        blocks = (self.core.total_size() + BLOCK_SIZE - 1) // BLOCK_SIZE
        return {"f_bsize": BLOCK_SIZE, "f_frsize": BLOCK_SIZE, "f_blocks": blocks, "f_bfree": 0, "f_bavail": 0,
                "f_files": len(self.core.names()), "f_ffree": 0, "f_namemax": 255}

    @guard
    def access(self, path: str, amode: int) -> int:
        if path not in ("/", NEVER_INDEX_PATH):
            self._track(path)
        if amode & os.W_OK:
            raise FuseOSError(errno.EROFS)
        return 0

    # -- reading --------------------------------------------------------------------------------------

    @guard
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise FuseOSError(errno.EROFS)
        if path == NEVER_INDEX_PATH:
            fi.fh = EMPTY_FH
            return 0
        track = self._track(path)
        opened = self.core.open(track, previewer=self._previewer() if track.kind is Kind.CLOUD else None)
        if opened.stale:  # another version's size or pages may be in the kernel: before the opener stats it
            invalidate_path(fuse._libfuse, path)
        with self._lock:
            fh, self._next = self._next, self._next + 1
            self._handles[fh] = opened.handle
        fi.fh = fh
        fi.keep_cache = int(opened.keep_cache)
        fi.direct_io = int(opened.direct_io)
        if opened.backing is not None:
            passthrough.set_backing_id(fi, opened.backing)
        return 0

    def _previewer(self) -> str | None:
        """The requesting process's name if it is a Spotlight importer or QuickLook thumbnailer."""
        name = host.process_name(fuse.fuse_get_context()[2])
        return name if finder.is_previewer(name) else None

    def read(self, *args: Any) -> int:
        """Never called, only present: mfusepy installs libfuse's read callback for an operations object that
        has ``read``, and :meth:`MixFUSE.read` answers that callback by :meth:`read_into`."""
        raise NotImplementedError("MixFUSE.read answers reads through read_into")

    @guard
    def read_into(self, fi: Any, buf: Any, size: int, offset: int) -> int:
        """The bytes themselves (after waiting for a download to reach them), pread straight into libfuse's
        reply buffer (see :class:`MixFUSE`). Not ``read_buf``: naming a descriptor for libfuse to pread made a
        copy from the cache take 1.2-1.5x as long with 1.8x the daemon's CPU, because libfuse (without splice)
        preads it into a fresh page-aligned buffer per request, faulting in every page (BENCHMARKS.md,
        "read_buf against plain read")."""
        self.daemon_reads += 1  # a count for the status (a racing increment may be lost; 0 means none came)
        if fi.fh == EMPTY_FH:
            return 0
        target = (ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))
        return self.core.read_into(self._handles[fi.fh], memoryview(target).cast("B"), offset)

    @guard
    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            handle = self._handles.pop(fi.fh, None)
        if handle is not None:
            self.core.release(handle)
        return 0

    # -- extended attributes (status of each track) -------------------------------------------------

    def _root_value(self, key: str) -> str | None:
        """One root xattr, computed only when asked: ``status`` walks every track's record, which a question
        for ``pid`` (asked by every `mixvfs` command that finds a mount) must not pay on a big session."""
        if key in self.root_xattrs:
            return self.root_xattrs[key]
        if key == "status":
            return json.dumps(self.core.live_status(), ensure_ascii=False)
        if key == "passthrough":
            return json.dumps(self.passthrough_status())
        if key == "requests":
            return json.dumps(self.requests_status())
        return None

    @guard
    def listxattr(self, path: str) -> list[str]:
        if path == "/":
            return [XATTR_PREFIX + key for key in [*self.root_xattrs, "status", "passthrough", "requests"]]
        if path == NEVER_INDEX_PATH:
            return []
        return [XATTR_PREFIX + key for key in self.core.track_xattrs(self._track(path))]

    def foreign_xattr(self, unsupported: bool) -> int:
        """The errno for a getxattr of a name not ours: ENOTSUP in a namespace mixvfs does not support (see
        ``UNSUPPORTED_NAMESPACES``), else ENOATTR. Such a question also says the folder is being browsed."""
        self.foreign_xattrs += 1
        self.core.browsing()
        return errno.ENOTSUP if unsupported else int(fuse.ENOATTR)

    @guard
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if not name.startswith(XATTR_PREFIX):
            raise FuseOSError(self.foreign_xattr(name.startswith(UNSUPPORTED_NAMESPACES)))
        self.core.browsing()
        key = name.removeprefix(XATTR_PREFIX)
        value = self._root_value(key) if path == "/" else self.core.track_xattrs(self._track(path)).get(key)
        if value is None:
            raise FuseOSError(fuse.ENOATTR)
        return value.encode()

    # -- a read-only filesystem ------------------------------------------------------------------------

    def _read_only(self, *args: Any) -> int:
        raise FuseOSError(errno.EROFS)

    chmod = chown = create = link = mkdir = mknod = rename = rmdir = symlink = _read_only
    truncate = unlink = utimens = write = setxattr = removexattr = _read_only


class MixFUSE(fuse.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE, answering a read as a C filesystem does: ``pread`` into the buffer libfuse hands the
    callback. mfusepy's own ``read`` takes Python ``bytes`` from the operation and copies them into that
    buffer: a 1 MiB allocation and a second copy of every byte per request, that no C floor pays.

    Each libfuse thread keeps its Python thread state across callbacks (:class:`ThreadStates`), up to
    ``kept_threads`` of them over the process's life."""

    def __init__(self, operations: MixOps, mountpoint: str, *, kept_threads: int, **options: Any) -> None:
        self.thread_states = operations.thread_states = ThreadStates(kept_threads)
        super().__init__(operations, mountpoint, **options)

    def _wrapper(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """mfusepy's entry to every callback."""
        self.thread_states.keep()
        return super()._wrapper(func, *args, **kwargs)

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        return int(self.operations.read_into(fip.contents, buf, size, offset))

    def getxattr(self, path: bytes, name: bytes, value: Any, size: int, *args: Any) -> int:
        """Names that are not ours (``ls -l`` asks for ``security.selinux`` and the POSIX ACL, which the kernel
        caches for no FUSE file system without FUSE_POSIX_ACL) are answered before decoding anything or
        raising (an exception through mfusepy's wrapper costs more than the answer)."""
        if not name.startswith(XATTR_PREFIX_BYTES):
            ops: MixOps = self.operations
            return -ops.foreign_xattr(name.startswith(UNSUPPORTED_NAMESPACES_BYTES))
        return int(super().getxattr(path, name, value, size, *args))

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        """The listing with offsets (entry ``i`` is followed by offset ``i + 1``), and for READDIRPLUS
        each file's attributes where known: libfuse then answers the kernel's LOOKUP of each entry itself
        (mfusepy passes names only). Offsets matter: libfuse 3.14 sends attributes handed over without one
        with inode 0, which the kernel ignores (fixed in 3.17)."""
        ops: MixOps = self.operations
        tracks = ops.listing(fip.contents.fh, offset)
        plus = bool(flags & FUSE_READDIR_PLUS)
        st = fuse.c_stat()
        for index in range(offset, len(tracks) + 2):
            ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
            fill = 0
            if index < 2:
                name, st.st_mode = ".." if index else ".", stat.S_IFDIR
            else:
                track = tracks[index - 2]
                name, attrs = track.name, ops.listed_stat(track) if plus else None
                if attrs is None:
                    st.st_mode = stat.S_IFREG
                else:
                    fuse.set_st_attrs(st, attrs, use_ns=True)
                    fill = FUSE_FILL_DIR_PLUS
            if filler(buf, name.encode(self.encoding, self.errors), st, index + 1, fill) != 0:
                break  # the reply is full: the kernel asks again from this entry's offset
            if fill:
                ops.listed_with_attributes += 1
        return 0


def run(ops: MixOps, mountpoint: str, *, foreground: bool = True, threads: int = 16,
        waiting_reads: int = WAITING_READS, attr_timeout: float = 1.0, nonempty: bool = False,
        debug: bool = False, passthrough: str = "auto", platform_options: dict[str, str | bool] | None = None) -> None:
    """Serve until unmounted. libfuse installs SIGTERM/SIGINT handlers that unmount cleanly.

    ``threads`` serve what never waits on the network (lookups, stat, listings, opens, local and cached
    reads); up to ``waiting_reads`` reads more may wait for downloads, each on a thread of its own. libfuse 3
    starts threads only when every one is busy and ends those left idle beyond ``threads``; libfuse 2 has no
    cap (it keeps 10 idle). ``platform_options``: the system's own (macFUSE's, from ``host.mount_options``)."""
    options = fuse_options(threads=threads, waiting_reads=waiting_reads, attr_timeout=attr_timeout,
                           nonempty=nonempty, debug=debug, foreground=foreground,
                           platform_options=platform_options or {})
    ops.waiting_reads = waiting_reads
    ops.passthrough_setting = passthrough
    ops.mountpoint = os.path.realpath(mountpoint)
    # Twice the idle threads libfuse keeps: the states of threads it ended after a burst of waiting reads
    # stay behind (thread_states.py), and the limit bounds them.
    MixFUSE(ops, mountpoint, kept_threads=2 * threads, raw_fi=True, **options)


def fuse_options(*, threads: int, waiting_reads: int, attr_timeout: float, nonempty: bool, debug: bool = False,
                 foreground: bool = True, platform_options: dict[str, str | bool],
                 libfuse_major: int = LIBFUSE_MAJOR) -> dict[str, Any]:
    """The mount options handed to mfusepy (which makes them libfuse's ``-o`` list)."""
    options: dict[str, Any] = {
        "foreground": foreground,
        "ro": True,
        "fsname": "mixvfs",
        "subtype": "mixvfs",
        "attr_timeout": attr_timeout,
        "entry_timeout": attr_timeout,
        "negative_timeout": 0,
        "debug": debug,
    }
    if libfuse_major >= 3:
        options["max_threads"] = threads + waiting_reads
        options["max_idle_threads"] = threads  # libfuse 3.14 warns about its own default (UINT_MAX)
    elif nonempty:
        options["nonempty"] = True  # libfuse 2 (macFUSE's API) refuses a non-empty mountpoint without it
    options.update(platform_options)
    return options
