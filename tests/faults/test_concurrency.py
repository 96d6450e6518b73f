"""Concurrency: two readers of one uncached track share one download; downloads across tracks stay
within --jobs; a reader that goes away cancels its download (unless prefetch wants it) and the temp
file is removed."""

from __future__ import annotations

import filecmp
import subprocess

from tests.conftest import run, write_session
from tests.faults.helpers import cloud_track, max_overlap, name_of, stream_path, wait_until


def test_two_readers_of_one_uncached_track_share_one_get(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 2_000_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"rate": 4_000_000}})  # 0.5 s: both readers arrive in time
    mount = mounter(session, "--no-prefetch")
    readers = [subprocess.Popen(["cp", str(mount.path / name_of("t1")), str(tmp_path / f"out{i}.wav")])
               for i in range(2)]
    assert [r.wait(timeout=30) for r in readers] == [0, 0]
    for i in range(2):
        assert filecmp.cmp(tmp_path / f"out{i}.wav", server_root / "stream" / "t1.wav", shallow=False)
    gets = devserver.requests("GET", stream_path("t1"))
    assert [(g["range"], g["bytes"]) for g in gets] == [(None, 2_000_000)]


def test_downloads_across_tracks_are_bounded_by_jobs(tmp_path, server_root, devserver, mounter):
    ids = [f"j{i}" for i in range(6)]
    tracks = [cloud_track(server_root, track_id, 300_000, seed=i) for i, track_id in enumerate(ids)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    devserver.set_faults({"*": {"rate": 1_000_000}})  # 0.3 s each, sent in 0.1 s steps
    mount = mounter(session, "--jobs", "2")  # prefetch queues all six at once
    readers = [subprocess.Popen(["cp", str(mount.path / name_of(t)), str(tmp_path / f"{t}.wav")]) for t in ids]
    assert [r.wait(timeout=30) for r in readers] == [0] * 6
    gets = devserver.requests("GET")
    assert sorted(g["path"] for g in gets) == sorted(stream_path(t) for t in ids)  # each once
    assert max_overlap(gets) == 2


def test_reader_closing_mid_download_cancels_it_and_removes_the_temp_file(tmp_path, server_root, devserver,
                                                                         mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 4_000_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"rate": 2_000_000}})  # 2 s for the whole body
    mount = mounter(session, "--no-prefetch")
    head = subprocess.run(["head", "-c", "1000", str(mount.path / name_of("t1"))], capture_output=True, check=False)
    assert head.returncode == 0 and head.stdout == (server_root / "stream" / "t1.wav").read_bytes()[:1000]
    staging = mount.cache_dir / "staging"
    assert wait_until(lambda: not list(staging.glob("*.part")))
    (get,) = devserver.requests("GET", stream_path("t1"))
    assert get["bytes"] < 4_000_000  # the server was hung up on, not read to the end
    assert mount.wait_track("t1", lambda r: r["status"] == "pending")["status"] == "pending"  # not "failed"
    devserver.set_faults({})
    done = run(["cp", str(mount.path / name_of("t1")), str(tmp_path / "out.wav")])  # a later reader starts anew
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "out.wav", server_root / "stream" / "t1.wav", shallow=False)


def test_reader_closing_while_prefetch_wants_the_track_keeps_the_download(tmp_path, server_root, devserver,
                                                                         mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 1_000_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"rate": 4_000_000}})
    mount = mounter(session)  # prefetch on
    head = subprocess.run(["head", "-c", "1000", str(mount.path / name_of("t1"))], capture_output=True, check=False)
    assert head.returncode == 0 and len(head.stdout) == 1000  # then it closes the file
    assert mount.wait_track("t1", lambda r: r["status"] == "cached")["status"] == "cached"
    assert [g["bytes"] for g in devserver.requests("GET", stream_path("t1"))] == [1_000_000]
