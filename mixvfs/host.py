"""The platform seam: every call whose presence depends on the operating system, each with a fallback.

Linux gives Python extended attributes (``os.getxattr``), ``posix_fadvise``, file leases (``F_SETLEASE``),
``/proc`` and ``/sys``, FUSE passthrough and ``fusermount``; macOS gives none of these (its ``getxattr`` takes
two more arguments and Python does not wrap it; unmounting is ``umount`` or ``diskutil unmount``) but has
macFUSE's mount options. The rest of mixvfs asks here and never looks at ``sys.platform`` or probes ``os``
and ``fcntl`` itself, so that one module says what each system offers and what happens without it.

It sits at the package's root, importing nothing of ours, because both layers need it: ``cache/`` (hashing:
fadvise, leases, the file system type) may not import ``vfs/``, and ``vfs/`` needs the rest. Each facility is
looked up when called, not at import: a process without it (macOS, or the test lane that takes the Linux-only
names away) takes the fallback."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

LINUX = sys.platform.startswith("linux")
DARWIN = sys.platform == "darwin"

# -- extended attributes ---------------------------------------------------------------------------------

XATTR_NOFOLLOW = 0x0001  # macOS <sys/xattr.h>: act on a symlink itself (ours: never a symlink, so 0 is passed)
XATTR_MAX = 1 << 20  # our largest value (the root's status) stays far below; a bound against a runaway size
# Bytes asked for beyond the size just told: a value made anew at each call (a mount's status, with its download
# rates) can be a few bytes longer by the next call, and a buffer of the exact size then fails with ERANGE
# (`mixvfs status --watch` ended, saying the live mount had gone, where libc's getxattr is the way: macOS).
XATTR_SLACK = 4096


class XattrsUnsupported(OSError):
    """No way to read extended attributes in this process."""

    def __init__(self) -> None:
        super().__init__(errno.ENOTSUP, "extended attributes cannot be read here")


def getxattr(path: str | Path, name: str) -> bytes:
    """The value of extended attribute ``name`` of ``path`` (following symlinks). Linux's Python has
    ``os.getxattr``; elsewhere libc's own ``getxattr`` through ctypes (macOS's takes a position and options);
    with neither, :class:`XattrsUnsupported` (an ``OSError``, ENOTSUP)."""
    native = getattr(os, "getxattr", None)
    if native is not None:
        return bytes(native(path, name))
    call = libc_getxattr()
    if call is None:
        raise XattrsUnsupported()
    return read_xattr(call, os.fsencode(path), name.encode(), darwin=DARWIN)


def libc_getxattr() -> Callable[..., int] | None:
    """libc's ``getxattr`` as a ctypes function (None where libc has none)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.getxattr
    except (OSError, AttributeError):
        return None
    return function


def read_xattr(call: Callable[..., int], path: bytes, name: bytes, *, darwin: bool) -> bytes:
    """Ask ``call`` (libc's ``getxattr``) for the size, then the value into a little more room (XATTR_SLACK);
    again if it grew beyond that meanwhile.

    Linux: ``ssize_t getxattr(const char *path, const char *name, void *value, size_t size)``.
    macOS: ``ssize_t getxattr(const char *path, const char *name, void *value, size_t size,
    u_int32_t position, int options)``: position 0 (it is only for resource forks), options 0 (follow)."""
    setattr(call, "restype", ctypes.c_ssize_t)  # noqa: B010  (ctypes' attributes: mypy knows no Callable's)
    tail = [ctypes.c_uint32, ctypes.c_int] if darwin else []
    setattr(call, "argtypes", [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, *tail])  # noqa: B010
    extra = (0, 0) if darwin else ()
    for _ in range(3):
        size = call(path, name, None, 0, *extra)
        if size < 0:
            _raise_errno(path)
        if size > XATTR_MAX:
            raise OSError(errno.E2BIG, f"extended attribute {name.decode()} is {size} bytes")
        capacity = size + XATTR_SLACK
        buffer = ctypes.create_string_buffer(capacity)
        got = call(path, name, buffer, capacity, *extra)
        if got >= 0:
            return buffer.raw[:got]
        if ctypes.get_errno() != errno.ERANGE:  # ERANGE: it grew between the two calls; ask again
            _raise_errno(path)
    raise OSError(errno.ERANGE, "extended attribute kept changing size")


