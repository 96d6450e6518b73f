"""Validation and failure memory: an error page or a body of the wrong length is a failure, never a
track, and never enters the store; after a failure reads get EIO at once until --failed-for."""

from __future__ import annotations

import filecmp
import os

from tests.conftest import MIXVFS, run, write_session
from tests.faults.helpers import FAST, cachectl_json, cloud_track, cp, name_of, stream_path

EIO = "Input/output error"


def test_html_error_page_with_200_is_eio_and_not_stored(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 40_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"body": "<html>Please log in</html>", "content_type": "text/html"}})
    mount = mounter(session, *FAST)
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode != 0 and EIO in done.stderr
    record = mount.track("t1")
    assert record["status"] == "failed" and "text/html page instead of audio" in record["error"]
    assert record["attempts"] == 1 and len(devserver.requests("GET", stream_path("t1"))) == 1
    assert cachectl_json(mount.cache_dir, "ls") == []
    assert list((mount.cache_dir / "staging").iterdir()) == []


def test_json_error_with_200_is_eio(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 40_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"body": '{"error": "quota"}', "content_type": "application/json"}})
    mount = mounter(session, *FAST)
    assert cp(mount.path / name_of("t1"), tmp_path / "out.wav").returncode != 0
    assert "application/json page instead of audio" in mount.track("t1")["error"]


def test_body_longer_than_the_manifest_size_is_a_length_mismatch(tmp_path, server_root, devserver, mounter):
    entry = cloud_track(server_root, "t1", 40_000)
    entry["size"] = 30_000  # the manifest promises less than the server has
    session = write_session(tmp_path / "s.json", [entry], server=devserver.url)
    mount = mounter(session, *FAST)
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode != 0 and EIO in done.stderr
    record = mount.track("t1")
    assert "length mismatch" in record["error"] and "40000" in record["error"] and "30000" in record["error"]
    assert record["attempts"] == 1
    assert cachectl_json(mount.cache_dir, "ls") == []


def test_body_shorter_than_content_length_is_retried_then_eio_never_a_short_file(
        tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 40_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"drop_after": 10_000}})  # every attempt is cut at 10 kB
    mount = mounter(session, *FAST)
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode != 0 and EIO in done.stderr
    gets = devserver.requests("GET", stream_path("t1"))
    assert [g["range"] for g in gets] == [None, "bytes=10000-", "bytes=20000-"]  # resumes go on from the last byte
    record = mount.track("t1")
    assert record["status"] == "failed" and record["attempts"] == 3 and "network error" in record["error"]
    assert cachectl_json(mount.cache_dir, "ls") == []


def test_after_a_failure_reads_fail_at_once_until_failed_for(tmp_path, server_root, devserver, mounter):
    """Within --failed-for every open fails at once without a request, even once the server is fixed.
    The window is an hour, so no copy here can outlast it; that it ends is tested with an injected clock
    (unit/test_core.py::test_failure_is_remembered_until_failed_for)."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 300_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 404}})
    mount = mounter(session, *FAST, "--failed-for", "1h")
    for _ in range(3):
        done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
        assert done.returncode != 0 and EIO in done.stderr
    assert len(devserver.requests("GET", stream_path("t1"))) == 1  # no new download per read or per open
    devserver.set_faults({})  # the server is fixed, but the failure is remembered until --failed-for
    for _ in range(3):
        done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
        assert done.returncode != 0 and EIO in done.stderr
    assert [g["status"] for g in devserver.requests("GET", stream_path("t1"))] == [404]
    record = mount.track("t1")
    assert record["status"] == "failed" and "404" in record["error"] and record["attempts"] == 1


def test_a_zero_failed_for_tries_again_at_the_next_open(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 300_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 404}})
    mount = mounter(session, *FAST, "--failed-for", "0s")
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode != 0 and EIO in done.stderr
    devserver.set_faults({})  # the server is fixed: with no --failed-for window the next open tries again
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "out.wav", server_root / "stream" / "t1.wav", shallow=False)
    assert [g["status"] for g in devserver.requests("GET", stream_path("t1"))] == [404, 200]
    record = mount.wait_track("t1", lambda r: r["status"] == "cached")
    assert record["error"] is None
    # The first cp got EIO (an exporter may have skipped the track): that stays in the report.
    assert "404" in record["reader_error"]
    assert run([MIXVFS, "report", str(mount.report_path)]).returncode == 1


def test_a_stat_that_failed_stays_in_the_report_once_the_track_is_had(tmp_path, server_root, devserver, mounter):
    """A size the server would not give: `stat` (what a size-driven copier asks first) got EIO; the track was
    downloaded a moment later, and the report said only "cached" — the copier's EIO was lost."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 300_000, declare_size=False)],
                            server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 404, "head": True, "times": 2}})  # HEAD, then 0-0
    mount = mounter(session, *FAST, "--retries", "1", "--failed-for", "0s")
    done = run(["stat", str(mount.path / name_of("t1"))])
    assert done.returncode != 0 and EIO in done.stderr
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "out.wav", server_root / "stream" / "t1.wav", shallow=False)
    record = mount.wait_track("t1", lambda r: r["status"] == "cached")
    assert "the size is unknown" in record["reader_error"]
    assert run([MIXVFS, "report", str(mount.report_path)]).returncode == 1


