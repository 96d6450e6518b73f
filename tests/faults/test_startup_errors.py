"""Clear errors before anything is mounted: a mountpoint holding files, an unusable cache folder or report
path, a token command that prints nothing, hangs or is not installed — each is one line in the terminal
(exit 2), checked before the daemon starts; nothing is mounted. And a CDN refusing a redirected request
is reported as that host refusing, not as our token being rejected."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MIXVFS, Mount, run, wait_until, write_session
from tests.faults.helpers import FAST, cloud_track, cp, name_of, stream_path
from tools.devserver import DevServer


def mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


def refused(mount: Mount) -> str:
    """The one line `mixvfs mount` printed; asserts exit 2, nothing mounted, no traceback."""
    stdout, stderr, returncode = mount.extra
    assert returncode == "2", (stdout, stderr)
    assert not mounted(mount.path)
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixvfs: "), stderr
    return lines[0]


def refused_before_the_daemon(mount: Mount) -> str:
    line = refused(mount)
    assert not mount.log_file.exists(), mount.log()  # no daemon was started: it would have logged
    return line


def local_session(tmp_path: Path, name: str = "s.json") -> Path:
    track = tmp_path / "local.wav"
    track.write_bytes(b"RIFF....WAVE")
    return write_session(tmp_path / name, [{"id": "l1", "artist": "A", "title": "Local", "file_path": str(track)}])


@pytest.fixture
def read_only_place(tmp_path: Path, mounter: Callable[..., Mount]) -> Path:
    """A folder where nothing can be created, even by root: a (read-only) mixvfs mount."""
    return mounter(local_session(tmp_path, "ro.json"), "--no-prefetch", mountpoint=tmp_path / "ro").path


# -- the mountpoint --------------------------------------------------------------------------------------


def test_mounting_over_a_folder_with_files_is_refused_unless_allowed(tmp_path, mounter):
    session = local_session(tmp_path)
    folder = tmp_path / "Tracks"
    folder.mkdir()
    (folder / "mine.txt").write_text("the user's own file")
    line = refused_before_the_daemon(mounter(session, mountpoint=folder, expect_ok=False))
    assert str(folder) in line and "not empty" in line and "--allow-non-empty" in line
    assert os.listdir(folder) == ["mine.txt"]

    allowed = mounter(session, "--allow-non-empty", mountpoint=folder)
    assert os.listdir(folder) == ["A - Local.wav"]  # hidden while mounted, as asked
    allowed.unmount()
    assert os.listdir(folder) == ["mine.txt"]


# -- the cache folder and the report ---------------------------------------------------------------------


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only"])
def test_unusable_cache_folder_is_one_line_before_the_daemon_starts(case, tmp_path, mounter, request):
    session = local_session(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    cache_dir, cause = {
        "a file": (blocker, "it is a file, not a folder"),
        "under a file": (blocker / "cache", f"{blocker} is a file, not a folder"),
        "read-only": (None, "Read-only file system"),
    }[case]
    if cache_dir is None:
        cache_dir = request.getfixturevalue("read_only_place") / "cache"
    line = refused_before_the_daemon(mounter(session, cache_dir=cache_dir, expect_ok=False))
    assert str(cache_dir) in line and cause in line, line


@pytest.mark.parametrize("case", ["read-only", "under a file", "a folder"])
def test_unwritable_report_is_one_line_before_the_daemon_starts(case, tmp_path, mounter, request):
    session = local_session(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    (tmp_path / "a-folder").mkdir()
    report, cause = {
        "under a file": (blocker / "report.json", f"{blocker} is a file, not a folder"),
        "a folder": (tmp_path / "a-folder", "it is a folder, not a file"),
        "read-only": (None, "Read-only file system"),
    }[case]
    if report is None:
        report = request.getfixturevalue("read_only_place") / "report.json"
    line = refused_before_the_daemon(mounter(session, "--report", str(report), expect_ok=False))
    assert str(report) in line and cause in line, line


# -- the token command -----------------------------------------------------------------------------------


def test_token_command_printing_nothing_is_said_at_mount_time(tmp_path, server_root, mounter):
    with DevServer(server_root, tokens=["right"]) as server:
        session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 50_000)], server=server.url)
        line = refused(mounter(session, *FAST, "--token-command", "printf ''", expect_ok=False))
        assert "the token command printed no token" in line, line
        assert server.requests() == []


def test_token_command_printing_nothing_on_a_refresh_fails_the_track_with_that_cause(tmp_path, server_root,
                                                                                      mounter):
    source = tmp_path / "client-token"
    source.write_text("expired")
    with DevServer(server_root, tokens=["right"]) as server:
        session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 50_000)], server=server.url)
        mount = mounter(session, *FAST, "--token-command", f"cat {source}")
        source.write_text("")  # the token service has nothing for us any more
        done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
        assert done.returncode != 0 and "Input/output error" in done.stderr
        record = mount.track("t1")
        assert record["status"] == "failed", record
        assert "the token command printed no token" in record["error"], record
        assert [g["status"] for g in server.requests("GET", stream_path("t1"))] == [401]  # no retry without a token


def test_token_command_that_hangs_is_stopped_with_its_children(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 50_000)], server=devserver.url)
    child_pid = tmp_path / "child.pid"
    command = f"sleep 300 & echo $! > {child_pid}; wait"  # a helper that starts a child and never answers
    line = refused(mounter(session, *FAST, "--token-command", command, "--token-timeout", "1s", expect_ok=False))
    assert "did not finish within 1 s" in line, line
    pid = int(child_pid.read_text())
    assert wait_until(lambda: gone(pid), timeout=30), f"the token command's child {pid} is still running"


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1].startswith("Z")  # killed, waiting for a parent to reap it
    except FileNotFoundError:
        return True


def test_token_command_not_installed_names_the_program_only(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 50_000)], server=devserver.url)
    mount = mounter(session, *FAST, "--token-command", "no-such-token-tool --password hunter2", expect_ok=False)
    line = refused(mount)
    assert "command not found: no-such-token-tool" in line, line
    assert "hunter2" not in line and "hunter2" not in mount.log()


# -- a CDN refusing a redirected request -----------------------------------------------------------------


def test_cdn_refusing_a_redirected_request_is_reported_as_the_cdn_not_the_token(tmp_path, server_root, mounter):
    cdn_root = tmp_path / "cdn"
    cdn_root.mkdir()
    entry = cloud_track(server_root, "t1", 120_000)
    with DevServer(cdn_root) as cdn, DevServer(server_root, tokens=["the-token"]) as api:
        cdn.set_faults({"/signed/t1.wav": {"status": 403}})  # the signed URL has expired
        api.set_faults({stream_path("t1"): {"redirect": cdn.url_for("/signed/t1.wav")}})
        session = write_session(tmp_path / "s.json", [entry], server=api.url)
        mount = mounter(session, *FAST, env={"MIXVFS_TOKEN": "the-token"})
        done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
        assert done.returncode != 0 and "Input/output error" in done.stderr
        record = mount.track("t1")
        cdn_host = cdn.url.split("://", 1)[1].rstrip("/")
        assert record["status"] == "failed", record
        assert f"the CDN host {cdn_host} refused the request (HTTP 403" in record["error"], record
        assert "signed URL may have expired" in record["error"] and "token" not in record["error"], record
        assert [(g["status"], g["auth"]) for g in cdn.requests("GET")] == [(403, None)]


def test_a_server_slow_to_answer_probes_does_not_hold_the_folder_back(tmp_path, server_root, devserver):
    """Tracks without a size are asked about before the folder goes live. A server that does not answer
    (2000 tracks at 3 s each took 17 minutes) is waited for at most the probe deadline: the tracks it has
    answered for have their size, the others are asked again later (and when a program looks)."""
    from mixvfs.cache.http import HttpClient
    from mixvfs.cache.index import SourceIndex
    from mixvfs.vfs.session.manifest import load_manifest
    from mixvfs.vfs.session.tracks import build_tracks

    entries = [cloud_track(server_root, f"t{i}", 1000 + i, declare_size=False) for i in (1, 2)]
    session = load_manifest(write_session(tmp_path / "s.json", entries, server=devserver.url))
    devserver.set_faults({stream_path("t2"): {"hold": "probe", "hold_head": True}})
    http, index = HttpClient(), SourceIndex(tmp_path / "cache")
    try:
        tracks = build_tracks(session, http=http, index=index, deadline=0.5)  # t2's HEAD is never answered
        assert devserver.held("probe") == 1
        by_id = {t.id: t for t in tracks}
        assert by_id["t1"].size == 1001 and by_id["t1"].probe_failure is None
        failure = by_id["t2"].probe_failure
        assert by_id["t2"].size is None and failure is not None and "did not answer within 0.5 s" in failure.reason
    finally:
        devserver.release("probe")
        http.close()
        index.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_mount_still_starting_is_cancelled_with_its_daemon(tmp_path, server_root, devserver, signum):
    """Ctrl-C (or the terminal closing) while `mixvfs mount` waits for a daemon still asking a slow server:
    the daemon, in a session of its own, went on and mounted later; SIGINT was not even noticed."""
    entries = [cloud_track(server_root, "t1", 1000, declare_size=False)]
    session = write_session(tmp_path / "s.json", entries, server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"hold": "probe", "hold_head": True}})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([MIXVFS, "mount", str(session), str(mnt), "--cache-dir", str(tmp_path / "cache")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        devserver.wait_held("probe")  # the daemon is asking: the mount is still starting
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)  # hang guard
    finally:
        devserver.release("probe")
        proc.kill()
    assert proc.returncode == 130, (out, err)
    assert err.strip() == f"mixvfs: mount cancelled ({signal.Signals(signum).name}): the daemon was stopped"
    daemons = run(["pgrep", "-f", f"--foreground.*{mnt}|{mnt}.*--foreground"]).stdout.split()
    assert daemons == [] and not os.path.ismount(mnt)
