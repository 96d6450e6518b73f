"""Low-level libfuse calls that mfusepy does not offer: raising the mount's readahead, how many reads may wait
on downloads at once, making the kernel forget a changed file's size or the names a live reload changed, and
learning at once that the loop is ending (a stop signal, an unmount).
ctypes only; no FUSE binding here.

(Answering reads with a descriptor through ``read_buf`` and a hand-declared ``fuse_bufvec`` was measured
slower than plain ``read`` and removed: BENCHMARKS.md, "read_buf against plain read".)"""

from __future__ import annotations

import ctypes
import errno
import logging
import threading
from collections.abc import Callable
from typing import Any

from mixvfs import host

log = logging.getLogger(__name__)

# The kernel's readahead for a FUSE mount is 128 KiB (libfuse can only lower it); 4 MiB makes a first read
# arrive as 1 MiB requests with several in flight (1 GiB fresh-mount read: 0.85 s -> 0.49 s, BENCHMARKS.md).
READAHEAD_KIB = 4096

# Reads of page-cached files (all reads but direct I/O) reach the daemon as the kernel's "background"
# requests, of which it keeps only max_background (12 by default) in flight per mount; the rest wait in the
# kernel, whatever file they are for. Thirty readers parked on queued downloads held all 12, and a read of a
# cached track took 48 s. A waiting reader holds 1-2 requests with libfuse 3 (1 MiB each; 8-16 of
# 128 KiB with libfuse 2), each on a libfuse thread of its own (~70 KiB of memory while it waits). With 1024
# the mount answered in under 0.2 s with 700 readers of 2 MB tracks waiting (822 requests, 60 MB of threads).
WAITING_READS = 1024


def raise_readahead(mountpoint: str, kib: int = READAHEAD_KIB) -> bool:
    """Set the mount's readahead (Linux sysfs, root only; elsewhere the system's default stays)."""
    done = host.set_readahead(mountpoint, kib)
    if not done:
        log.debug("readahead of %s left at the system's default", mountpoint)
    return done


def allow_waiting_reads(conn: Any, count: int) -> None:
    """Ask the kernel, in libfuse's reply to its init, to keep ``count`` background requests in flight.

    ``conn`` is libfuse's ``struct fuse_conn_info`` (libfuse 2.9 and 3 both have the two fields), filled in
    during init. Linux applies it to this mount only, lowered to ``/sys/module/fuse/parameters/max_user_bgreq``
    for a mount without CAP_SYS_ADMIN; libfuse caps it at 65535; macFUSE has its own queueing (untested)."""
    conn.max_background = count
    # Past this many requests in flight, readahead asks only for the pages being read, not the ones after:
    # a reader parked on a download then holds one request, not two (kernel default: 3/4 of the maximum;
    # 8 cached copies at once keep up to ~100 in flight, measured: they still read ahead).
    conn.congestion_threshold = count // 4


def invalidate_path(lib: Any, path: str) -> bool:
    """Make the kernel forget the attributes and pages it holds for ``path`` (libfuse 3's
    ``fuse_invalidate_path``), so the opener's next ``fstat`` — and the size ``sendfile`` stops at — come
    from the daemon again. Only from inside a request handler (it needs the request's context). False
    where libfuse has no such call (libfuse 2: there, direct I/O alone serves the new version to ``read``)."""
    invalidate = getattr(lib, "fuse_invalidate_path", None)
    if invalidate is None:
        return False
    invalidate.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    invalidate.restype = ctypes.c_int
    fuse = lib.fuse_get_context().contents.fuse
    result = int(invalidate(fuse, path.encode("utf-8", "surrogateescape")))
    if result != 0 and result != -errno.ENOENT:  # ENOENT: the kernel holds nothing for it yet
        log.debug("fuse_invalidate_path(%s) = %d", path, result)
    return result == 0


def session_of_this_mount(lib: Any) -> int | None:
    """libfuse's ``struct fuse_session *`` of the mount whose request this thread is answering (libfuse 2.9
    and 3 both have ``fuse_get_session``); valid until the filesystem's ``destroy`` returns."""
    get_session = lib["fuse_get_session"]
    get_session.argtypes = [ctypes.c_void_p]
    get_session.restype = ctypes.c_void_p
    session = get_session(lib.fuse_get_context().contents.fuse)
    return int(session) if session else None


def session_exited(lib: Any) -> Any:
    """libfuse's ``fuse_session_exited``, a function object of our own (lib["name"]: mfusepy's are untouched)."""
    exited = lib["fuse_session_exited"]
    exited.argtypes = [ctypes.c_void_p]
    exited.restype = ctypes.c_int
    return exited