def _raise_errno(path: bytes) -> None:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code), os.fsdecode(path))


# -- reading a file once, in order (check-export's hashing) ---------------------------------------------


def advise_sequential(fd: int) -> None:
    """Tell the kernel ``fd`` is read once, in order (a bigger readahead). Linux: ``posix_fadvise``; macOS
    reads ahead on its own (``F_RDAHEAD`` is on by default); elsewhere nothing."""
    advise = getattr(os, "posix_fadvise", None)
    sequential = getattr(os, "POSIX_FADV_SEQUENTIAL", None)
    if advise is not None and sequential is not None:
        with contextlib.suppress(OSError):
            advise(fd, 0, 0, sequential)


def take_read_lease(fd: int) -> bool:
    """A read lease on ``fd`` (Linux ``F_SETLEASE``): writers then wait for us. False where it is refused
    or leases do not exist (macOS): the caller reads with ``pread`` instead of mapping."""
    setlease, rdlck = getattr(fcntl, "F_SETLEASE", None), getattr(fcntl, "F_RDLCK", None)
    if setlease is None or rdlck is None:
        return False
    try:
        fcntl.fcntl(fd, setlease, rdlck)
    except OSError:  # EAGAIN: open for writing somewhere; EACCES: not our file; EINVAL: no leases here
        return False
    return True


def lease_held(fd: int) -> bool:
    """False once a writer waits: during a lease break F_GETLEASE answers the type the lease is going to."""
    getlease, rdlck = getattr(fcntl, "F_GETLEASE", None), getattr(fcntl, "F_RDLCK", None)
    if getlease is None or rdlck is None:
        return False
    try:
        return bool(fcntl.fcntl(fd, getlease) == rdlck)
    except OSError:
        return False


def give_back_lease(fd: int) -> None:
    setlease, unlck = getattr(fcntl, "F_SETLEASE", None), getattr(fcntl, "F_UNLCK", None)
    if setlease is not None and unlck is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setlease, unlck)


# -- /proc and /sys (Linux) ------------------------------------------------------------------------------


def mountinfo() -> list[list[str]] | None:
    """``/proc/self/mountinfo`` split in fields (None where it cannot be read: not Linux)."""
    try:
        with open("/proc/self/mountinfo") as handle:
            return [line.split() for line in handle]
    except OSError:
        return None


def file_system_type(dev: int) -> str | None:
    """The type of the file system on device ``dev`` (``st_dev``), from mountinfo, whose third field is
    ``major:minor`` and whose type follows the `` - `` separator; None when it cannot be told."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    for fields in mountinfo() or []:
        if len(fields) > 2 and fields[2] == want and "-" in fields[6:]:
            after = fields.index("-", 6) + 1
            return fields[after] if after < len(fields) else None
    return None


def mount_type(path: str) -> str | None:
    """The type of the file system mounted at or above ``path`` (already resolved), from ``/proc/self/mounts``
    (FUSE mounts show as ``fuse.SUBTYPE``); None when it cannot be told (not Linux)."""
    best, fstype = "", None
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                where = fields[1].replace("\\040", " ")
                if (path == where or path.startswith(where.rstrip("/") + "/")) and len(where) > len(best):
                    best, fstype = where, fields[2]
    except OSError:
        return None
    return fstype


def set_readahead(mountpoint: str, kib: int) -> bool:
    """The mount's readahead through sysfs (Linux, root only); False where it cannot be set (the system's
    own readahead stays: macFUSE's on macOS)."""
    device = None
    for fields in mountinfo() or []:
        if len(fields) > 4 and fields[4].replace("\\040", " ") == mountpoint:
            device = fields[2]  # the last match is the mount on top
    if device is None:
        return False
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as knob:
            knob.write(f"{kib}\n")
    except OSError:
        return False
    return True


