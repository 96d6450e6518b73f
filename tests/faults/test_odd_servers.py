"""Real servers' habits, through a real mount with real copiers: bodies compressed despite
`Accept-Encoding: identity`, Range ignored, weak ETags, ranges rounded down, no length at all, no HEAD.
Every copy ends in the track's real bytes, or EIO plus a report line naming the cause."""

from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run, write_session
from tests.faults.helpers import FAST, cachectl, cloud_track, name_of, stream_path
from tests.faults.test_files_change import assert_same, copy_all_ways, replace_by_rename

MiB = 1 << 20


def one_track(tmp_path: Path, server_root: Path, url: str, size: int, *, declare_size: bool) -> Path:
    entry = cloud_track(server_root, "t1", size, seed=1, declare_size=declare_size)
    return write_session(tmp_path / "s.json", [entry], server=url)


def served(server_root: Path) -> Path:
    return server_root / "stream" / "t1.wav"


# -- encoded bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
@pytest.mark.parametrize("declare_size", [False, True])
def test_a_compressed_body_is_stored_and_served_decoded(tmp_path, server_root, devserver, mounter, encoding,
                                                       declare_size):
    session = one_track(tmp_path, server_root, devserver.url, 3 * MiB, declare_size=declare_size)
    devserver.set_faults({stream_path("t1"): {"encoding": encoding}})
    mount = mounter(session, *FAST)
    path = mount.path / name_of("t1")
    assert path.stat().st_size == 3 * MiB  # the track's size, not the compressed length
    assert_same(copy_all_ways(path, tmp_path / "copies"), served(server_root))
    record = mount.wait_track("t1", lambda r: r["status"] == "cached")
    assert record["status"] == "cached" and record["bytes"] == 3 * MiB
    assert cachectl(mount.cache_dir, "verify").returncode == 0


@pytest.mark.parametrize("declare_size", [False, True])
def test_a_gzip_body_of_two_members_is_the_whole_track(tmp_path, server_root, devserver, mounter, declare_size):
    """`cat a.gz b.gz` is one valid gzip body; a decoder that stops after the first member stored half the
    track as whole when the manifest had no size (cp exit 0, check-export ok)."""
    session = one_track(tmp_path, server_root, devserver.url, 3 * MiB, declare_size=declare_size)
    devserver.set_faults({stream_path("t1"): {"encoding": "gzip-members"}})
    mount = mounter(session, *FAST)
    assert_same(copy_all_ways(mount.path / name_of("t1"), tmp_path / "copies"), served(server_root))
    assert mount.wait_track("t1", lambda r: r["status"] == "cached")["bytes"] == 3 * MiB


@pytest.mark.parametrize("declare_size", [False, True])
def test_a_gzip_stream_that_stops_early_is_eio_never_a_short_track(tmp_path, server_root, devserver, mounter,
                                                                 declare_size):
    """A complete HTTP body (its Content-Length honest) holding half a gzip stream: without a size to hold
    the track to, only the gzip stream's own end says the track is not whole."""
    session = one_track(tmp_path, server_root, devserver.url, 3 * MiB, declare_size=declare_size)
    devserver.set_faults({stream_path("t1"): {"encoding": "gzip-cut"}})
    mount = mounter(session, *FAST)
    done = run(["cp", str(mount.path / name_of("t1")), str(tmp_path / "x.wav")])
    assert done.returncode != 0 and "Input/output error" in done.stderr
    record = mount.wait_track("t1", lambda r: r["status"] == "failed")
    assert "gzip body ended before the end of its compressed data" in record["error"]
    assert cachectl(mount.cache_dir, "ls", "--json").stdout.count('"digest"') == 0  # nothing stored


def test_an_encoding_that_cannot_be_decoded_is_an_error_never_the_track(tmp_path, server_root, devserver, mounter):
    session = one_track(tmp_path, server_root, devserver.url, MiB, declare_size=True)
    devserver.set_faults({stream_path("t1"): {"headers": {"Content-Encoding": "compress"}}})
    mount = mounter(session, *FAST)
    done = run(["cp", str(mount.path / name_of("t1")), str(tmp_path / "x.wav")])
    assert done.returncode != 0 and "Input/output error" in done.stderr
    record = mount.track("t1")
    assert record["status"] == "failed" and "encoded body (compress)" in record["error"]
    assert cachectl(mount.cache_dir, "ls", "--json").stdout.count('"digest"') == 0  # nothing stored


# -- resuming against real servers --------------------------------------------------------------------


def cut_once(extra: dict[str, Any]) -> dict[str, Any]:
    """The first response is cut off after 1 MiB; every request gets ``extra``."""
    return {stream_path("t1"): {**extra, "drop_after": MiB, "times": 1, "then": extra}}


@pytest.mark.parametrize("habit", [
    {"ignore_range": True},  # the resume gets 200 and the whole body
    {"weak_etag": True},  # If-Range must not be sent with W/"…": the resume is a plain Range
    {"range_early": 4096},  # a 206 that starts earlier than asked
    {"no_validators": True},  # neither ETag nor Last-Modified
    {"chunked": True},  # no Content-Length on the bodies
])
def test_a_cut_download_resumes_to_the_right_bytes(tmp_path, server_root, devserver, mounter, habit):
    session = one_track(tmp_path, server_root, devserver.url, 3 * MiB, declare_size=True)
    devserver.set_faults(cut_once(habit))
    mount = mounter(session, *FAST)
    run(["cp", str(mount.path / name_of("t1")), str(tmp_path / "x.wav")], check=True)
    assert filecmp.cmp(tmp_path / "x.wav", served(server_root), shallow=False)
    record = mount.wait_track("t1", lambda r: r["status"] == "cached")
    assert record["status"] == "cached" and record["error"] is None
    gets = devserver.requests("GET", stream_path("t1"))
    assert len(gets) == 2
    if habit.get("weak_etag"):
        assert gets[1]["if_range"] is None and gets[1]["range"] == f"bytes={MiB}-"