class ExitWatch:
    """Tells the filesystem, within ``interval``, that libfuse's loop is ending: its session's exit flag is
    set — by libfuse's own SIGTERM/SIGINT/SIGHUP handler (which does nothing else), or when ``/dev/fuse``
    says the folder was unmounted.

    libfuse then takes no new request but waits for every request under way before its loop returns, and
    only after that does the daemon's own cleanup run. A read waiting for a download would keep it waiting
    for as long as the bytes take to come (minutes from a slow but steady server; under systemd, until
    SIGKILL): ``on_exit`` must make those requests return. Polled from a thread of our own — the flag is all
    libfuse offers, on 2 and 3 alike, and its signal handler leaves no room for ours. :meth:`close` (from
    ``destroy``, before libfuse frees the session) stops it; the flag is never read after that."""

    def __init__(self, lib: Any, session: int, on_exit: Callable[[], None], interval: float = 0.1) -> None:
        self._exited = session_exited(lib)
        self._session = session
        self._on_exit = on_exit
        self._interval = interval
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fuse-exit-watch", daemon=True)

    @classmethod
    def of_this_mount(cls, lib: Any, on_exit: Callable[[], None]) -> ExitWatch | None:
        """Started, for the mount whose ``init`` this thread answers; None where the loaded libfuse lacks a
        call (without it, the daemon's cleanup runs once the requests under way end)."""
        try:
            session = session_of_this_mount(lib)
            if session is None:
                return None
            watch = cls(lib, session, on_exit)
        except (AttributeError, ValueError) as exc:  # a symbol this libfuse does not export
            log.warning("a stop waits for the reads under way (libfuse has no %s)", exc)
            return None
        watch._thread.start()
        return watch

    def _watch(self) -> None:
        while not self._closed.wait(self._interval):
            with self._lock:
                if self._closed.is_set() or not self._exited(self._session):
                    continue
            log.info("libfuse's loop is ending (a stop signal or an unmount): failing the reads still waiting")
            try:
                self._on_exit()
            except Exception:  # the loop must still end: the daemon's cleanup cancels the downloads anyway
                log.exception("failing the reads still waiting at the end of the loop failed")
            return

    def close(self) -> None:
        """No look at the session from now on (it is freed after ``destroy``)."""
        with self._lock:
            self._closed.set()


FUSE_ROOT_ID = 1  # the kernel's and libfuse's inode number of the mount's root: the folder of every track


class KernelEntries:
    """Tells the kernel to drop what it caches about names of the root folder (libfuse's
    ``fuse_lowlevel_notify_inval_entry``) and about the folder's own attributes (``…_inval_inode``).

    With READDIRPLUS a listing hands the kernel a dentry and attributes for every file, kept for the entry
    timeout (1 s): after a live reload removed, renamed or changed a track, its old name would still answer
    ``stat`` (and its old size) until then. Only the session's ``/dev/fuse`` channel is used — not libfuse's
    node table (``fuse_invalidate_path``), which ``fuse_destroy`` frees before the filesystem's ``destroy``
    runs; the session and its descriptor live until after it, and :meth:`close` (from ``destroy``) shuts
    this off first. The tracks sit directly in the root (names never hold "/"), so the parent is always
    ``FUSE_ROOT_ID`` and no inode of libfuse's is needed.

    Call it from a thread of our own (the manifest watcher), never from a FUSE request handler: the kernel
    takes the folder's lock for the notice, and holds it (shared) while a LOOKUP, READDIR or READDIRPLUS
    of the folder waits for our answer; a handler asking for the notice would wait for itself. From
    another thread it waits at most until the requests under way are answered."""

    def __init__(self, lib: Any, session: int, channel: int) -> None:
        # lib["name"] gives function objects of our own: their argtypes do not touch mfusepy's.
        self._entry = lib["fuse_lowlevel_notify_inval_entry"]
        self._entry.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
        self._entry.restype = ctypes.c_int
        self._inode = lib["fuse_lowlevel_notify_inval_inode"]
        self._inode.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int64]
        self._inode.restype = ctypes.c_int
        self._exited = session_exited(lib)
        self._session = session
        self._channel = channel  # what the notices go to: the session (libfuse 3) or its channel (libfuse 2)
        self._lock = threading.Lock()
        self._open = True
        self.notices = 0  # notices sent (the kernel may have held none of the names)

    @classmethod
    def of_this_mount(cls, lib: Any, libfuse_major: int) -> KernelEntries | None:
        """The notifier for the mount whose request (``init``) this thread is answering; None where the
        loaded libfuse lacks a call (without it, names expire after the entry timeout)."""
        try:
            session = session_of_this_mount(lib)
            if session is None:
                return None
            channel = session
            if libfuse_major < 3:  # libfuse 2 sends notices through the session's channel
                next_channel = lib["fuse_session_next_chan"]
                next_channel.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
                next_channel.restype = ctypes.c_void_p
                channel = next_channel(session, None)
            if not session or not channel:
                return None
            return cls(lib, session, channel)
        except (AttributeError, ValueError) as exc:  # a symbol this libfuse does not export
            log.info("the kernel is not told of removed tracks (names expire after 1 s): %s", exc)
            return None

    def forget(self, names: list[str]) -> None:
        """The kernel drops these names of the root folder (the next ``stat`` of one asks the daemon) and
        the folder's attributes (its mtime changed). A name it does not hold answers ENOENT: nothing to do."""
        for name in names:
            raw = name.encode("utf-8", "surrogateescape")
            self._notify(self._entry, FUSE_ROOT_ID, raw, len(raw))
        self._notify(self._inode, FUSE_ROOT_ID, -1, 0)  # offset < 0: attributes only

    def _notify(self, call: Any, *args: Any) -> None:
        with self._lock:
            # Not once the loop has stopped: a notice then waiting for the folder's lock would wait for a
            # request that no thread will answer any more.
            if not self._open or self._exited(self._session):
                return
            result = int(call(self._channel, *args))
            self.notices += 1
        if result not in (0, -errno.ENOENT):
            log.debug("kernel cache notice for the root folder = %d", result)

    def close(self, wait: float = 2.0) -> None:
        """No notice from now on; waits for one under way (bounded: a notice stuck behind a request the
        stopped loop left unanswered must not hang the unmount)."""
        acquired = self._lock.acquire(timeout=wait)
        self._open = False
        if acquired:
            self._lock.release()
        else:
            log.warning("a kernel cache notice is still under way at unmount")
