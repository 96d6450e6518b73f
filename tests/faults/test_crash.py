"""Crash safety: the daemon killed with -9 mid-download. The next `mixvfs mount` on the same folder clears
the dead mount by itself, removes the dead process's temp files (their flock died with it; a live
download's file is left alone), never serves a partial blob, and the cache verifies."""

from __future__ import annotations

import errno
import filecmp
import os
import signal

from tests.conftest import getxattr, wait_until, write_session
from tests.faults.helpers import cachectl, cachectl_json, cloud_track, cp, name_of, stream_path


def dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1].startswith("Z")  # a zombie has let go of everything
    except FileNotFoundError:
        return True


def test_kill_9_mid_download_then_remount_recovers(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "big", 3_000_000)], server=devserver.url)
    devserver.set_faults({stream_path("big"): {"hold": "big", "hold_after": 1_000_000}})  # parked mid-body
    first = mounter(session, "--retry-wait", "0.01s")  # prefetch starts the download at once
    staging = first.cache_dir / "staging"
    devserver.wait_held("big")
    assert wait_until(lambda: any(p.stat().st_size > 0 for p in staging.glob("*.part")))
    pid = int(getxattr(first.path, "user.mixvfs.pid"))
    leftovers = sorted(p.name for p in staging.glob("*.part"))
    assert leftovers and all(name.startswith(f"{pid}.") for name in leftovers)
    # Another process cleaning the cache leaves a live download's file alone: the download holds its lock.
    assert cachectl_json(first.cache_dir, "prune")["staging_files"] == 0
    assert all((staging / name).exists() for name in leftovers)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: dead(pid))
    assert cachectl_json(first.cache_dir, "stats")["staging_left_over"] == len(leftovers)  # the kernel let go
    first.mounted = False
    try:
        os.listdir(first.path)  # not stat: the kernel may answer that from its attribute cache
    except OSError as exc:
        assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)  # "Transport endpoint is not connected"
    else:
        raise AssertionError("a killed daemon leaves a dead mount behind")

    devserver.set_faults({})
    devserver.release("crash")  # the dead daemon's request: let the server end it
    second = mounter(session, "--no-prefetch", mountpoint=first.path)  # same folder, same cache
    assert os.path.ismount(second.path)
    assert not any((staging / name).exists() for name in leftovers)  # the dead process's temp files
    assert cachectl(second.cache_dir, "verify").returncode == 0
    done = cp(second.path / name_of("big"), tmp_path / "out.wav")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "out.wav", server_root / "stream" / "big.wav", shallow=False)
    second.unmount()
    verified = cachectl(second.cache_dir, "verify")
    assert verified.returncode == 0 and "checked 1 blob(s): 0 corrupt" in verified.stdout


def test_a_daemon_killed_by_a_fatal_signal_says_so_in_its_log_with_every_thread_s_stack(
        tmp_path, server_root, devserver, mounter):
    """SIGBUS is what the kernel sends a process that writes to a mapped page it refuses: SQLite writes its WAL
    index (``cache.db-shm``) through a mapping at every database access, so that file made immutable, or a
    disk gone read-only, kills the daemon with no Python exception to log. Its readers then get "Transport
    endpoint is not connected"; the log must say why, not end at its start-up lines."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "one", 100_000)], server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    assert mount.pid is not None
    mount.crash_expected = True
    os.kill(mount.pid, signal.SIGBUS)
    assert wait_until(lambda: dead(mount.pid))
    mount.mounted = False  # the teardown clears the dead mount
    log = mount.log()
    assert "Fatal Python error: Bus error" in log, log
    assert log.count("(most recent call first)") >= 2, log  # every thread: the FUSE loop's and our own
    assert "fuse_ops.py" in log, log
