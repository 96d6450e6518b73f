"""mixvfs/host.py, the platform seam: each facility and its fallback, the latter run for real by taking the
Linux-only name away (as macOS's Python lacks it), and macOS's argument lists checked as data or through a
ctypes callback standing in for its libc."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
from pathlib import Path

import pytest
import xxhash

from mixvfs import host
from mixvfs.cache import digest
from mixvfs.vfs.fs import mount
from tests.conftest import _linux_call, missing_part

# macOS: ssize_t getxattr(const char *path, const char *name, void *value, size_t size, u_int32_t position,
# int options)
DARWIN_GETXATTR = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                                   ctypes.c_size_t, ctypes.c_uint32, ctypes.c_int)


def xattr_file(tmp_path: Path) -> Path:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    try:
        _linux_call("setxattr")(path, "user.mixvfs.t", b'{"a": 1}')
    except OSError as exc:
        missing_part(f"no user xattrs on {tmp_path}: {exc}", "CI's temporary folder must take user xattrs")
    return path


def test_darwin_getxattr_is_called_with_position_and_options_zero() -> None:
    calls: list[tuple[bytes, bytes, int, int, int]] = []
    value = b'{"pid": 42}'

    def fake(path: bytes, name: bytes, buffer: int | None, size: int, position: int, options: int) -> int:
        calls.append((path, name, size, position, options))
        if buffer:
            ctypes.memmove(buffer, value, min(size, len(value)))
        return len(value)

    callback = DARWIN_GETXATTR(fake)
    got = host.read_xattr(ctypes.cast(callback, ctypes.CFUNCTYPE(ctypes.c_ssize_t)), b"/Users/me/MixBoardTracks",
                          b"user.mixvfs.pid", darwin=True)
    assert got == value
    assert calls == [(b"/Users/me/MixBoardTracks", b"user.mixvfs.pid", 0, 0, 0),
                     (b"/Users/me/MixBoardTracks", b"user.mixvfs.pid", len(value) + host.XATTR_SLACK, 0, 0)]


def test_darwin_getxattr_that_grew_between_the_calls_is_asked_again() -> None:
    answers = iter([2, -errno.ERANGE, 4, 4])  # size 2; ERANGE (it grew); size 4; the 4 bytes
    sizes: list[int] = []

    def fake(path: bytes, name: bytes, buffer: int | None, size: int, position: int, options: int) -> int:
        sizes.append(size)
        got = next(answers)
        if got < 0:
            ctypes.set_errno(-got)
            return -1
        if buffer:
            ctypes.memmove(buffer, b"abcd", got)
        return got

    callback = DARWIN_GETXATTR(fake)
    function = ctypes.cast(callback, ctypes.CFUNCTYPE(ctypes.c_ssize_t))
    assert host.read_xattr(function, b"/m", b"user.x", darwin=True) == b"abcd"
    assert sizes == [0, 2 + host.XATTR_SLACK, 0, 4 + host.XATTR_SLACK]


def test_a_value_made_anew_at_each_call_that_is_a_little_longer_each_time_is_read_at_once() -> None:
    """A mount's status is computed at each getxattr (its rates change): the value asked for after the size may be
    a few bytes longer. It fits the room asked for and is read at the first try (with a buffer of the exact size,
    each try failed with ERANGE, and `mixvfs status --watch` ended as if the mount had gone)."""
    length = [100]
    calls: list[int] = []

    def fake(path: bytes, name: bytes, buffer: int | None, size: int, position: int, options: int) -> int:
        calls.append(size)
        length[0] += 7  # longer at every call
        if not buffer:
            return length[0]
        if size < length[0]:
            ctypes.set_errno(errno.ERANGE)
            return -1
        ctypes.memmove(buffer, b"x" * length[0], length[0])
        return length[0]

    callback = DARWIN_GETXATTR(fake)
    function = ctypes.cast(callback, ctypes.CFUNCTYPE(ctypes.c_ssize_t))
    assert host.read_xattr(function, b"/m", b"user.mixvfs.status", darwin=True) == b"x" * 114
    assert calls == [0, 107 + host.XATTR_SLACK]


def test_a_missing_xattr_is_an_oserror_naming_the_path(tmp_path: Path) -> None:
    def fake(path: bytes, name: bytes, buffer: int | None, size: int, position: int, options: int) -> int:
        ctypes.set_errno(errno.ENOATTR if hasattr(errno, "ENOATTR") else errno.ENODATA)
        return -1

    callback = DARWIN_GETXATTR(fake)
    with pytest.raises(OSError) as raised:
        host.read_xattr(ctypes.cast(callback, ctypes.CFUNCTYPE(ctypes.c_ssize_t)), b"/m", b"user.x", darwin=True)
    assert raised.value.filename == "/m" and raised.value.errno in (errno.ENODATA, getattr(errno, "ENOATTR", 0))


def test_without_os_getxattr_libc_is_called_and_gives_the_same_bytes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = xattr_file(tmp_path)
    monkeypatch.delattr(os, "getxattr", raising=False)
    assert host.getxattr(path, "user.mixvfs.t") == b'{"a": 1}'
    with pytest.raises(OSError) as raised:
        host.getxattr(path, "user.mixvfs.none")
    assert raised.value.errno == errno.ENODATA


def test_with_no_xattr_call_at_all_the_error_is_enotsup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "getxattr", raising=False)
    monkeypatch.setattr(host, "libc_getxattr", lambda: None)
    with pytest.raises(OSError) as raised:
        host.getxattr("/", "user.mixvfs.pid")
    assert raised.value.errno == errno.ENOTSUP


def test_hashing_without_fadvise_or_leases_reads_and_gives_the_same_digest(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 * digest.MAP_SPAN // 2)
    path = tmp_path / "f"
    path.write_bytes(data)
    for name in ("posix_fadvise", "POSIX_FADV_SEQUENTIAL"):
        monkeypatch.delattr(os, name, raising=False)
    for name in ("F_SETLEASE", "F_GETLEASE"):
        monkeypatch.delattr(fcntl, name, raising=False)
    mapped: list[int] = []

    def feed_mapped(fd: int, *rest: object) -> int:
        mapped.append(fd)
        return 0

    monkeypatch.setattr(digest, "feed_mapped", feed_mapped)
    before = signal.getsignal(signal.SIGIO)
    digest.ignore_lease_breaks()
    try:
        assert digest.hash_path(path) == xxhash.xxh3_128(data).hexdigest()
    finally:
        signal.signal(signal.SIGIO, before)
    assert mapped == []  # no lease: never mapped
    assert host.take_read_lease(0) is False and host.lease_held(0) is False
    host.give_back_lease(0)
    host.advise_sequential(0)


def test_without_proc_the_answers_are_unknown_not_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    def no_proc(file: object, *args: object, **kwargs: object) -> object:
        if str(file).startswith(("/proc", "/sys")):
            raise PermissionError(errno.EACCES, "hidden", str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", no_proc)
    assert host.mountinfo() is None
    assert host.file_system_type(os.stat("/").st_dev) is None
    assert host.set_readahead("/", 4096) is False
    assert host.is_zombie(os.getpid()) is None
    assert host.has_sys_admin() == (os.geteuid() == 0)
    assert mount._alive(os.getpid())  # kill(pid, 0) alone decides


@pytest.mark.linux_facilities
def test_with_proc_the_answers_are_linux_facts() -> None:
    assert host.is_zombie(os.getpid()) is False
    assert host.file_system_type(os.stat("/proc").st_dev) == "proc"


@pytest.mark.parametrize(("platform", "lazy", "expected"), [
    ("darwin", False, ["umount", "/Users/me/MixBoardTracks"]),
    ("darwin", True, ["diskutil", "unmount", "force", "/Users/me/MixBoardTracks"]),
])
def test_the_unmount_command_of_macos(platform: str, lazy: bool, expected: list[str]) -> None:
    assert host.unmount_command("/Users/me/MixBoardTracks", lazy=lazy, platform=platform) == expected


def test_the_unmount_command_of_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}" if name == "fusermount3" else None)
    assert host.unmount_command("/m", platform="linux") == ["/usr/bin/fusermount3", "-u", "/m"]
    assert host.unmount_command("/m", lazy=True, platform="linux") == ["/usr/bin/fusermount3", "-u", "-z", "/m"]
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert host.unmount_command("/m", lazy=True, platform="linux") == ["umount", "-l", "/m"]


def test_macos_mount_options_and_none_on_linux() -> None:
    assert host.mount_options(volume_name="Friday Mix", daemon_timeout=140, platform="darwin") == {
        "volname": "Friday Mix", "noappledouble": True, "noapplexattr": True, "daemon_timeout": "140"}
    assert host.mount_options(volume_name="Friday Mix", daemon_timeout=140, platform="linux") == {}


def test_a_volume_name_is_one_option_value() -> None:
    assert host.option_value("A, B\\C\n") == "A\\, B\\\\C"
    assert host.mount_options(volume_name="\x00\n", daemon_timeout=1, platform="darwin")["volname"] == "mixvfs"


def test_the_libfuse_hint_names_what_to_install() -> None:
    assert "macFUSE" in host.libfuse_hint("darwin") and "FUSE-T" in host.libfuse_hint("darwin")
    assert "apt install fuse3" in host.libfuse_hint("linux")
    assert "\n" not in host.libfuse_hint("darwin") + host.libfuse_hint("linux")


def test_passthrough_is_offered_only_on_linux() -> None:
    assert (host.passthrough_possible() is None) == host.LINUX


def test_the_open_file_limit_is_raised_to_the_hard_limit_in_a_process_started_with_a_low_one() -> None:
    import subprocess
    import sys

    code = ("import resource; from mixvfs import host; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096)); "
            "print(host.raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["4096", "4096"]
    code = ("import resource; from mixvfs import host; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)); print(host.raise_open_file_limit())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["48"]  # a hard limit is the user's: kept, and the mount warns


def test_a_missing_fusermount3_is_named_for_a_user_who_is_not_root(tmp_path) -> None:
    device = tmp_path / "fuse"
    device.write_text("")  # readable and writable: the device is not the cause here
    problem = host.fuse_access_problem(device=str(device), search=str(tmp_path), euid=1000, platform="linux")
    assert problem == ("fusermount3 is missing: a user who is not root mounts through it "
                       "(Debian/Ubuntu: sudo apt install fuse3; Fedora: sudo dnf install fuse3)")
    assert host.fuse_access_problem(device=str(device), search=str(tmp_path), euid=0, platform="linux") is None
    assert host.fuse_access_problem(device=str(tmp_path / "none"), platform="darwin") is None
    assert host.fuse_access_problem(device=str(tmp_path / "none"), platform="linux") == (
        f"{tmp_path / 'none'} does not exist: the fuse kernel module is not loaded (sudo modprobe fuse)")


def test_release_free_memory_is_glibcs_malloc_trim_and_nothing_elsewhere(monkeypatch):
    """On glibc it gives the free heap back (the daemon's test, test_daemon_gc.py, sees the pages go); a libc
    without ``malloc_trim`` (macOS, musl) leaves it to the allocator, and says so."""
    libc = ctypes.CDLL(None)
    if hasattr(libc, "malloc_trim"):
        assert host.release_free_memory() is True

    class NoTrim:
        def __init__(self, name: object) -> None:
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoTrim)
    assert host.release_free_memory() is False


MEGABYTES_FREED_AND_TAKEN_AGAIN = """
import resource, sys
from mixvfs import host
if sys.argv[1] == "reuse":
    assert host.reuse_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # glibc's own thresholds settle on the sizes it has seen
    held = [bytearray(1 << 20) for _ in range(3)]
    del held
before = faults()
for _ in range(50):  # what a download does with each receive: a few megabytes taken, then freed
    held = [bytearray(1 << 20) for _ in range(3)]
    del held
print((faults() - before) / 50)
"""


@pytest.mark.linux_facilities
def test_freed_megabytes_are_taken_again_without_faulting_their_pages_in_anew() -> None:
    import subprocess
    import sys

    def faults_per_round(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", MEGABYTES_FREED_AND_TAKEN_AGAIN, mode], capture_output=True,
                              text=True, timeout=60, check=True)
        return float(done.stdout)

    glibc_default, reused = faults_per_round("default"), faults_per_round("reuse")
    # glibc's default gives 3 MiB free at the heap's top back to the kernel: each round faults 768 pages in again.
    assert reused < 16, (glibc_default, reused)
    assert reused * 10 < glibc_default or glibc_default < 100, (glibc_default, reused)
