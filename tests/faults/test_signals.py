"""Stop signals (logout, `systemctl stop`, Ctrl-C on `--foreground`) never damage the cache.

SIGTERM, SIGINT or SIGHUP at any moment — idle, after a cloud track was read, with a download in flight —
is a clean unmount: the daemon exits 0, the folder is unmounted, the final report is written, `cachectl
verify` passes, and the next mount serves the cached track without a request to the server.

The daemon of a background mount is not our child; this process becomes a child subreaper so the daemon is
re-parented to it once `mixvfs mount` returns, and the test reads the daemon's real exit status."""

from __future__ import annotations

import ctypes
import filecmp
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CACHECTL, MIXVFS, Mount, getxattr, require_fuse, run, wait_until, write_session
from tests.faults.helpers import cachectl, cloud_track, cp, holds_open, name_of, stream_path
from tools.devserver import DevServer

PR_SET_CHILD_SUBREAPER = 36
SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
HANG_GUARD = 60.0  # only against a hang: a clean stop takes well under a second here


class Reaper:
    """Collects the exit status of daemons re-parented to this process."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def exit_status(self, pid: int, timeout: float = HANG_GUARD) -> int:
        ended: list[int] = []

        def reaped() -> bool:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                ended.append(os.waitstatus_to_exitcode(status))
            return bool(ended)

        if not wait_until(reaped, timeout):
            raise AssertionError(f"daemon {pid} still running {timeout:g} s after the signal")
        self.pids.remove(pid)
        return ended[0]

    def reap_rest(self) -> None:
        for pid in list(self.pids):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done == pid:
                self.pids.remove(pid)


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    require_fuse()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    reaper = Reaper()
    yield reaper
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    reaper.reap_rest()  # daemons unmounted by the mounter's teardown (it runs before this one)


def daemon_pid(mount: Mount, reaper: Reaper) -> int:
    pid = int(getxattr(mount.path, "user.mixvfs.pid"))
    reaper.pids.append(pid)
    return pid


def mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


def assert_cache_intact(cache_dir: Path) -> None:
    verified = cachectl(cache_dir, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "0 corrupt" in verified.stdout
    assert cachectl(cache_dir, "stats").returncode == 0
    for path in cache_dir.rglob("*"):  # the old bug wrote the daemon's "ready" message into the index database
        if path.is_file():
            assert b"libfuse could not mount" not in path.read_bytes(), path


def assert_next_mount_serves_from_cache(mounter: Callable[..., Mount], session: Path, cache_dir: Path,
                                        server: DevServer, server_root: Path, out: Path) -> None:
    gets = len(server.requests("GET", stream_path("a")))
    again = mounter(session, "--no-prefetch", cache_dir=cache_dir)
    done = cp(again.path / name_of("a"), out)
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(out, server_root / "stream" / "a.wav", shallow=False)
    assert len(server.requests("GET", stream_path("a"))) == gets  # served from the cache: no request
    assert again.track("a")["status"] == "cached"
    assert not list((cache_dir / "staging").glob("*.part"))  # nothing left of a cancelled download
    again.unmount()


def stop_and_check(mount: Mount, pid: int, signum: int, reaper: Reaper) -> dict[str, Any]:
    os.kill(pid, signum)
    assert reaper.exit_status(pid) == 0  # a stop signal is a clean unmount, not "could not mount"
    mount.mounted = False
    assert not mounted(mount.path)
    report = mount.report()
    assert report.get("finished") is True
    log = mount.log()
    assert "could not mount" not in log and "Traceback" not in log, log
    return report


def session_with(tmp_path: Path, server_root: Path, server: DevServer, *, slow: bool = False) -> Path:
    tracks = [cloud_track(server_root, "a", 200_000, seed=1)]
    if slow:
        tracks.append(cloud_track(server_root, "slow", 16_000_000, seed=2))
    return write_session(tmp_path / "s.json", tracks, server=server.url)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_stop_signal_while_idle_is_a_clean_unmount(signum, reaper, tmp_path, server_root, devserver, mounter):
    session = session_with(tmp_path, server_root, devserver)
    cache_dir = tmp_path / "cache"
    warmed = run([CACHECTL, "--cache-dir", str(cache_dir), "warm", str(session)])
    assert warmed.returncode == 0, warmed.stdout + warmed.stderr
    mount = mounter(session, "--no-prefetch", cache_dir=cache_dir)
    pid = daemon_pid(mount, reaper)
    assert os.listdir(mount.path) == [name_of("a")]
    report = stop_and_check(mount, pid, signum, reaper)
    assert [t["status"] for t in report["tracks"]] == ["cached"]
    assert_cache_intact(cache_dir)
    assert_next_mount_serves_from_cache(mounter, session, cache_dir, devserver, server_root, tmp_path / "out.wav")


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_stop_signal_after_a_cloud_track_was_read_is_a_clean_unmount(signum, reaper, tmp_path, server_root,
                                                                     devserver, mounter):
    session = session_with(tmp_path, server_root, devserver)
    mount = mounter(session, "--no-prefetch")
    pid = daemon_pid(mount, reaper)
    done = cp(mount.path / name_of("a"), tmp_path / "first.wav")
    assert done.returncode == 0, done.stderr
    report = stop_and_check(mount, pid, signum, reaper)
    assert [t["status"] for t in report["tracks"]] == ["cached"]
    assert_cache_intact(mount.cache_dir)
    assert_next_mount_serves_from_cache(mounter, session, mount.cache_dir, devserver, server_root,
                                        tmp_path / "out.wav")


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_stop_signal_mid_download_is_a_clean_unmount(signum, reaper, tmp_path, server_root, devserver, mounter):
    session = session_with(tmp_path, server_root, devserver, slow=True)
    mount = mounter(session, "--no-prefetch")
    pid = daemon_pid(mount, reaper)
    done = cp(mount.path / name_of("a"), tmp_path / "first.wav")
    assert done.returncode == 0, done.stderr
    devserver.set_faults({stream_path("slow"): {"rate": 1_000_000}})  # 16 s: in flight when the signal comes
    copier = subprocess.Popen(["cp", str(mount.path / name_of("slow")), str(tmp_path / "slow.wav")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        staging = mount.cache_dir / "staging"
        assert wait_until(lambda: mount.track("slow")["status"] == "fetching"
                          and any(p.stat().st_size > 0 for p in staging.glob("*.part")), timeout=HANG_GUARD)
        report = stop_and_check(mount, pid, signum, reaper)
        _, err = copier.communicate(timeout=HANG_GUARD)
    finally:
        if copier.poll() is None:
            copier.kill()
            copier.wait()
    # The copy in progress fails (never a short file with exit 0); the track is not "cached" half-done.
    assert copier.returncode != 0, err
    statuses = {t["id"]: t["status"] for t in report["tracks"]}
    assert statuses["a"] == "cached" and statuses["slow"] != "cached"
    assert_cache_intact(mount.cache_dir)
    devserver.set_faults({})
    assert_next_mount_serves_from_cache(mounter, session, mount.cache_dir, devserver, server_root,
                                        tmp_path / "out.wav")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: signal.Signals(s).name)
def test_foreground_mount_stopped_by_a_signal_exits_0_and_keeps_the_cache(signum, tmp_path, server_root,
                                                                          devserver, mounter):
    require_fuse()
    session = session_with(tmp_path, server_root, devserver)
    mountpoint, cache_dir, report_path = tmp_path / "fg", tmp_path / "cache", tmp_path / "fg-report.json"
    mountpoint.mkdir()
    with (tmp_path / "fg.log").open("w") as log:
        daemon = subprocess.Popen(
            [MIXVFS, "mount", str(session), str(mountpoint), "--foreground", "--no-prefetch",
             "--cache-dir", str(cache_dir), "--report", str(report_path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: daemon.poll() is not None or mounted(mountpoint), timeout=HANG_GUARD)
        assert daemon.poll() is None, (tmp_path / "fg.log").read_text()
        done = cp(mountpoint / name_of("a"), tmp_path / "first.wav")
        assert done.returncode == 0, done.stderr
        daemon.send_signal(signum)  # Ctrl-C in the terminal / systemctl stop
        assert daemon.wait(timeout=HANG_GUARD) == 0, (tmp_path / "fg.log").read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if mounted(mountpoint):
            run(["umount", "-l", str(mountpoint)])
    log_text = (tmp_path / "fg.log").read_text()
    assert "Traceback" not in log_text and "could not mount" not in log_text, log_text
    assert not mounted(mountpoint)
    report = Mount(mountpoint, cache_dir, report_path, session, tmp_path / "fg.log").report()
    assert report.get("finished") is True and [t["status"] for t in report["tracks"]] == ["cached"]
    assert_cache_intact(cache_dir)
    assert_next_mount_serves_from_cache(mounter, session, cache_dir, devserver, server_root, tmp_path / "out.wav")


# A server slow but steady: a 500-byte piece every 0.1 s, so no stall timeout ever fires, and a reader's first
# request (128 KiB with libfuse 2, 1 MiB with 3) would take 26-210 s, the whole track ~13 min. libfuse only sets
# its exit flag on a stop signal or an unmount and waits for the requests under way: the daemon stops within
# HANG_GUARD only if the waiting readers are failed at once.
TRICKLE = {"rate": 5_000}
BIG = 4_000_000


def blocked_reader(mount: Mount, track_id: str, out: Path) -> subprocess.Popen[str]:
    """`cat` of a cold track, once it sits in a read waiting for the download (bytes arriving, file open)."""
    path = mount.path / name_of(track_id)
    with out.open("wb") as sink:
        reader = subprocess.Popen(["cat", str(path)], stdout=sink, stderr=subprocess.PIPE, text=True)
    staging = mount.cache_dir / "staging"
    assert wait_until(lambda: mount.track(track_id)["status"] == "fetching" and holds_open(reader.pid, path)
                      and any(p.stat().st_size > 0 for p in staging.glob("*.part")), timeout=HANG_GUARD)
    return reader


def finish(reader: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = reader.communicate(timeout=HANG_GUARD)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    return reader.returncode, err


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_stop_signal_with_a_reader_waiting_on_a_slow_download_stops_at_once(signum, reaper, tmp_path, server_root,
                                                                            devserver, mounter):
    tracks = [cloud_track(server_root, "a", 200_000, seed=1), cloud_track(server_root, "slow", BIG, seed=2)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    pid = daemon_pid(mount, reaper)
    done = cp(mount.path / name_of("a"), tmp_path / "first.wav")
    assert done.returncode == 0, done.stderr
    devserver.set_faults({stream_path("slow"): TRICKLE})
    reader = blocked_reader(mount, "slow", tmp_path / "slow.wav")
    try:
        # Exits within the hang guard, far below what the bytes asked for would take to come.
        report = stop_and_check(mount, pid, signum, reaper)
    finally:
        code, err = finish(reader)
    assert code != 0, f"the waiting reader got a short file with success: {err}"  # EIO, never a short file
    assert (tmp_path / "slow.wav").stat().st_size < BIG
    statuses = {t["id"]: t["status"] for t in report["tracks"]}
    assert statuses["a"] == "cached" and statuses["slow"] != "cached"
    assert not list((mount.cache_dir / "staging").glob("*.part"))  # the cancelled download's body is gone
    assert_cache_intact(mount.cache_dir)
    devserver.set_faults({})
    assert_next_mount_serves_from_cache(mounter, session, mount.cache_dir, devserver, server_root,
                                        tmp_path / "out.wav")


def test_unmount_after_a_waiting_reader_was_killed_is_prompt_and_leaves_no_staging_file(reaper, tmp_path, server_root,
                                                                                         devserver, mounter):
    tracks = [cloud_track(server_root, "slow", BIG, seed=2)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    devserver.set_faults({stream_path("slow"): TRICKLE})
    mount = mounter(session, "--no-prefetch")
    pid = daemon_pid(mount, reaper)
    reader = blocked_reader(mount, "slow", tmp_path / "slow.wav")
    reader.kill()
    assert finish(reader)[0] != 0
    # The kernel keeps the killed reader's read-ahead requests with the daemon (and the file's release waits
    # for them): unmounting must not wait for their bytes.
    done = run([MIXVFS, "unmount", str(mount.path)], timeout=HANG_GUARD)
    assert done.returncode == 0, done.stdout + done.stderr
    mount.mounted = False
    assert reaper.exit_status(pid) == 0
    assert not list((mount.cache_dir / "staging").glob("*.part"))  # a clean unmount leaves no download behind
    report = mount.report()
    assert report.get("finished") is True and report["tracks"][0]["status"] != "cached"
    assert "Traceback" not in mount.log(), mount.log()
    assert_cache_intact(mount.cache_dir)


def start_foreground(session: Path, mountpoint: Path, cache_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    """The mount as the launchd agent (contrib/com.mixboard.mixvfs.plist) and the systemd unit run it."""
    with log.open("a") as handle:
        return subprocess.Popen([MIXVFS, "mount", str(session), str(mountpoint), "--foreground", "--no-prefetch",
                                 "--cache-dir", str(cache_dir)], stdin=subprocess.DEVNULL, stdout=handle,
                                stderr=subprocess.STDOUT)


def serving(mountpoint: Path) -> bool:
    try:
        return name_of("a") in os.listdir(mountpoint)
    except OSError:
        return False


def test_a_restart_after_a_crash_clears_the_dead_mount_and_serves_then_logout_unmounts(tmp_path, server_root,
                                                                                        devserver, mounter):
    """launchd's KeepAlive (systemd's Restart=on-failure) starts the same foreground command again after a
    crash: it finds the dead mount the crash left, clears it and serves; logout's SIGTERM then unmounts."""
    require_fuse()
    session = session_with(tmp_path, server_root, devserver)
    mountpoint, cache_dir, log = tmp_path / "agent", tmp_path / "cache", tmp_path / "agent.log"
    mountpoint.mkdir()
    first = start_foreground(session, mountpoint, cache_dir, log)
    second = None
    try:
        assert wait_until(lambda: first.poll() is not None or serving(mountpoint), timeout=HANG_GUARD), log.read_text()
        first.kill()  # the crash
        first.wait()
        with pytest.raises(OSError):
            os.listdir(mountpoint)  # "Transport endpoint is not connected"
        second = start_foreground(session, mountpoint, cache_dir, log)
        assert wait_until(lambda: second.poll() is not None or serving(mountpoint), timeout=HANG_GUARD), \
            log.read_text()
        assert second.poll() is None, log.read_text()
        done = cp(mountpoint / name_of("a"), tmp_path / "a.wav")
        assert done.returncode == 0, done.stderr
        second.send_signal(signal.SIGTERM)  # logout
        assert second.wait(timeout=HANG_GUARD) == 0, log.read_text()
    finally:
        for daemon in (first, second):
            if daemon is not None and daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        if mounted(mountpoint):
            run(["umount", "-l", str(mountpoint)])
    assert not mounted(mountpoint)
    assert "cleared a stale mount" in log.read_text()
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("how", ["unmount", "SIGTERM"])
def test_downloads_waiting_for_headers_end_at_the_stop_none_left_fetching(how, reaper, tmp_path, server_root,
                                                                          devserver, mounter):
    """A server that takes each GET and sends no headers, the stall timeout far beyond the test: at an unmount or
    a stop signal the requests still waiting for an answer are cut (their connections shut down), so each
    prefetch download ends then, and the final report shows none of them still fetching (a worker left waiting
    in its request kept its track "fetching" past the end, and held the daemon seconds after the FUSE loop)."""
    tracks = [cloud_track(server_root, f"t{n}", 100_000 + n, seed=n) for n in range(4)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    devserver.set_faults({"*": {"hold": "h"}})
    try:
        mount = mounter(session, "--stall-timeout", "600s")
        pid = daemon_pid(mount, reaper)
        devserver.wait_held("h", len(tracks))
        if how == "unmount":
            done = run([MIXVFS, "unmount", str(mount.path)], timeout=HANG_GUARD)
            assert done.returncode == 0, done.stdout + done.stderr
            mount.mounted = False
            assert reaper.exit_status(pid) == 0
            report = mount.report()
        else:
            report = stop_and_check(mount, pid, signal.SIGTERM, reaper)
        assert report.get("finished") is True
        statuses = {record["id"]: record["status"] for record in report["tracks"]}
        assert statuses == {track["id"]: "pending" for track in tracks}, statuses
        assert not list((mount.cache_dir / "staging").glob("*.part"))
    finally:
        devserver.release("h")
