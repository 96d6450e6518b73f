"""Deadlines: a download without progress for --stall-timeout fails (EIO + report), and while a download
hangs the rest of the mount answers: listing, stat and reads of other files.

Both use the dev server's "hold" gate (the response parks after some bytes until the test releases it), so
neither depends on how fast this machine is: the hang lasts exactly as long as the test needs."""

from __future__ import annotations

import filecmp
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import wait_until, write_session
from tests.faults.helpers import cloud_track, name_of, stream_path


def stuck_fine_and_local(tmp_path: Path, server_root: Path) -> tuple[list[dict[str, Any]], Path]:
    tracks = [cloud_track(server_root, "stuck", 500_000), cloud_track(server_root, "fine", 300_000, seed=2)]
    local = tmp_path / "local.wav"
    local.write_bytes(b"RIFF" + bytes(5000))
    tracks.append({"id": "loc", "artist": "Artist", "title": "loc", "file_path": str(local)})
    return tracks, local


def test_the_mount_answers_while_a_download_hangs(tmp_path, server_root, devserver, mounter):
    tracks, local = stuck_fine_and_local(tmp_path, server_root)
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    devserver.set_faults({stream_path("stuck"): {"hold": "stuck", "hold_after": 1000}})
    # A stall timeout far longer than the test: the hang ends only when the test releases it.
    mount = mounter(session, "--no-prefetch", "--retries", "1", "--stall-timeout", "300s")
    stuck = subprocess.Popen(["cp", str(mount.path / name_of("stuck")), str(tmp_path / "stuck.wav")],
                             stderr=subprocess.PIPE, text=True)
    staging = mount.cache_dir / "staging"
    devserver.wait_held("stuck")
    # The stalled read is under way: its download holds the first 1000 bytes and waits for more.
    assert wait_until(lambda: any(p.stat().st_size == 1000 for p in staging.glob("*.part")))

    names = sorted(os.listdir(mount.path))
    sizes = {name: os.stat(mount.path / name).st_size for name in names}
    fine = subprocess.run(["cp", str(mount.path / name_of("fine")), str(tmp_path / "fine.wav")], check=False)
    with open(mount.path / name_of("loc"), "rb") as handle:
        local_bytes = handle.read()
    assert stuck.poll() is None and devserver.held("stuck") == 1  # all of the above answered during the hang

    assert names == sorted(name_of(t) for t in ("stuck", "fine", "loc"))
    assert sizes[name_of("stuck")] == 500_000 and sizes[name_of("fine")] == 300_000
    assert fine.returncode == 0
    assert filecmp.cmp(tmp_path / "fine.wav", server_root / "stream" / "fine.wav", shallow=False)
    assert local_bytes == local.read_bytes()
    devserver.release("stuck")
    _, stuck_err = stuck.communicate(timeout=60)
    assert stuck.returncode == 0, stuck_err
    assert filecmp.cmp(tmp_path / "stuck.wav", server_root / "stream" / "stuck.wav", shallow=False)


def test_stalled_download_fails_after_stall_timeout(tmp_path, server_root, devserver, mounter):
    tracks, _ = stuck_fine_and_local(tmp_path, server_root)
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    devserver.set_faults({stream_path("stuck"): {"hold": "stuck", "hold_after": 1000}})  # released only at the end
    mount = mounter(session, "--no-prefetch", "--retries", "1", "--stall-timeout", "1s")
    stuck = subprocess.run(["cp", str(mount.path / name_of("stuck")), str(tmp_path / "stuck.wav")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert stuck.returncode != 0 and "Input/output error" in stuck.stderr
    record = mount.track("stuck")
    assert record["status"] == "failed" and "timed out" in record["error"] and record["attempts"] == 1
    assert devserver.held("stuck") == 1  # the server never sent more: the mount gave up on its own
    staging = mount.cache_dir / "staging"
    assert list(staging.glob("*.part")) == []
    devserver.release("stuck")  # the parked response ends (into a closed connection) and is logged
    assert [g["fault"] for g in devserver.requests("GET", stream_path("stuck"))] == ["hold"]


def test_reads_behind_a_stalled_server_and_a_full_queue_are_answered_within_the_request_timeout(
        tmp_path, server_root, devserver, mounter):
    """macFUSE ejects the volume when one request outlives its daemon_timeout, so there every read must be
    answered before then: the one waiting on a stalled download and the one queued behind it (--jobs 1) get
    EIO and a report line from the request bound, long before the stall timeout (300 s) could end either."""
    tracks = [cloud_track(server_root, "stuck", 500_000), cloud_track(server_root, "queued", 300_000, seed=2)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    devserver.set_faults({stream_path("stuck"): {"hold": "stuck", "hold_after": 1000}})
    mount = mounter(session, "--no-prefetch", "--retries", "1", "--jobs", "1", "--stall-timeout", "300s",
                    "--request-timeout", "2s")
    stuck = subprocess.Popen(["cp", str(mount.path / name_of("stuck")), str(tmp_path / "stuck.wav")],
                             stderr=subprocess.PIPE, text=True)
    devserver.wait_held("stuck")  # the only download slot now serves a server that sends nothing more
    queued = subprocess.run(["cp", str(mount.path / name_of("queued")), str(tmp_path / "queued.wav")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert queued.returncode != 0 and "Input/output error" in queued.stderr
    assert devserver.requests("GET", stream_path("queued")) == []  # it was still queued
    record = mount.track("queued")
    assert "request_timeout" in record["reader_error"] and "still queued" in record["reader_error"]
    _, stuck_err = stuck.communicate(timeout=60)
    assert stuck.returncode != 0 and "Input/output error" in stuck_err
    record = mount.track("stuck")
    assert "request_timeout" in record["reader_error"] and "under way" in record["reader_error"]
    assert devserver.held("stuck") == 1  # the server never sent more: the request bound answered both
    devserver.release("stuck")