def is_zombie(pid: int) -> bool | None:
    """Whether ``pid`` has exited and waits to be reaped (``/proc/PID/stat``); None when it cannot be told
    (then ``kill(pid, 0)`` alone decides, and a zombie counts as alive until its parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] == "Z"
    except (OSError, IndexError):
        return None


def process_name(pid: int) -> str | None:
    """The name of process ``pid`` (None when it cannot be told). Linux: ``/proc/PID/comm`` (15 characters
    at most); macOS: libproc's ``proc_name``."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().rstrip("\n") or None
    except OSError:
        pass
    if not DARWIN:
        return None
    try:
        proc_name = ctypes.CDLL(None, use_errno=True).proc_name
    except (OSError, AttributeError):
        return None
    buffer = ctypes.create_string_buffer(256)
    length = proc_name(ctypes.c_int(pid), buffer, ctypes.c_uint32(len(buffer)))
    return buffer.raw[:length].decode(errors="replace") if length > 0 else None


DAEMON_START_ENV = "MIXVFS_DAEMON_START"


def fork_daemon() -> bool:
    """Whether ``mixvfs mount`` starts its daemon by forking itself rather than a new interpreter. Linux: yes, as
    libfuse's own daemonizing does (nothing the command has loaded minds a fork). macOS: no: a process that has
    loaded Apple's frameworks must ``exec`` after ``fork`` or the child's first use of them aborts, and macFUSE's
    libfuse, which the command's check loads, brings CoreFoundation and DiskArbitration. ``MIXVFS_DAEMON_START=spawn``
    asks for the new interpreter anywhere (the portable test lane runs so, as on a Mac)."""
    asked = os.environ.get(DAEMON_START_ENV, "").strip().lower()
    if asked not in ("", "fork", "spawn"):
        raise ValueError(f"{DAEMON_START_ENV} is {asked!r}: it takes fork or spawn (or nothing: fork on Linux)")
    return LINUX and asked != "spawn"


def open_fds() -> list[int]:
    """The file descriptors open in this process: ``/dev/fd`` (Linux's is ``/proc/self/fd``; macOS has its own),
    else every number below the soft limit that answers (at most 65 536 of them)."""
    try:
        return sorted(int(name) for name in os.listdir("/dev/fd"))
    except (OSError, ValueError):
        pass
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = 65536 if soft == resource.RLIM_INFINITY else min(soft, 65536)
    found = []
    for fd in range(top):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append(fd)
    return found


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``). Decoding and building a big
    session frees much of what it allocates (the manifest's text, each track's parsed object, the drafts), and
    glibc keeps that memory for reuse that a mount never makes: 23 MB of a 100 000-track daemon after the
    parse. False where libc has no such call (macOS, whose allocator returns free pages by itself; musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


CAP_SYS_ADMIN = 21


def has_sys_admin() -> bool:
    """CAP_SYS_ADMIN in this process's effective set (``/proc/self/status``); without ``/proc``, root."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def passthrough_possible() -> str | None:
    """None where FUSE passthrough may be asked for (Linux); else why not."""
    return None if LINUX else "FUSE passthrough exists only on Linux (macFUSE and FUSE-T offer none)"


# -- mounting and unmounting -----------------------------------------------------------------------------


def unmount_command(mountpoint: str, *, lazy: bool = False, platform: str = sys.platform) -> list[str]:
    """The command that unmounts a FUSE folder of this user. Linux: ``fusermount3 -u`` (``-z``: lazily, for
    a dead mount), else ``umount``. macOS: ``umount`` (a user may unmount what they mounted), and for a dead
    mount ``diskutil unmount force``, which does not wait for a daemon that will never answer."""
    if platform == "darwin":
        return ["diskutil", "unmount", "force", mountpoint] if lazy else ["umount", mountpoint]
    for name in ("fusermount3", "fusermount"):
        path = shutil.which(name)
        if path:
            return [path, "-u", *(["-z"] if lazy else []), mountpoint]
    return ["umount", *(["-l"] if lazy else []), mountpoint]


def mount_options(*, volume_name: str, daemon_timeout: int, platform: str = sys.platform) -> dict[str, str | bool]:
    """FUSE mount options of this platform beyond the common ones. macFUSE (and FUSE-T, which takes the same):
    the volume's name in Finder; no AppleDouble ``._*`` files and no Apple xattrs (Finder's metadata and
    resource forks, which a read-only folder cannot store and which would only make requests); and the
    ``daemon_timeout`` after which the kernel gives up on a request — macFUSE then ejects the whole volume,
    so it must exceed the longest any request of ours may wait. Linux: none."""
    if platform != "darwin":
        return {}
    return {"volname": option_value(volume_name) or "mixvfs", "noappledouble": True, "noapplexattr": True,
            "daemon_timeout": str(daemon_timeout)}


def option_value(text: str) -> str:
    """``text`` as one value of a ``-o`` list: libfuse splits the list on commas and takes a backslash as
    escaping the next character; control characters have no place in a volume's name."""
    kept = "".join(ch for ch in text if ch.isprintable())
    return kept.replace("\\", "\\\\").replace(",", "\\,")


