"""FUSE passthrough (libfuse >= 3.17, root): cached tracks are read by the kernel from the cache's blob files.

Right bytes by every copier, with no read request reaching the daemon; a real refusal by the kernel (a mount
in a user namespace: root there, but not CAP_SYS_ADMIN in the initial namespace) served normally; none of the
kernel's passthrough traps (a normal and a passthrough open of one file at once, two backing files for one
file) ever reaches a reader as EIO; a failed track is still EIO and a report line."""

from __future__ import annotations

import filecmp
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import MIXVFS, run, wait_until, write_session
from tests.faults.helpers import cachectl, cloud_track, name_of, stream_path
from tests.passthrough.conftest import passthrough_status

SIZE = 3_000_000


def warmed(tmp_path: Path, server_root: Path, devserver: Any, ids: list[str],
           others: list[dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """A session of cloud tracks (and ``others``) and a cache that already holds the tracks of ``ids`` (a fresh
    mount then serves blobs)."""
    tracks = [cloud_track(server_root, t, SIZE, seed=i) for i, t in enumerate(ids)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    done = cachectl(tmp_path / "cache", "warm", str(session))
    assert done.returncode == 0, done.stdout + done.stderr
    return write_session(session, tracks + (others or []), server=devserver.url), tmp_path / "cache"


def source(server_root: Path, track_id: str) -> Path:
    return server_root / "stream" / f"{track_id}.wav"


def test_cached_tracks_copy_right_by_cp_rsync_and_copyfile_without_a_read_reaching_the_daemon(
        tmp_path, server_root, devserver, pt_mounter):
    session, cache = warmed(tmp_path, server_root, devserver, ["a", "b", "c"])
    mount = pt_mounter(session, "--no-prefetch", cache_dir=cache)
    out = tmp_path / "out"
    out.mkdir()
    run(["cp", str(mount.path / name_of("a")), str(out / "a.wav")], check=True)
    run(["rsync", str(mount.path / name_of("b")), str(out / "b.wav")], check=True)
    shutil.copyfile(mount.path / name_of("c"), out / "c.wav")
    for t in ("a", "b", "c"):
        assert filecmp.cmp(out / f"{t}.wav", source(server_root, t), shallow=False), t
    status = passthrough_status(mount)
    assert status["opens"] >= 3 and status["normal"] == 0, status
    assert status["daemon_reads"] == 0, status  # every byte came from the blob files through the kernel
    assert wait_until(lambda: passthrough_status(mount)["backing_files"] == 0)  # closed on the last release
    mount.unmount()
    assert "FUSE passthrough on (libfuse 3." in mount.log()


def test_the_setting_off_serves_every_read_in_the_daemon(tmp_path, server_root, devserver, pt_mounter):
    session, cache = warmed(tmp_path, server_root, devserver, ["a"])
    mount = pt_mounter(session, "--no-prefetch", "--passthrough", "off", cache_dir=cache, on=False)
    run(["cp", str(mount.path / name_of("a")), str(tmp_path / "a.wav")], check=True)
    assert filecmp.cmp(tmp_path / "a.wav", source(server_root, "a"), shallow=False)
    status = passthrough_status(mount)
    assert status["state"] == "off" and status["why"] == "the passthrough setting is off", status
    assert status["daemon_reads"] > 0


def test_a_backing_file_the_kernel_refuses_is_served_normally(tmp_path, server_root, devserver):
    """A real refusal: in a user namespace the daemon is root with every capability there, the mount
    negotiates passthrough, and the kernel answers the first backing file with EPERM (CAP_SYS_ADMIN is
    checked in the initial namespace). The reader must not notice."""
    session, cache = warmed(tmp_path, server_root, devserver, ["a", "b"])
    mnt, log, pid_file = tmp_path / "mnt", tmp_path / "mixvfs.log", tmp_path / "pid"
    mnt.mkdir()
    q = shlex.quote
    script = f"""set -e
{q(MIXVFS)} mount {q(str(session))} {q(str(mnt))} --cache-dir {q(str(cache))} --log-file {q(str(log))} --no-prefetch
getfattr --only-values -n user.mixvfs.pid {q(str(mnt))} > {q(str(pid_file))}
trap '{q(MIXVFS)} unmount {q(str(mnt))}' EXIT
cp {q(str(mnt / name_of("a")))} {q(str(tmp_path / "a.wav"))}
cp {q(str(mnt / name_of("b")))} {q(str(tmp_path / "b.wav"))}
getfattr --only-values -n user.mixvfs.passthrough {q(str(mnt))}
"""
    try:
        done = run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script], timeout=60)
    finally:  # the daemon lives in the namespace's mount: never leave it running after a failure
        if pid_file.exists() and pid_file.read_text().strip():
            pid = int(pid_file.read_text())
            if wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10) is False:
                os.kill(pid, signal.SIGKILL)
    assert done.returncode == 0, done.stdout + done.stderr
    for t in ("a", "b"):
        assert filecmp.cmp(tmp_path / f"{t}.wav", source(server_root, t), shallow=False), t
    text = log.read_text()
    assert "FUSE passthrough off: the kernel refused a backing file (EPERM" in text, text
    assert text.count("FUSE passthrough off") == 1  # one line, then the tier stays off for the mount
    assert '"refusals": {"EPERM": 1}' in done.stdout and '"opens": 0' in done.stdout, done.stdout


