"""The portable test lane: what a Mac's Python lacks, taken away from every process that starts with this
folder on PYTHONPATH (``make test`` runs the unit tier and the libfuse 2 mount tier so; the mount daemon and
every ``mixvfs``/``cachectl`` command inherit it), so that mixvfs's fallbacks run for real on Linux.

* ``os.getxattr``/``setxattr``/``listxattr``/``removexattr``, ``os.posix_fadvise`` and its constants, and
  ``fcntl``'s lease calls are deleted before anything imports them (macOS's Python has none of them).
* ``/proc`` and ``/sys`` cannot be opened by mixvfs's own code: Python's ``open`` and ``os.open`` refuse
  them (EACCES) when a frame of the package is on the stack. Hiding them from the whole process is not
  possible here — libfuse, fusermount and the interpreter read ``/proc`` themselves — and the tests' own
  checks (which mounts exist, which libfuse the daemon loaded) still read them.

What was deleted stays reachable as ``sys.modules["portable_lane"].REMOVED`` for the tests' own
observations (``getfattr``-style checks of what the mount publishes)."""

from __future__ import annotations

import builtins
import errno
import fcntl
import io
import os
import sys
import types
from pathlib import Path
from typing import Any

OS_NAMES = ("getxattr", "setxattr", "listxattr", "removexattr", "posix_fadvise", "POSIX_FADV_NORMAL",
            "POSIX_FADV_SEQUENTIAL", "POSIX_FADV_RANDOM", "POSIX_FADV_NOREUSE", "POSIX_FADV_WILLNEED",
            "POSIX_FADV_DONTNEED", "XATTR_CREATE", "XATTR_REPLACE", "XATTR_SIZE_MAX")
FCNTL_NAMES = ("F_SETLEASE", "F_GETLEASE")
HIDDEN = ("/proc", "/sys")

REPO = Path(__file__).resolve().parent.parent.parent
PRODUCT = tuple(str(REPO / part) + os.sep for part in ("mixvfs", "vfs", "cache"))

REMOVED: dict[str, Any] = {}
for _name in OS_NAMES:
    if hasattr(os, _name):
        REMOVED[_name] = getattr(os, _name)
        delattr(os, _name)
for _name in FCNTL_NAMES:
    if hasattr(fcntl, _name):
        REMOVED[_name] = getattr(fcntl, _name)
        delattr(fcntl, _name)


def _hidden(file: Any) -> bool:
    if isinstance(file, int):
        return False
    try:
        path = os.fsdecode(file)
    except TypeError:
        return False
    if not any(path == top or path.startswith(top + "/") for top in HIDDEN):
        return False
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(PRODUCT):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _refuse(file: Any) -> OSError:
    return PermissionError(errno.EACCES, "hidden by the portable test lane", os.fsdecode(file))


_open, _os_open = builtins.open, os.open


def _guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
    if _hidden(file):
        raise _refuse(file)
    return _open(file, *args, **kwargs)


def _guarded_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
    if _hidden(path):
        raise _refuse(path)
    return _os_open(path, *args, **kwargs)


builtins.open = _guarded_open
io.open = _guarded_open
os.open = _guarded_os_open

_lane = types.ModuleType("portable_lane")
_lane.REMOVED = REMOVED  # type: ignore[attr-defined]
sys.modules["portable_lane"] = _lane
