"""Deadlines: a download without progress for --stall-timeout fails (EIO + report), and while it hangs
the rest of the mount answers: listing, stat and reads of other files."""

from __future__ import annotations

import filecmp
import os
import subprocess

from tests.conftest import write_session
from tests.faults.helpers import cloud_track, name_of, stream_path, wait_until


def test_stalled_download_fails_after_stall_timeout_while_others_answer(tmp_path, server_root, devserver, mounter):
    tracks = [cloud_track(server_root, "stuck", 500_000), cloud_track(server_root, "fine", 300_000, seed=2)]
    local = tmp_path / "local.wav"
    local.write_bytes(b"RIFF" + bytes(5000))
    tracks.append({"id": "loc", "artist": "Artist", "title": "loc", "file_path": str(local)})
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    devserver.set_faults({stream_path("stuck"): {"stall_after": 1000, "stall_seconds": 1.5}})
    mount = mounter(session, "--no-prefetch", "--retries", "1", "--stall-timeout", "1s")
    stuck = subprocess.Popen(["cp", str(mount.path / name_of("stuck")), str(tmp_path / "stuck.wav")],
                             stderr=subprocess.PIPE, text=True)
    staging = mount.cache_dir / "staging"
    # The stalled read is under way: its download holds the first 1000 bytes and waits for more.
    assert wait_until(lambda: any(p.stat().st_size == 1000 for p in staging.glob("*.part")))

    names = sorted(os.listdir(mount.path))
    sizes = {name: os.stat(mount.path / name).st_size for name in names}
    fine = subprocess.run(["cp", str(mount.path / name_of("fine")), str(tmp_path / "fine.wav")], check=False)
    with open(mount.path / name_of("loc"), "rb") as handle:
        local_bytes = handle.read()
    still_blocked = stuck.poll() is None  # everything above finished while the stalled cp was still waiting

    _, stuck_err = stuck.communicate(timeout=30)
    assert still_blocked
    assert names == sorted(name_of(t) for t in ("stuck", "fine", "loc"))
    assert sizes[name_of("stuck")] == 500_000 and sizes[name_of("fine")] == 300_000
    assert fine.returncode == 0
    assert filecmp.cmp(tmp_path / "fine.wav", server_root / "stream" / "fine.wav", shallow=False)
    assert local_bytes == local.read_bytes()
    assert stuck.returncode != 0 and "Input/output error" in stuck_err
    record = mount.track("stuck")
    assert record["status"] == "failed" and "timed out" in record["error"] and record["attempts"] == 1
    assert [g["fault"] for g in devserver.requests("GET", stream_path("stuck"))] == ["stall_after"]
    assert list(staging.glob("*.part")) == []
