"""The daemon builds its session with the cyclic collector paused, then keeps those objects out of its passes."""

from __future__ import annotations

import gc

import pytest

from mixvfs.vfs.commands.daemon import no_collection_while_opening


@pytest.fixture(autouse=True)
def collector_as_it_was():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_the_session_is_built_without_collections_then_frozen():
    gc.unfreeze()
    collections = sum(generation["collections"] for generation in gc.get_stats())
    with no_collection_while_opening():
        assert not gc.isenabled()
        built = [[i] for i in range(10 * gc.get_threshold()[0])]  # far past a collection's threshold
        assert sum(generation["collections"] for generation in gc.get_stats()) == collections
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(built)  # out of every later pass


def test_the_collector_comes_back_when_opening_fails():
    with pytest.raises(RuntimeError), no_collection_while_opening():
        raise RuntimeError("a bad manifest")
    assert gc.isenabled()


def resident_mib() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024


def freed_on_the_c_heap(mib: int) -> bytearray:
    """``mib`` MiB written and freed on the C heap (64 KiB blocks: under glibc's mmap threshold), below a block
    still held (the heap's top cannot shrink past it, as after a session's build); the held block is returned."""
    blocks = [bytearray(b"x" * (64 << 10)) for _ in range(mib * 16)]
    held = bytearray(b"x" * (64 << 10))
    del blocks
    return held


@pytest.mark.linux_facilities  # reads /proc/self/status
def test_the_c_heap_freed_while_opening_goes_back_to_the_system():
    """What building the session freed is given back when it ends (glibc keeps free heap memory for reuse that
    a mount never makes: 23 MB of a 100 000-track daemon after the parse)."""
    with no_collection_while_opening():
        held = freed_on_the_c_heap(32)
        before = resident_mib()
    assert before - resident_mib() >= 16, (before, resident_mib())
    assert len(held) == 64 << 10


def test_what_libfuse_wrote_to_the_log_while_mounting_is_told_apart_from_our_lines(tmp_path) -> None:
    from mixvfs.vfs.commands.daemon import libfuse_said, log_size

    log = tmp_path / "mixvfs.log"
    log.write_text("2026-12-07 00:00:00,001 INFO mixvfs.x: an earlier mount\nfuse: an earlier complaint\n")
    since = log_size(log)
    with log.open("a") as handle:
        handle.write("2026-12-07 00:00:01,002 INFO mixvfs.vfs.commands.daemon: mounting S (1 tracks) at /m\n"
                     "fusermount3: user has no write access to mountpoint /m\n")
    assert libfuse_said(log, since) == "fusermount3: user has no write access to mountpoint /m"
    assert libfuse_said(None, since) is None and libfuse_said(tmp_path / "none.log", 0) is None
