"""FUSE passthrough, declared by hand (mfusepy has no wrapper): the kernel reads an open file straight from a
backing file we name, so reads never reach the daemon (Linux >= 6.9, libfuse >= 3.17, CAP_SYS_ADMIN in the
initial user namespace). ctypes only; no FUSE binding is imported here, so the module loads without libfuse.

What is declared, each checked against the loaded libfuse (:func:`layout_problem`) — anything else is refused
with one reason, and the mount serves every read itself as before:

* ``FUSE_CAP_PASSTHROUGH`` in ``struct fuse_conn_info``'s ``capable_ext``/``want_ext`` (libfuse >= 3.17), wanted
  in init with ``max_backing_stack_depth`` 1;
* ``FUSE_DEV_IOC_BACKING_OPEN`` / ``_CLOSE`` (``struct fuse_backing_map``) on the session's ``/dev/fuse``
  descriptor, ``fuse_session_fd(fuse_get_session(fuse_get_context()->fuse))``;
* ``fuse_file_info.backing_id`` at its libfuse 3.17 offset (mfusepy's struct ends before it): libfuse's
  high-level ``open`` reply carries it to the kernel with ``FOPEN_PASSTHROUGH``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
from typing import Any

from mixvfs import host

log = logging.getLogger(__name__)

MIN_VERSION = (3, 17)  # 3.17.1: the first libfuse whose high-level API passes backing_id on
FUSE_CAP_PASSTHROUGH = 1 << 29  # fuse_common.h


class BackingMap(ctypes.Structure):
    """``struct fuse_backing_map`` (linux/fuse.h)."""

    _fields_ = [("fd", ctypes.c_int32), ("flags", ctypes.c_uint32), ("padding", ctypes.c_uint64)]


def _iow(number: int, size: int) -> int:
    """``_IOW(FUSE_DEV_IOC_MAGIC, number, size)`` (asm-generic/ioctl.h; x86, arm and most others)."""
    return (1 << 30) | (size << 16) | (229 << 8) | number


FUSE_DEV_IOC_BACKING_OPEN = _iow(1, ctypes.sizeof(BackingMap))
FUSE_DEV_IOC_BACKING_CLOSE = _iow(2, ctypes.sizeof(ctypes.c_uint32))


class FileInfo317(ctypes.Structure):
    """``struct fuse_file_info`` of libfuse 3.17 (64 bytes, static-asserted there), up to ``backing_id``."""

    _fields_ = [
        ("flags", ctypes.c_int32),
        ("bits", ctypes.c_uint32),  # writepage .. parallel_direct_writes, padding
        ("padding2", ctypes.c_uint32),
        ("padding3", ctypes.c_uint32),
        ("fh", ctypes.c_uint64),
        ("lock_owner", ctypes.c_uint64),
        ("poll_events", ctypes.c_uint32),
        ("backing_id", ctypes.c_int32),
        ("compat_flags", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64 * 2),
    ]


def layout_problem(version: tuple[int, int], file_info: type[Any], conn_info: type[Any]) -> str | None:
    """Why passthrough cannot be declared against this libfuse (None: it can). ``file_info``/``conn_info`` are
    the binding's struct types: their known fields must sit where libfuse 3.17 has them."""
    if version < MIN_VERSION:
        return (f"libfuse {version[0]}.{version[1]} is loaded; passthrough needs libfuse "
                f"{MIN_VERSION[0]}.{MIN_VERSION[1]} or newer")
    if getattr(file_info, "fh", None) is None or file_info.fh.offset != FileInfo317.fh.offset:
        return "the binding's fuse_file_info does not match libfuse 3.17's layout"
    for field in ("capable_ext", "want_ext", "max_backing_stack_depth"):
        if not hasattr(conn_info, field):
            return f"the binding's fuse_conn_info has no {field}"
    return None


def has_sys_admin() -> bool:
    """CAP_SYS_ADMIN in this process's effective set (the kernel also wants it in the initial user namespace:
    a container's root passes this and is refused at open — that refusal is handled there)."""
    return host.has_sys_admin()


def want_passthrough(lib: Any, conn: Any) -> str | None:
    """In libfuse's init: ask for passthrough if the kernel offers it. None when asked; else why not."""
    if not conn.capable_ext & FUSE_CAP_PASSTHROUGH:
        return "the kernel does not offer FUSE passthrough (needs Linux 6.9 or newer with CONFIG_FUSE_PASSTHROUGH)"
    # Backing files may sit on a disk file system or one overlay (a container's root): libfuse tells the kernel
    # this + 1 for the FUSE layer, and 2 is the deepest the kernel allows. Deeper: ELOOP at open, served normally.
    conn.max_backing_stack_depth = 1
    setter = getattr(lib, "fuse_set_feature_flag", None)  # libfuse >= 3.17.3 (Debian's 3.17.2 has it too)
    if setter is not None:
        setter.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        setter.restype = ctypes.c_bool
        if not setter(ctypes.addressof(conn), FUSE_CAP_PASSTHROUGH):
            return "libfuse refused to want FUSE_CAP_PASSTHROUGH"
    else:  # both words: libfuse reconciles want with want_ext after init, and they must agree
        conn.want |= FUSE_CAP_PASSTHROUGH
        conn.want_ext |= FUSE_CAP_PASSTHROUGH
    return None


def session_fd(lib: Any) -> int:
    """The mount's ``/dev/fuse`` descriptor (from inside a request or init: it needs the request's context)."""
    lib.fuse_get_session.argtypes = [ctypes.c_void_p]
    lib.fuse_get_session.restype = ctypes.c_void_p
    lib.fuse_session_fd.argtypes = [ctypes.c_void_p]
    lib.fuse_session_fd.restype = ctypes.c_int
    fuse = lib.fuse_get_context().contents.fuse
    return int(lib.fuse_session_fd(lib.fuse_get_session(fuse)))


def library_version(lib: Any) -> str:
    getter = getattr(lib, "fuse_pkgversion", None)
    if getter is None:
        return "?"
    getter.restype = ctypes.c_char_p
    return str(getter().decode())


class Device:
    """Backing files registered on one mount's ``/dev/fuse`` descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def open_backing(self, fd: int) -> int:
        """Register ``fd``'s file as a backing file; its id (> 0). OSError when the kernel refuses."""
        mapping = BackingMap(fd=fd, flags=0, padding=0)
        backing_id = fcntl.ioctl(self.fd, FUSE_DEV_IOC_BACKING_OPEN, mapping)
        if backing_id <= 0:
            raise OSError(errno.EIO, f"FUSE_DEV_IOC_BACKING_OPEN answered {backing_id}")
        return int(backing_id)

    def close_backing(self, backing_id: int) -> None:
        try:
            fcntl.ioctl(self.fd, FUSE_DEV_IOC_BACKING_CLOSE, ctypes.c_uint32(backing_id))
        except OSError as exc:  # the files opened with it keep their own reference: nothing to undo
            log.debug("closing backing file %d: %s", backing_id, exc.strerror)


def set_backing_id(fi: Any, backing_id: int) -> None:
    """Write ``backing_id`` into libfuse's ``fuse_file_info`` for this open (``fi``: the binding's struct over
    libfuse's memory, as mfusepy hands it with ``raw_fi``)."""
    FileInfo317.from_address(ctypes.addressof(fi)).backing_id = backing_id
