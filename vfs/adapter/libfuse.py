"""Low-level libfuse calls that mfusepy does not offer: raising the mount's readahead, how many reads may wait
on downloads at once, and making the kernel forget a changed file's size. ctypes only; no FUSE binding here.

(Answering reads with a descriptor through ``read_buf`` and a hand-declared ``fuse_bufvec`` was measured
slower than plain ``read`` and removed: BENCHMARKS.md, "read_buf against plain read".)"""

from __future__ import annotations

import ctypes
import errno
import logging
from typing import Any

log = logging.getLogger(__name__)

# The kernel's readahead for a FUSE mount is 128 KiB (libfuse can only lower it); 4 MiB makes a first read
# arrive as 1 MiB requests with several in flight (1 GiB fresh-mount read: 0.85 s -> 0.49 s, BENCHMARKS.md).
READAHEAD_KIB = 4096

# Reads of page-cached files (all reads but direct I/O) reach the daemon as the kernel's "background"
# requests, of which it keeps only max_background (12 by default) in flight per mount; the rest wait in the
# kernel, whatever file they are for. Thirty readers parked on queued downloads held all 12, and a read of a
# cached track took 48 s (issue 8). A waiting reader holds 1-2 requests with libfuse 3 (1 MiB each; 8-16 of
# 128 KiB with libfuse 2), each on a libfuse thread of its own (~70 KiB of memory while it waits). With 1024
# the mount answered in under 0.2 s with 700 readers of 2 MB tracks waiting (822 requests, 60 MB of threads).
WAITING_READS = 1024


def raise_readahead(mountpoint: str, kib: int = READAHEAD_KIB) -> bool:
    """Set the mount's readahead through sysfs (root only; elsewhere the kernel default stays)."""
    device = None
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 4 and fields[4].replace("\\040", " ") == mountpoint:
                    device = fields[2]  # the last match is the mount on top
        if device is None:
            return False
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as knob:
            knob.write(f"{kib}\n")
    except OSError as exc:
        log.debug("readahead of %s left at the kernel default: %s", mountpoint, exc)
        return False
    return True


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
