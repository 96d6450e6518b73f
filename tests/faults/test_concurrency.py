"""Concurrency: two readers of one uncached track share one download; downloads across tracks stay
within --jobs; a reader that goes away cancels its download (unless prefetch wants it) and the temp
file is removed.

The downloads park on the dev server's "hold" gate at the moment that matters (both readers there, two
downloads in flight, the reader gone), so no test here races a timer."""

from __future__ import annotations

import filecmp
import json
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import getxattr, run, wait_until, write_session
from tests.faults.helpers import cloud_track, holds_open, max_overlap, name_of, stream_path
from tools.devserver import DevServer


def status_of(mountpoint: Path) -> dict[str, Any]:
    return dict(json.loads(getxattr(mountpoint, "user.mixvfs.status")))


def test_two_readers_of_one_uncached_track_share_one_get(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 2_000_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"hold": "t1", "hold_after": 1_500_000}})
    mount = mounter(session, "--no-prefetch")
    path = mount.path / name_of("t1")
    copier = subprocess.Popen(["cp", str(path), str(tmp_path / "out0.wav")])
    devserver.wait_held("t1")  # the first reader's download is in flight, parked mid-body
    with open(path, "rb") as second:  # the second reader opens while it is: it must join, not start another
        devserver.release("t1")
        data = second.read()
    assert copier.wait(timeout=60) == 0
    assert data == (server_root / "stream" / "t1.wav").read_bytes()
    assert filecmp.cmp(tmp_path / "out0.wav", server_root / "stream" / "t1.wav", shallow=False)
    gets = devserver.requests("GET", stream_path("t1"))
    assert [(g["range"], g["bytes"]) for g in gets] == [(None, 2_000_000)]


def test_downloads_across_tracks_are_bounded_by_jobs(tmp_path, server_root, devserver, mounter):
    ids = [f"j{i}" for i in range(6)]
    tracks = [cloud_track(server_root, track_id, 300_000, seed=i) for i, track_id in enumerate(ids)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    # Every download parks mid-body, and after the release takes about 0.3 s (1 MB/s): long beside the few
    # milliseconds by which the server may log an end late.
    devserver.set_faults({"*": {"hold": "jobs", "hold_after": 100_000, "rate": 1_000_000}})
    mount = mounter(session, "--jobs", "2")  # prefetch queues them too
    sources = [mount.path / name_of(t) for t in ids]
    readers = [subprocess.Popen(["cp", str(src), str(tmp_path / src.name)]) for src in sources]
    devserver.wait_held("jobs", 2)  # two downloads in flight at once: the overlap is real
    # Every reader has its track open, so its download (running or queued) is there and has a reader: none is
    # a prefetch that could step aside and resume with a second request. None can finish while held.
    assert wait_until(lambda: all(holds_open(r.pid, s) for r, s in zip(readers, sources, strict=True)), timeout=60)
    assert wait_until(lambda: len(status_of(mount.path)["downloading"]) == 6, timeout=60)
    states = sorted(d["state"] for d in status_of(mount.path)["downloading"])
    assert states == ["fetching"] * 2 + ["pending"] * 4
    assert devserver.held("jobs") == 2
    devserver.release("jobs")
    assert [r.wait(timeout=60) for r in readers] == [0] * 6
    for t in ids:
        assert filecmp.cmp(tmp_path / name_of(t), server_root / "stream" / f"{t}.wav", shallow=False)
    gets = devserver.requests("GET")
    # Each track downloaded once from its start; a prefetch that stepped aside for a reader (before every
    # reader was there) resumes with a Range request, never from the start again.
    assert sorted(g["path"] for g in gets if g["range"] is None) == sorted(stream_path(t) for t in ids)
    ran = client_side(gets)
    assert max_overlap(ran, lag=0.05) <= 2, [(g["path"], g["range"], g["t"], g["t_end"]) for g in ran]
    assert max_overlap(gets[:2]) == 2  # the two held ones did run side by side


def client_side(gets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The GETs as the client ran them. A prefetch that stepped aside for a reader hung up mid-body; the server,
    parked on the hold, ends that request only when released, but logs when its client left (``t_gone``)."""
    return [{**g, "t_end": g["t_gone"]} if g.get("t_gone") is not None else g for g in gets]


def read_start_and_leave(path: Path, devserver: DevServer, hold: str) -> bytes:
    """Like `head -c 1000`: read the start, then close — but only once the download is parked mid-body, so
    the reader surely leaves while it is in flight."""
    with open(path, "rb", buffering=0) as reader:
        start = reader.read(1000)
        devserver.wait_held(hold)
    return start


# Parked after 1 MiB (more than the first read request), then slow: about 1.5 s for the rest once released, so
# a download that goes on is read to the end only if nothing cut it off. (It notices a cancel between chunks.)
HELD_THEN_SLOW = {"hold": "t1", "hold_after": 1 << 20, "rate": 2_000_000}


def test_reader_closing_mid_download_cancels_it_and_removes_the_temp_file(tmp_path, server_root, devserver,
                                                                         mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 4_000_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): HELD_THEN_SLOW})
    mount = mounter(session, "--no-prefetch")
    start = read_start_and_leave(mount.path / name_of("t1"), devserver, "t1")
    assert start == (server_root / "stream" / "t1.wav").read_bytes()[:1000]
    staging = mount.cache_dir / "staging"
    devserver.release("t1")
    assert wait_until(lambda: not list(staging.glob("*.part")))
    (get,) = devserver.requests("GET", stream_path("t1"))
    assert get["bytes"] < 4_000_000  # the server was hung up on, not read to the end
    assert mount.wait_track("t1", lambda r: r["status"] == "pending")["status"] == "pending"  # not "failed"
    assert status_of(mount.path)["downloading"] == []
    devserver.set_faults({})
    done = run(["cp", str(mount.path / name_of("t1")), str(tmp_path / "out.wav")])  # a later reader starts anew
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "out.wav", server_root / "stream" / "t1.wav", shallow=False)


def test_reader_closing_while_prefetch_wants_the_track_keeps_the_download(tmp_path, server_root, devserver,
                                                                         mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 4_000_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): HELD_THEN_SLOW})
    mount = mounter(session)  # prefetch on
    assert len(read_start_and_leave(mount.path / name_of("t1"), devserver, "t1")) == 1000
    devserver.release("t1")
    assert mount.wait_track("t1", lambda r: r["status"] == "cached")["status"] == "cached"
    assert [g["bytes"] for g in devserver.requests("GET", stream_path("t1"))] == [4_000_000]