def prefer_libfuse3() -> None:
    """Ask mfusepy for libfuse 3 where it is installed (mfusepy prefers 2; 3 gives 1 MiB requests), unless
    ``FUSE_LIBRARY_NAME`` already names one. mfusepy reads the variable once, when it is first imported, so
    whoever loads it calls this just before: the mount's start (and the tests). Importing mixvfs changes no
    environment."""
    import ctypes.util  # here: it imports subprocess, which the commands that never mount do not need

    if "FUSE_LIBRARY_NAME" not in os.environ and ctypes.util.find_library("fuse3"):
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"


def libfuse_hint(platform: str = sys.platform) -> str:
    """What to install (or allow) when no usable libfuse can be loaded: one line."""
    if platform == "darwin":
        return ("install macFUSE (https://macfuse.github.io, `brew install --cask macfuse`) and allow its system "
                "extension in System Settings > Privacy & Security, or install FUSE-T (https://www.fuse-t.org) and "
                "set FUSE_LIBRARY_PATH=/usr/local/lib/libfuse-t.dylib")
    if platform.startswith("linux"):
        return "install libfuse 3 (Debian/Ubuntu: sudo apt install fuse3; Fedora: sudo dnf install fuse3)"
    return "install a libfuse 2 compatible FUSE library for this system"


FUSE_DEVICE = "/dev/fuse"
FUSE_HELPERS = ("fusermount3", "fusermount")  # libfuse 3's, libfuse 2's: an ordinary user mounts through one


def fuse_access_problem(*, device: str = FUSE_DEVICE, helpers: tuple[str, ...] = FUSE_HELPERS,
                        search: str | None = None, euid: int | None = None,
                        platform: str = sys.platform) -> str | None:
    """Why this user cannot mount on Linux, with the fix, in one line; None when nothing here explains it.
    libfuse opens ``device`` itself first (no access: it stops there, "failed to open /dev/fuse"), then a user
    who is not root mounts through the setuid-root ``fusermount3`` (missing, or not setuid: the mount is
    refused). mixvfs never mounts with ``allow_other``, so ``/etc/fuse.conf``'s ``user_allow_other`` is never
    needed. ``search``: the PATH to look for the helpers in (the process's own when None); ``euid``: whose mount
(this process's when None)."""
    if not platform.startswith("linux"):
        return None
    if not os.path.exists(device):
        return f"{device} does not exist: the fuse kernel module is not loaded (sudo modprobe fuse)"
    if not os.access(device, os.R_OK | os.W_OK):
        st = os.stat(device)
        return (f"no access to {device} (Permission denied: {_mode_and_owner(st)}); libfuse must open it to mount. "
                f"Ask an administrator to let users open it: `sudo chmod 0666 {device}`, the mode Debian's and "
                "Fedora's fuse packages give it (a udev rule, KERNEL==\"fuse\", MODE=\"0666\", keeps it across "
                "reboots)")
    if (os.geteuid() if euid is None else euid) == 0:
        return None
    found = [path for name in helpers if (path := shutil.which(name, path=search))]
    if not found:
        return (f"{helpers[0]} is missing: a user who is not root mounts through it "
                "(Debian/Ubuntu: sudo apt install fuse3; Fedora: sudo dnf install fuse3)")
    helper = found[0]
    st = os.stat(helper)
    if st.st_uid != 0 or not st.st_mode & 0o4000:
        return (f"{helper} is not setuid root ({_mode_and_owner(st)}), so it cannot mount for a user who is not "
                f"root: `sudo chown root {helper} && sudo chmod u+s {helper}`, as the fuse3 package installs it")
    return None


