"""The passthrough backing table (which opens the kernel may read from a backing file) and the hand-declared
kernel/libfuse ABI of vfs/adapter/passthrough.py. No kernel here: the real thing is tests/passthrough."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from mixvfs.cache.errors import ContentChanged
from mixvfs.vfs.adapter import passthrough
from mixvfs.vfs.fs.backing import BackingTable


class Kernel:
    """Stands in for the two ioctls: numbered backing files, and what is registered now."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.next = 0
        self.registered: set[int] = set()
        self.calls = 0

    def register(self, fd: int) -> int:
        self.calls += 1
        if self.refuse:
            raise OSError(self.refuse, "refused")
        self.next += 1
        self.registered.add(self.next)
        return self.next

    def unregister(self, backing_id: int) -> None:
        self.registered.remove(backing_id)


def blob() -> int:
    """A descriptor standing for a blob's (the table keeps a duplicate of a backing file's)."""
    return os.open(os.devnull, os.O_RDONLY)


def table(kernel: Kernel) -> BackingTable:
    return BackingTable(kernel.register, kernel.unregister)


def test_one_backing_file_per_file_shared_by_its_opens_and_closed_on_the_last_release():
    kernel = Kernel()
    backings = table(kernel)
    first = backings.open("a.wav", "blob:1", blob())
    second = backings.open("a.wav", "blob:1", blob())
    assert first == second == 1 and kernel.calls == 1
    backings.release("a.wav", first)
    assert kernel.registered == {1}
    backings.release("a.wav", second)
    assert kernel.registered == set()
    assert backings.open("a.wav", "blob:1", blob()) == 2  # a new one for the next open


def test_no_passthrough_while_a_normal_open_is_live_and_a_normal_open_rides_a_live_backing():
    kernel = Kernel()
    backings = table(kernel)
    assert backings.open("a.wav", "download:7", None) is None  # a download: normal
    assert backings.open("a.wav", "blob:1", blob()) is None  # cached now, but the normal open is still live
    assert kernel.calls == 0 and backings.stats.normal == 1
    backings.release("a.wav", None)
    backings.release("a.wav", None)
    through = backings.open("a.wav", "blob:1", blob())
    assert through == 1
    assert backings.open("a.wav", "blob:1", None) == 1  # never a normal open beside it: same backing file
    assert backings.live() == {"backing_files": 1, "passthrough_opens": 2, "normal_opens": 0}


def test_another_version_while_a_passthrough_open_is_live_is_refused():
    backings = table(Kernel())
    backings.open("a.wav", "blob:1", blob())
    with pytest.raises(ContentChanged):
        backings.open("a.wav", "blob:2", blob())
    with pytest.raises(ContentChanged):
        backings.open("a.wav", "download:3", None)
    assert backings.open("b.wav", "blob:2", 11) == 2  # other files are other inodes


def test_a_refusal_serves_the_open_normally_and_turns_the_tier_off():
    kernel = Kernel(refuse=errno.EPERM)
    backings = table(kernel)
    assert backings.open("a.wav", "blob:1", blob()) is None
    assert backings.open("b.wav", "blob:2", 11) is None
    assert kernel.calls == 1  # asked once: the tier is off for the mount
    assert backings.off_reason is not None and "EPERM" in backings.off_reason
    assert backings.stats.refusals == {"EPERM": 1} and backings.stats.normal == 2


def test_the_declared_abi_matches_the_kernel_and_libfuse_3_17():
    assert passthrough.FUSE_DEV_IOC_BACKING_OPEN == 0x4010E501  # linux/fuse.h, _IOW(229, 1, 16 bytes)
    assert passthrough.FUSE_DEV_IOC_BACKING_CLOSE == 0x4004E502
    assert ctypes.sizeof(passthrough.FileInfo317) == 64  # libfuse 3.17's static assert
    assert passthrough.FileInfo317.backing_id.offset == 36
    assert passthrough.FUSE_CAP_PASSTHROUGH == 1 << 29


def test_an_older_libfuse_is_refused_with_its_version():
    class Info(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_int), ("bits", ctypes.c_uint), ("pad", ctypes.c_uint * 2),
                    ("fh", ctypes.c_uint64)]

    problem = passthrough.layout_problem((3, 14), Info, Info)
    assert problem is not None and "libfuse 3.14" in problem
    assert "fuse_conn_info" in (passthrough.layout_problem((3, 17), Info, Info) or "")


def test_a_live_backing_file_is_handed_out_for_new_opens_and_given_back_with_the_last_release() -> None:
    kernel = Kernel()
    backings = table(kernel)
    assert backings.held("a.wav") is None
    first = backings.open("a.wav", "blob:1", blob())
    held = backings.held("a.wav")
    assert held is not None and held[0] == "blob:1"
    os.fstat(held[1])  # a descriptor of its own, the caller's to close
    os.close(held[1])
    backings.release("a.wav", first)
    assert backings.held("a.wav") is None and kernel.registered == set()
