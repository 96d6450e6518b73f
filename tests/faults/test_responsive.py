"""The mount keeps answering while downloads queue (issue 8, item 8).

Thirty readers wait on uncached cloud tracks behind ``--jobs 2``, the two running downloads parked mid-body
by the dev server until the checks are done (so every reader surely still waits); meanwhile a small
local track, an already-cached cloud track, ``stat`` and ``ls -l`` must answer at once. Before the fix the
readers' parked reads held the kernel's 12 background slots for the mount and libfuse's 16 threads: the issue
saw a local track take 36-60 s, and here a cached track took 48-68 s. The bound asserted is generous (a loaded
2-core machine; the issue wants 1 s), and the measured times are printed.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Mount, run, wait_until, write_session
from tests.faults.helpers import cloud_track, holds_open, name_of
from tools.make_audio import write_sized

READERS = 30
SIZE = 6 << 20
HELD_AT = 1 << 20  # the two downloads that run park here until the checks are done: every reader still waits
BOUND = 10.0  # seconds; the issue wants 1 s, the bug took 36-60 s
HANG_GUARD = 120.0


def requests_waiting(mountpoint: Path) -> int | None:
    """Requests of this mount waiting on the daemon or for a kernel slot (fusectl; None where absent)."""
    try:
        minor = os.minor(os.stat(mountpoint).st_dev)
        return int(Path(f"/sys/fs/fuse/connections/{minor}/waiting").read_text())
    except (OSError, ValueError):
        return None


def timed(label: str, action: Callable[[], subprocess.CompletedProcess[bytes]],
          times: dict[str, float]) -> subprocess.CompletedProcess[bytes]:
    start = time.monotonic()
    done = action()
    times[label] = time.monotonic() - start
    assert done.returncode == 0, (label, done.stderr)
    return done


def capture(*cmd: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, capture_output=True, timeout=HANG_GUARD, check=False)


def test_local_cached_stat_and_ls_answer_while_thirty_readers_wait(tmp_path, server_root, devserver, mounter):
    local = tmp_path / "local.wav"
    write_sized(local, 300_000, seed=7)
    ids = [f"q{i:02d}" for i in range(READERS)]
    tracks = [{"id": "local", "artist": "Artist", "title": "local", "file_path": str(local)},
              cloud_track(server_root, "cached", 2_000_000, seed=99),
              *(cloud_track(server_root, t, SIZE, seed=i) for i, t in enumerate(ids))]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)

    # A first mount caches one cloud track; the second mount starts with an empty page cache, so reading
    # that track there reaches the daemon (it is served from the disk cache, not the kernel's).
    first = mounter(session, "--no-prefetch")
    assert run(["cp", str(first.path / name_of("cached")), str(tmp_path / "warm.wav")]).returncode == 0
    first.unmount()

    devserver.set_faults({"*": {"hold": "q", "hold_after": HELD_AT}})
    mount: Mount = mounter(session, "--no-prefetch", "--jobs", "2", "--stall-timeout", "300s")  # parked, not stalled
    sources = [mount.path / name_of(t) for t in ids]
    out = tmp_path / "out"
    out.mkdir()
    readers = [subprocess.Popen(["cp", str(src), str(out / src.name)], stderr=subprocess.PIPE) for src in sources]
    try:
        # The event gate: every reader has its track open (cp reads right after opening it), two downloads
        # are running (parked mid-body), and where fusectl is mounted, the kernel counts a request waiting
        # for each reader.
        assert wait_until(lambda: all(holds_open(r.pid, s) for r, s in zip(readers, sources, strict=True)),
                          HANG_GUARD)
        devserver.wait_held("q", 2, timeout=HANG_GUARD)
        assert wait_until(lambda: sum(r["status"] == "fetching" for r in mount.report()["tracks"]) == 2, HANG_GUARD)
        if requests_waiting(mount.path) is not None:
            assert wait_until(lambda: (requests_waiting(mount.path) or 0) >= READERS, HANG_GUARD)

        times: dict[str, float] = {}
        got = timed("read local track", lambda: capture("cat", str(mount.path / name_of("local"))), times)
        assert got.stdout == local.read_bytes()
        timed("stat cloud track", lambda: capture("stat", str(sources[-1])), times)
        listing = timed("ls -l", lambda: capture("ls", "-l", str(mount.path)), times)
        assert len(listing.stdout.splitlines()) == READERS + 3  # "total" + local + cached + 30
        got = timed("read cached track", lambda: capture("cat", str(mount.path / name_of("cached"))), times)
        assert got.stdout == (server_root / "stream" / "cached.wav").read_bytes()
        still_running = sum(r.poll() is None for r in readers)
        waiting = requests_waiting(mount.path)
        print(f"\nwith {still_running} of {READERS} readers waiting"
              + ("" if waiting is None else f" ({waiting} requests)") + ": "
              + ", ".join(f"{label} {seconds:.3f} s" for label, seconds in times.items()))
        assert still_running == READERS  # all of it happened while every reader was still waiting
        assert devserver.held("q") == 2
        assert max(times.values()) < BOUND, times
    finally:
        devserver.set_faults({})  # the queued downloads now run at full speed
        devserver.release("q")  # and so do the two parked ones
        codes = [r.wait(timeout=HANG_GUARD) for r in readers]
    assert codes == [0] * READERS, [r.stderr.read() for r in readers if r.stderr]
    for src in sources:
        assert filecmp.cmp(out / src.name, server_root / "stream" / f"{src.name.split(' - ')[1]}", shallow=False)
