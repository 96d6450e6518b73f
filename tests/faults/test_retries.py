"""Retries: 5xx/429/network errors are retried with backoff (stamina) and every attempt is counted;
other 4xx fail at once; the resume of a cut-off body asks for exactly the missing bytes."""

from __future__ import annotations

import filecmp
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Mount, wait_until, write_session
from tests.faults.helpers import FAST, cloud_track, cp, name_of, stream_path
from tools.devserver import DevServer

EIO = "Input/output error"


def test_503_twice_then_ok_is_retried_and_counted(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 300_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 503, "times": 2}})
    mount = mounter(session, *FAST)
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "out.wav", server_root / "stream" / "t1.wav", shallow=False)
    assert [r["status"] for r in devserver.requests("GET", stream_path("t1"))] == [503, 503, 200]
    record = mount.wait_track("t1", lambda r: r["status"] == "cached")
    assert record["status"] == "cached" and record["attempts"] == 3 and record["error"] is None
    # The log names the track as the folder does (README's example line).
    assert (f"{name_of('t1')}: attempt 1 failed (the server answered HTTP 503 Service Unavailable); trying again "
            "in ") in mount.log(), mount.log()


def test_429_until_attempts_run_out_is_eio_with_every_attempt_counted(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 10_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 429}})
    mount = mounter(session, *FAST)  # --retries 3
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode != 0 and EIO in done.stderr
    assert [r["status"] for r in devserver.requests("GET", stream_path("t1"))] == [429, 429, 429]
    record = mount.track("t1")
    assert record["status"] == "failed" and record["attempts"] == 3
    assert "429" in record["error"]


def test_404_and_410_are_not_retried(tmp_path, server_root, devserver, mounter):
    tracks = [cloud_track(server_root, "t1", 10_000), cloud_track(server_root, "t2", 10_000, seed=2)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 404}, stream_path("t2"): {"status": 410}})
    mount = mounter(session, *FAST)
    for track_id, status in (("t1", 404), ("t2", 410)):
        done = cp(mount.path / name_of(track_id), tmp_path / "out.wav")
        assert done.returncode != 0 and EIO in done.stderr
        assert [r["status"] for r in devserver.requests("GET", stream_path(track_id))] == [status]
        record = mount.track(track_id)
        assert record["attempts"] == 1 and str(status) in record["error"]


def test_cut_off_body_resumes_at_the_exact_byte_with_if_range(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 1_000_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"drop_after": 300_000, "times": 1}})
    mount = mounter(session, *FAST)
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "out.wav", server_root / "stream" / "t1.wav", shallow=False)
    first, second = devserver.requests("GET", stream_path("t1"))
    assert (first["status"], first["bytes"], first["range"]) == (200, 300_000, None)
    assert (second["status"], second["range"]) == (206, "bytes=300000-")
    assert second["if_range"] is not None and second["if_range"].startswith('"')
    assert second["bytes"] == 700_000
    assert mount.wait_track("t1", lambda r: r["status"] == "cached")["attempts"] == 2


def change_file_during_first_get(tmp_path: Path, server_root: Path, devserver: DevServer,
                                 mounter: Callable[..., Mount], *, size: int = 1_000_000,
                                 cut: int = 300_000) -> Mount:
    """Mount with prefetch; the first GET parks after ``cut`` bytes (then drops once released); while it is
    parked the file changes on the server (same size, new bytes, new mtime: a new ETag). The caller
    releases the hold "cut"."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", size)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"hold": "cut", "hold_after": cut, "drop_after": cut, "times": 1}})
    mount = mounter(session, "--retries", "3", "--retry-wait", "0.01s", "--stall-timeout", "300s")
    staging = mount.cache_dir / "staging"
    devserver.wait_held("cut")
    assert wait_until(lambda: any(p.stat().st_size == cut for p in staging.glob("*.part")))
    cloud_track(server_root, "t1", size, seed=99)
    return mount


def test_file_changed_on_server_between_attempts_starts_over(tmp_path, server_root, devserver, mounter):
    """If-Range no longer matches: the server sends the new file whole (200) and we restart from byte 0."""
    mount = change_file_during_first_get(tmp_path, server_root, devserver, mounter)
    devserver.release("cut")
    assert mount.wait_track("t1", lambda r: r["status"] == "cached")["status"] == "cached"
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "out.wav", server_root / "stream" / "t1.wav", shallow=False)
    first, second = devserver.requests("GET", stream_path("t1"))
    assert first["bytes"] == 300_000
    assert second["range"] == "bytes=300000-" and second["status"] == 200 and second["bytes"] == 1_000_000


def test_file_changed_after_bytes_were_served_is_eio_not_a_mix(tmp_path, server_root, devserver, mounter):
    """A reader already holds old bytes: serving the new ones after them would be a wrong file."""
    # Past the first 1 MiB read request, so cp holds old bytes when the change shows (a FUSE read is served
    # whole or not at all: with a shorter cut, the first request would simply get the new file).
    mount = change_file_during_first_get(tmp_path, server_root, devserver, mounter, size=4_000_000, cut=2_500_000)
    out = tmp_path / "out.wav"
    copier = subprocess.Popen(["cp", str(mount.path / name_of("t1")), str(out)], stderr=subprocess.PIPE, text=True)
    # cp writes only what it has read: once the copy has bytes, the reader holds old ones. Then the change shows.
    assert wait_until(lambda: out.exists() and out.stat().st_size > 0, timeout=60)
    devserver.release("cut")
    _, err = copier.communicate(timeout=60)
    assert copier.returncode != 0 and EIO in err
    record = mount.track("t1")
    assert record["status"] == "failed" and "changed" in record["error"]
    assert len(devserver.requests("GET", stream_path("t1"))) == 2
    assert list((mount.cache_dir / "staging").glob("*.part")) == []