def test_opens_during_and_after_a_download_then_passthrough_never_eio(tmp_path, server_root, devserver, pt_mounter):
    """The kernel fails an open with EIO when a normal and a passthrough open of one file meet. Here: an open
    while the track downloads (normal), a second once it is cached while the first is still open (normal too),
    then, once both are closed, passthrough opens, one of them while another is live (the same backing file)."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t", SIZE)], server=devserver.url)
    devserver.set_faults({stream_path("t"): {"hold": "t", "hold_after": 1_000_000}})
    mount = pt_mounter(session, "--no-prefetch")
    path, expected = mount.path / name_of("t"), source(server_root, "t").read_bytes()
    with open(path, "rb") as during:
        devserver.wait_held("t")  # downloading, parked mid-body: this open is a download's
        devserver.release("t")
        assert during.read() == expected
        assert mount.wait_track("t", lambda r: r["status"] == "cached")["status"] == "cached"
        with open(path, "rb") as after:  # a whole blob now, but a normal open of the file is live
            assert after.read() == expected
        assert passthrough_status(mount)["opens"] == 0
    assert wait_until(lambda: passthrough_status(mount)["normal_opens"] == 0)  # the kernel's releases arrived
    reads = passthrough_status(mount)["daemon_reads"]
    with open(path, "rb") as first:
        with open(path, "rb") as second:  # while the first passthrough open is live: the same backing file
            assert second.read() == expected
            status = passthrough_status(mount)
            assert (status["passthrough_opens"], status["backing_files"]) == (2, 1), status
        assert first.read() == expected
    run(["cp", str(path), str(tmp_path / "t.wav")], check=True)
    assert filecmp.cmp(tmp_path / "t.wav", source(server_root, "t"), shallow=False)
    status = passthrough_status(mount)
    assert status["opens"] == 3 and status["normal"] == 1, status
    assert status["daemon_reads"] == reads, status


def test_a_failed_track_is_still_eio_beside_passthrough(tmp_path, server_root, devserver, pt_mounter):
    gone = {"id": "gone", "artist": "Artist", "title": "gone", "cloud_stream_path": "/stream/gone.wav",
            "size": 1000, "content_type": "audio/wav"}  # the server has no such file: 404
    session, cache = warmed(tmp_path, server_root, devserver, ["ok"], [gone])
    mount = pt_mounter(session, "--no-prefetch", "--retries", "1", cache_dir=cache)
    done = run(["cp", "-r", f"{mount.path}/.", str(tmp_path / "export")])
    assert done.returncode == 1 and "Input/output error" in done.stderr, done.stderr
    assert filecmp.cmp(tmp_path / "export" / name_of("ok"), source(server_root, "ok"), shallow=False)
    assert not (tmp_path / "export" / name_of("gone")).exists() or \
        (tmp_path / "export" / name_of("gone")).stat().st_size == 0  # cp leaves an empty file, exit 1
    record = mount.wait_track("gone", lambda r: r["status"] == "failed")
    assert record["status"] == "failed" and "404" in (record["error"] or ""), record
    assert passthrough_status(mount)["opens"] == 1, (passthrough_status(mount), mount.log())


def test_the_lane_builds_its_floor(tmp_path):
    """`make bench` compares with libfuse's own passthrough_hp from the same build."""
    lib = Path(os.environ["FUSE_LIBRARY_PATH"]).resolve()
    floor = lib.parent.parent / "bin" / "passthrough_hp"
    done = subprocess.run([str(floor), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert "passthrough" in (done.stdout + done.stderr).lower(), done.stdout + done.stderr


def test_a_track_held_open_by_passthrough_opens_again_after_its_blob_is_evicted(tmp_path, server_root, devserver,
                                                                                 pt_mounter):
    """A DJ app holds a cached track open (passthrough) while `cachectl prune` (or --max-size) evicts its blob:
    a new open would be a download, which the kernel refuses beside a passthrough open — the reader got EIO
    for a track that had not changed. It is served from the backing file the other reader holds."""
    session, cache = warmed(tmp_path, server_root, devserver, ["a"])
    mount = pt_mounter(session, "--no-prefetch", cache_dir=cache)
    path = mount.path / name_of("a")
    with open(path, "rb") as held:
        assert held.read(4096) == source(server_root, "a").read_bytes()[:4096]
        assert passthrough_status(mount)["backing_files"] == 1
        done = cachectl(cache, "prune", "--max-size", "0")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not any((cache / "blobs").rglob("*.val"))  # evicted
        gets = len(devserver.requests("GET", stream_path("a")))
        run(["cp", str(path), str(tmp_path / "a.wav")], check=True)
        assert filecmp.cmp(tmp_path / "a.wav", source(server_root, "a"), shallow=False)
        assert len(devserver.requests("GET", stream_path("a"))) == gets  # from the held backing file, not the server
    report = run([MIXVFS, "report", str(mount.path), "--json"]).stdout
    assert '"reader_error": null' in report