def mountpoint_access_problem(mountpoint: str | os.PathLike[str], *, euid: int | None = None,
                              platform: str = sys.platform) -> str | None:
    """Why fusermount3 will refuse to mount on ``mountpoint`` for this user, with the fix; None when it will
    not for that reason. A user who is not root mounts only on a folder they may write to (fusermount3's own
    check: "user has no write access to mountpoint")."""
    if not platform.startswith("linux") or (os.geteuid() if euid is None else euid) == 0:
        return None
    if os.access(mountpoint, os.W_OK):
        return None
    try:
        mode = f" ({_mode_and_owner(os.stat(mountpoint))})"
    except OSError:
        mode = ""
    return (f"you have no write access to it{mode}, and fusermount3 mounts only on a folder its user may write "
            "to: mount on a folder of your own, e.g. mkdir -p ~/MixBoardTracks")


def _mode_and_owner(st: os.stat_result) -> str:
    import grp
    import pwd
    import stat

    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{stat.filemode(st.st_mode)} {owner}:{group}"


# glibc's mallopt parameters (<malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Buffers up to this size come from malloc's heap, not a fresh mapping each: httpcore's 1 MiB receives, the bytes
# objects a track's body passes through. And freed memory is given back to the kernel only past this much free
# at the heap's top.
REUSED_BUFFER = 8 << 20
KEPT_FREE = 32 << 20


def reuse_freed_memory(*, mmap_threshold: int = REUSED_BUFFER, trim_threshold: int = KEPT_FREE) -> bool:
    """Keep the daemon's large buffers in malloc's heap between uses (glibc's ``mallopt``), so that each track's
    megabyte of received body lands in pages already faulted in. glibc's own default starts to serve such sizes
    by a new mapping, then from its heaps, which it trims back as soon as 2 MiB sit free at their top: the next
    receive faulted in (and the kernel zeroed) every page again, about 150 faults and a sixth of the daemon's
    CPU per 1 MiB track (BENCHMARKS.md). False where there is no glibc (macOS, musl: their allocators decide)."""
    if not LINUX:
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    # gnu_get_libc_version: glibc's alone (musl's mallopt is a stub that accepts nothing).
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # The trim threshold first: setting either one fixes both (glibc stops adjusting them itself).
    return bool(mallopt(M_TRIM_THRESHOLD, trim_threshold)) and bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))


# Enough descriptors for a busy export: each open file, download, staging file, SQLite connection per thread and
# the report all take one. Below this a mount warns, since a reader's EIO may then come with no report line.
FEW_OPEN_FILES = 1024


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit (as rclone and most daemons do: the soft
    limit is often 1024, or 256 on macOS) and return the soft limit now in force. macOS refuses more than
    OPEN_MAX (10240) whatever the hard limit says."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if sys.platform == "darwin":
        wanted = min(wanted, 10240)
    if soft == resource.RLIM_INFINITY or wanted <= soft:
        return soft if soft != resource.RLIM_INFINITY else wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft
    return wanted