def test_a_size_of_zero_is_never_shown_and_an_empty_body_is_never_a_track(tmp_path, server_root, devserver, mounter):
    """A track is never empty. A manifest's "size": 0 or a HEAD's Content-Length: 0 is taken as unknown (the
    server is asked again), since a stat of 0 lets a copier make an empty file without reading and exit 0; a
    200 with no body is a failure with EIO and a report line."""
    zero_in_manifest = cloud_track(server_root, "m0", 50_000, seed=1)
    zero_in_manifest["size"] = 0
    zero_in_head = cloud_track(server_root, "h0", 60_000, seed=2, declare_size=False)
    empty = cloud_track(server_root, "e0", 1000, seed=3, declare_size=False)
    (server_root / "stream" / "e0.wav").write_bytes(b"")
    session = write_session(tmp_path / "s.json", [zero_in_manifest, zero_in_head, empty], server=devserver.url)
    devserver.set_faults({stream_path("h0"): {"content_length": 0, "head": True, "times": 1}})
    mount = mounter(session, *FAST)
    out = tmp_path / "out"
    done = run(["cp", "-r", f"{mount.path}/.", str(out)])
    assert done.returncode != 0 and name_of("e0") in done.stderr and EIO in done.stderr
    for track_id in ("m0", "h0"):
        assert filecmp.cmp(out / name_of(track_id), server_root / "stream" / f"{track_id}.wav", shallow=False)
    assert not (out / name_of("e0")).exists()
    record = mount.track("e0")
    assert record["status"] == "failed" and "0 bytes" in record["error"], record


def test_a_known_failure_fails_the_open_so_no_copier_leaves_an_empty_file(tmp_path, server_root, devserver, mounter):
    """The manifest gives the size, so stat shows it; once the 404 is known, every open fails at once (EIO and
    a report line), so cp, cp -a and rsync create no copy at all. The first copy, which meets the 404 at its
    first read, is the one that can leave an empty file (cp creates its copy before reading)."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "gone", 176_444)], server=devserver.url)
    devserver.set_faults({stream_path("gone"): {"status": 404}})
    mount = mounter(session, *FAST, "--failed-for", "1h")
    first = cp(mount.path / name_of("gone"), tmp_path / "first.wav")
    assert first.returncode != 0 and EIO in first.stderr
    assert os.stat(mount.path / name_of("gone")).st_size == 176_444  # the manifest's: stat has nothing to fail
    for copier, out in ((["cp", "-r"], "og2"), (["cp", "-a"], "og3"), (["rsync", "-a"], "og4")):
        done = run([*copier, f"{mount.path}/.", str(tmp_path / out)])
        assert done.returncode != 0 and EIO in done.stderr, (copier, done.stderr)
        assert not (tmp_path / out / name_of("gone")).exists(), copier  # no empty stand-in
    assert [g["status"] for g in devserver.requests("GET", stream_path("gone"))] == [404]
    record = mount.track("gone")
    assert record["status"] == "failed" and "404" in record["error"]