def test_a_resume_that_finds_a_new_version_starts_over_when_nothing_was_read(
        tmp_path, server_root, devserver, mounter):
    """Prefetch (no reader yet) is cut off; the track is re-rendered before the resume: the download starts
    over and the copy made afterwards is the new version, whole."""
    session = one_track(tmp_path, server_root, devserver.url, 3 * MiB, declare_size=True)
    devserver.set_faults({stream_path("t1"): {"drop_after": MiB, "hold": "cut", "hold_after": MiB, "times": 1}})
    mount = mounter(session, "--retries", "3", "--retry-wait", "0.01s", "--stall-timeout", "5s")
    devserver.wait_held("cut")
    replace_by_rename(served(server_root), 3 * MiB, seed=9)
    devserver.release("cut")
    assert mount.wait_track("t1", lambda r: r["status"] in ("cached", "failed"), timeout=30)["status"] == "cached"
    assert_same(copy_all_ways(mount.path / name_of("t1"), tmp_path / "copies"), served(server_root))


def test_a_resume_that_finds_a_new_version_after_bytes_were_read_is_eio_not_mixed(
        tmp_path, server_root, devserver, mounter):
    session = one_track(tmp_path, server_root, devserver.url, 3 * MiB, declare_size=True)
    devserver.set_faults({stream_path("t1"): {"drop_after": MiB, "hold": "cut", "hold_after": MiB, "times": 1}})
    mount = mounter(session, "--no-prefetch", "--retries", "3", "--retry-wait", "0.01s", "--stall-timeout", "5s")
    path = mount.path / name_of("t1")
    with open(path, "rb", buffering=0) as reader:
        devserver.wait_held("cut")
        first = reader.read(512 * 1024)  # bytes of the old version reach the reader
        replace_by_rename(served(server_root), 3 * MiB, seed=9)
        devserver.release("cut")
        with pytest.raises(OSError) as caught:
            while reader.read(MiB):
                pass
    assert caught.value.errno == 5
    assert len(first) == 512 * 1024
    record = mount.track("t1")
    assert record["status"] == "failed" and "changed" in record["error"]


def test_a_server_without_validators_changing_between_a_cut_and_the_resume_is_never_stitched(
        tmp_path, server_root, devserver, mounter):
    """Found by trying it: no ETag, no Last-Modified; the track changes (same size) while the download is
    cut off. Resuming at the cut would join the old head to the new tail, a file that never existed."""
    session = one_track(tmp_path, server_root, devserver.url, 3 * MiB, declare_size=True)
    devserver.set_faults({stream_path("t1"): {"no_validators": True, "drop_after": MiB, "hold": "cut",
                                              "hold_after": MiB, "times": 1, "then": {"no_validators": True}}})
    mount = mounter(session, "--retries", "3", "--retry-wait", "0.01s", "--stall-timeout", "5s")  # prefetch
    devserver.wait_held("cut")
    replace_by_rename(served(server_root), 3 * MiB, seed=9)
    devserver.release("cut")
    assert mount.wait_track("t1", lambda r: r["status"] in ("cached", "failed"), timeout=30)["status"] == "cached"
    assert_same(copy_all_ways(mount.path / name_of("t1"), tmp_path / "copies"), served(server_root))
    resume = devserver.requests("GET", stream_path("t1"))[1]
    assert resume["range"] is None  # read again from the start, compared with what was held


# -- stray bytes on a kept-alive connection -----------------------------------------------------------


@pytest.mark.parametrize("stray", ["response", "junk"])
def test_bytes_no_request_asked_for_never_answer_the_next_request(tmp_path, server_root, devserver, mounter,
                                                                  stray):
    """A server writes more after a body than its Content-Length said — here a whole second response of the
    next track's length, or junk — on a connection it keeps alive. The recv() that ends the body brings
    them too; reused, the connection answered the next track's GET with them (all X, cp exit 0), or
    failed an innocent track with "illegal status line". Such a connection is never reused."""
    size = 4096  # body and stray bytes in one TCP segment: one recv() gets both
    entries = [cloud_track(server_root, f"t{i}", size, seed=i) for i in range(1, 4)]
    session = write_session(tmp_path / "s.json", entries, server=devserver.url)
    extra = (f"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: {size}\r\n\r\n" + "X" * size
             if stray == "response" else "GARBAGE\r\n\r\n")
    devserver.set_faults({stream_path("t1"): {"after_body": extra}})
    mount = mounter(session, "--jobs", "1", "--retries", "1")  # prefetch one after another, one connection
    for i in range(1, 4):
        copy = tmp_path / f"t{i}.wav"
        assert run(["cp", str(mount.path / name_of(f"t{i}")), str(copy)]).returncode == 0
        assert filecmp.cmp(copy, server_root / "stream" / f"t{i}.wav", shallow=False), f"t{i}"
