"""Tier 2, the export workflow around a real mount: xattrs, `mixvfs status`, the live session (manifest
edited while mounted, during a copy), and the log's one line per failure."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MIXVFS, getxattr, listxattr, run, wait_until, write_session
from tools.make_audio import write_sized


def cloud(track_id: str, title: str, path: str, size: int) -> dict[str, object]:
    return {"id": track_id, "artist": "Art", "title": title, "cloud_stream_path": path, "size": size,
            "content_type": "audio/wav"}


def serve(server_root: Path, name: str, size: int, seed: int) -> None:
    (server_root / "stream").mkdir(exist_ok=True)
    write_sized(server_root / "stream" / name, size, kind="wav", seed=seed)


def test_xattrs_of_files_and_root_status(tmp_path, server_root, devserver, mounter):
    serve(server_root, "ok", 100_000, 1)
    session = write_session(tmp_path / "s.json", [
        cloud("c1", "Fine", "/stream/ok", 100_000),
        cloud("x1", "Gone", "/stream/nope", 1000),
    ], server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    fine, gone = mount.path / "Art - Fine.wav", mount.path / "Art - Gone.wav"
    assert getxattr(fine, "user.mixvfs.status") == b"pending"
    assert set(listxattr(fine)) == {f"user.mixvfs.{k}" for k in ("status", "source", "error", "digest", "id")}
    run(["cp", str(fine), str(tmp_path / "fine.wav")], check=True)
    assert filecmp.cmp(tmp_path / "fine.wav", server_root / "stream" / "ok", shallow=False)
    mount.wait_track("c1", lambda r: r["status"] == "cached")
    assert getxattr(fine, "user.mixvfs.status") == b"cached"
    assert getxattr(fine, "user.mixvfs.source") == b"cloud"
    assert getxattr(fine, "user.mixvfs.id") == b"c1"
    assert getxattr(fine, "user.mixvfs.digest").decode() == mount.track("c1")["digest"]
    assert len(getxattr(fine, "user.mixvfs.digest")) == 32
    assert run(["cp", str(gone), str(tmp_path / "gone.wav")]).returncode != 0
    assert getxattr(gone, "user.mixvfs.status") == b"failed"
    assert getxattr(gone, "user.mixvfs.error") == b"the server answered HTTP 404 Not Found"
    status = json.loads(getxattr(mount.path, "user.mixvfs.status"))
    assert status["tracks"] == 2 and status["counts"] == {"cached": 1, "failed": 1}
    assert status["downloading"] == []
    assert status["failed"] == [{"name": "Art - Gone.wav", "error": "the server answered HTTP 404 Not Found"}]
    assert getxattr(mount.path, "user.mixvfs.pid").decode().isdigit()
    done = run([MIXVFS, "status", str(mount.path), "--json"])
    assert done.returncode == 1  # a failed track
    assert json.loads(done.stdout) == status
    text = run([MIXVFS, "status", str(mount.path)]).stdout.splitlines()
    assert text == ["session 'Test Session': 2 tracks (1 cached, 1 failed)", "downloading: 0", "failed: 1",
                    "  Art - Gone.wav: the server answered HTTP 404 Not Found"]


def test_a_copy_of_the_mounts_folder_with_its_attributes_is_no_mount_for_status(tmp_path, server_root, devserver,
                                                                                 mounter):
    """`cp -a` and `rsync -aAX` copy the root's user.mixvfs.* attributes with the folder: status read them from
    the copy and showed a session (and `--watch` refreshed it for ever), where the folder is no mount."""
    serve(server_root, "ok", 100_000, 1)
    session = write_session(tmp_path / "s.json", [cloud("c1", "Fine", "/stream/ok", 100_000)], server=devserver.url)
    mount = mounter(session)
    mount.wait_track("c1", lambda r: r["status"] == "cached")
    run(["cp", "-a", str(mount.path), str(tmp_path / "copy")], check=True)
    assert getxattr(tmp_path / "copy", "user.mixvfs.status")  # the copy carries the attribute
    done = run([MIXVFS, "status", str(tmp_path / "copy")])
    assert done.returncode == 2 and "nothing is mounted at" in done.stderr, done
    watched = run([MIXVFS, "status", str(tmp_path / "copy"), "--watch", "0.2"], timeout=30)
    assert watched.returncode == 2 and "nothing is mounted at" in watched.stderr, watched
    assert run([MIXVFS, "status", str(mount.path)]).returncode == 0  # the mount itself still answers


def test_unmount_of_a_path_through_a_missing_folder_is_refused(tmp_path, server_root, devserver, mounter):
    """`nope/../mnt` names no folder for the shell, umount or fusermount3: unmount refuses it as mount does."""
    session = write_session(tmp_path / "s.json", [], server=devserver.url)
    mount = mounter(session)
    typed = f"{tmp_path}/nope/../{mount.path.name}"
    done = run([MIXVFS, "unmount", typed])
    assert done.returncode == 2 and f"{tmp_path / 'nope'} is missing" in done.stderr, done
    assert os.path.ismount(mount.path)


def without_rate(download: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in download.items() if key != "rate"}  # the rate changes as time passes


def status_of(mountpoint: Path) -> dict[str, Any]:
    return dict(json.loads(getxattr(mountpoint, "user.mixvfs.status")))


def test_status_shows_a_download_in_flight(tmp_path, server_root, devserver, mounter):
    size, held_at = 1536 << 10, 1 << 20
    serve(server_root, "slow", size, 2)
    # The download parks after 1 MiB until the test lets it go: status is asked while it is surely in flight.
    devserver.set_faults({"/stream/slow": {"hold": "slow", "hold_after": held_at}})
    session = write_session(tmp_path / "s.json", [cloud("s1", "Slow", "/stream/slow", size)], server=devserver.url)
    mount = mounter(session)  # prefetch starts the download
    devserver.wait_held("slow")
    # The server has sent its 1 MiB; poll (hang guard only) until the mount has taken all of it in.
    def taken_in() -> bool:
        downloading = status_of(mount.path)["downloading"]
        return bool(downloading) and downloading[0]["available"] == held_at

    assert wait_until(taken_in, 30), status_of(mount.path)
    status = status_of(mount.path)
    assert [without_rate(d) for d in status["downloading"]] == [
        {"id": "s1", "name": "Art - Slow.wav", "available": held_at, "total": size, "attempts": 1,
         "state": "fetching"}]
    assert status["downloading"][0]["rate"] > 0  # bytes per second since it started: what --watch shows
    assert status["counts"] == {"downloading": 1}
    done = run([MIXVFS, "status", str(mount.path)])
    assert done.returncode == 0
    assert any(line.startswith("  Art - Slow.wav: 1.0 MiB of 1.5 MiB (67%), ") and line.endswith(" left")
               for line in done.stdout.splitlines()), done.stdout  # bytes, share, rate and time left
    watch = subprocess.Popen([MIXVFS, "status", str(mount.path), "--watch", "0.1", "--json"],
                             stdout=subprocess.PIPE, text=True)
    assert watch.stdout is not None
    first, second = json.loads(watch.stdout.readline()), json.loads(watch.stdout.readline())
    watch.terminate()
    watch.wait(timeout=5)
    assert first["session"] == second["session"] == "Test Session"
    held = [without_rate(d) for d in status["downloading"]]
    assert [without_rate(d) for d in first["downloading"]] == [without_rate(d) for d in second["downloading"]] == held
    assert devserver.held("slow") == 1
    devserver.release("slow")
    assert mount.wait_track("s1", lambda r: r["status"] == "cached")["status"] == "cached"
    assert status_of(mount.path)["downloading"] == []


def test_live_reload_adds_and_removes_tracks_while_a_copy_runs(tmp_path, server_root, devserver, mounter):
    serve(server_root, "long", 2_000_000, 3)
    serve(server_root, "old", 50_000, 4)
    serve(server_root, "new", 60_000, 5)
    # The copy's download parks after 1.5 MB until the reload is done and checked: the copy spans the reload.
    devserver.set_faults({"/stream/long": {"hold": "long", "hold_after": 1_500_000}})
    tracks = [cloud("l1", "Long", "/stream/long", 2_000_000), cloud("o1", "Old", "/stream/old", 50_000)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    assert sorted(os.listdir(mount.path)) == ["Art - Long.wav", "Art - Old.wav"]
    copy = subprocess.Popen(["cp", str(mount.path / "Art - Long.wav"), str(tmp_path / "long.wav")],
                            stderr=subprocess.PIPE, text=True)
    devserver.wait_held("long")
    renamed = {**tracks[0], "title": "Longer"}
    write_session(session, [renamed, cloud("n1", "New", "/stream/new", 60_000)], server=devserver.url)
    wanted = ["Art - Longer.wav", "Art - New.wav"]
    # The reload is done once it is logged: the listing swapped and then the kernel told to forget the old names.
    # A listing alone shows the new names before that notice (a suite run under load then saw "Old" stat'ed).
    assert wait_until(lambda: "manifest changed: now " in mount.log()), mount.log()
    assert sorted(os.listdir(mount.path)) == wanted
    assert not (mount.path / "Art - Old.wav").exists()
    assert (mount.path / "Art - New.wav").stat().st_size == 60_000
    run(["cp", str(mount.path / "Art - New.wav"), str(tmp_path / "new.wav")], check=True)
    assert filecmp.cmp(tmp_path / "new.wav", server_root / "stream" / "new", shallow=False)
    assert copy.poll() is None  # the copy opened before the reload is still waiting for its bytes
    devserver.release("long")
    _, err = copy.communicate(timeout=30)
    assert copy.returncode == 0, err  # the file open before the reload kept reading to the end
    assert filecmp.cmp(tmp_path / "long.wav", server_root / "stream" / "long", shallow=False)
    report = mount.report()
    assert [(t["id"], t["name"]) for t in report["tracks"]] == [("l1", "Art - Longer.wav"), ("n1", "Art - New.wav")]
    assert mount.wait_track("l1", lambda r: r["status"] == "cached")["status"] == "cached"


def test_invalid_manifest_keeps_the_listing_and_is_logged(tmp_path, server_root, devserver, mounter):
    serve(server_root, "old", 50_000, 4)
    session = write_session(tmp_path / "s.json", [cloud("o1", "Old", "/stream/old", 50_000)], server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    session.write_text('{"tracks": [{"title": "no id"}]}')
    assert wait_until(lambda: "cannot be used" in mount.log()), mount.log()
    assert os.listdir(mount.path) == ["Art - Old.wav"]
    lines = [line for line in mount.log().splitlines() if "cannot be used" in line]
    assert len(lines) == 1 and "track 0" in lines[0] and "'id'" in lines[0]


def test_log_has_one_line_per_failure_with_name_and_cause(tmp_path, server_root, devserver, mounter):
    serve(server_root, "ok", 10_000, 1)
    session = write_session(tmp_path / "s.json", [
        cloud("c1", "Fine", "/stream/ok", 10_000),
        cloud("x1", "Gone", "/stream/nope", 1000),
        {"id": "m1", "artist": "No", "title": "File", "file_path": "/nonexistent/x.wav"},
    ], server=devserver.url)
    mount = mounter(session, "--no-prefetch", "--failed-for", "0s", "--log-level", "info")
    for _ in range(3):  # three reads of a failing track: still one line (the cause did not change)
        assert run(["cat", str(mount.path / "Art - Gone.wav")]).returncode != 0
    run(["cp", "-r", f"{mount.path}/.", str(tmp_path / "out")])
    mount.unmount()
    errors = [line.split(" ", 2)[2] for line in mount.log().splitlines() if " ERROR " in line]
    assert errors == [
        "ERROR mixvfs.vfs.commands.daemon: No - File.wav: local file /nonexistent/x.wav cannot be used: "
        "No such file or directory",
        "ERROR mixvfs.vfs.fs.recorder: Art - Gone.wav: the server answered HTTP 404 Not Found",
    ]


@pytest.mark.fuse
def test_mount_from_a_folder_holding_cache_vfs_and_mixvfs_folders(tmp_path):
    """The daemon is `python -m mixvfs.vfs.commands.cli`: the working directory must not shadow our packages."""
    from tests.conftest import require_fuse

    require_fuse()
    work = tmp_path / "work"
    for name in ("cache/index", "vfs", "mnt"):  # cache/index: what a cache folder made in the cwd holds
        (work / name).mkdir(parents=True)
    # A package of our own name there (a checkout, another version): the daemon must not import it.
    (work / "mixvfs").mkdir()
    (work / "mixvfs" / "__init__.py").write_text("raise ImportError('the mixvfs in the working directory')\n")
    (work / "a.wav").write_bytes(b"RIFF" + bytes(100))
    write_session(work / "s.json", [{"id": "t", "artist": "A", "title": "T", "file_path": "a.wav"}])
    done = run([MIXVFS, "mount", "s.json", "mnt", "--cache-dir", "cache"], cwd=work)
    try:
        assert done.returncode == 0, done.stderr
        assert (work / "mnt" / "A - T.wav").read_bytes() == b"RIFF" + bytes(100)
    finally:
        run([MIXVFS, "unmount", "mnt"], cwd=work)


@pytest.mark.parametrize("fail", [False, True], ids=["all-whole", "one-failed"])
def test_status_watch_ends_with_the_mount_and_exits_with_the_sessions_outcome(tmp_path, server_root, devserver,
                                                                              mounter, fail):
    """The mount going away is the normal end of a watch, not an error: exit 0, or 1 when a track failed."""
    serve(server_root, "ok", 50_000, 1)
    tracks = [cloud("c1", "Fine", "/stream/ok", 50_000)]
    if fail:
        tracks.append(cloud("c2", "Gone", "/stream/gone", 1000))
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session)
    mount.wait_track("c1", lambda r: r["status"] == "cached")
    if fail:
        mount.wait_track("c2", lambda r: r["status"] == "failed")
    watch = subprocess.Popen([MIXVFS, "status", str(mount.path), "--watch", "0.1", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert watch.stdout is not None
    assert json.loads(watch.stdout.readline())["failed_total"] == int(fail)
    # The watch's own read of the status may hold the folder for that instant: the unmount is then refused
    # as busy, and asked again.
    assert wait_until(lambda: run([MIXVFS, "unmount", str(mount.path)]).returncode == 0, 30)
    mount.mounted = False
    _, err = watch.communicate(timeout=30)
    assert watch.returncode == int(fail), err
    assert f"the mount at {mount.path} ended; {int(fail)} track(s) failed (report: {mount.report_path})" in err


def test_status_watch_stopped_by_ctrl_c_exits_1_when_a_track_failed(tmp_path, server_root, devserver, mounter):
    """Ctrl-C ends the watching, not the session: the exit code still says a track failed, as `status` does."""
    session = write_session(tmp_path / "s.json", [cloud("c2", "Gone", "/stream/gone", 1000)], server=devserver.url)
    mount = mounter(session)
    mount.wait_track("c2", lambda r: r["status"] == "failed")
    watch = subprocess.Popen([MIXVFS, "status", str(mount.path), "--watch", "0.1", "--json"],
                             stdout=subprocess.PIPE, text=True)
    assert watch.stdout is not None
    assert json.loads(watch.stdout.readline())["failed_total"] == 1
    watch.send_signal(signal.SIGINT)
    watch.communicate(timeout=30)
    assert watch.returncode == 1


def test_status_header_counts_agree_with_the_rows(tmp_path, server_root, devserver, mounter):
    """Every track counted once; "downloading" in the header is exactly the tracks the rows list, queued or
    running (two tracks of one URL: two rows); the rest pending or done."""
    for i in range(4):
        serve(server_root, f"t{i}", 20_000, i)
    devserver.set_faults({"*": {"hold": "all"}})
    tracks = [cloud(f"c{i}", f"T{i}", f"/stream/t{i}", 20_000) for i in range(4)]
    tracks.append(cloud("c0b", "T0 again", "/stream/t0", 20_000))
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, "--jobs", "2")
    try:
        devserver.wait_held("all", count=2)
        status = status_of(mount.path)
        rows = [d["name"] for d in status["downloading"]]
        assert sum(status["counts"].values()) == status["tracks"] == 5
        assert status["counts"].get("downloading", 0) == len(rows) >= 2
        if "Art - T0.wav" in rows:
            assert "Art - T0 again.wav" in rows
        text = run([MIXVFS, "status", str(mount.path)]).stdout.splitlines()
        assert f"downloading: {len(rows)}" in text[1] and f"{len(rows)} downloading" in text[0]
    finally:
        devserver.release("all")
