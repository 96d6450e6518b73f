"""Server down or blipping: the mount still comes up; cached tracks read normally with their sizes from
the index; uncached ones are EIO with "server unreachable"; a blip never empties a cached track."""

from __future__ import annotations

import filecmp
import json
import os

from tests.conftest import MIXVFS, run, write_session
from tests.faults.helpers import FAST, cachectl, cloud_track, cp, name_of
from tests.faults.test_mount_says import notes
from tools.devserver import DevServer


def test_mount_while_server_down_serves_cached_tracks_and_fails_the_rest(tmp_path, server_root, mounter):
    # No size in the manifest: the mount must learn sizes from the server, or from the index when it is down.
    tracks = [cloud_track(server_root, "seen", 250_000, declare_size=False),
              cloud_track(server_root, "never", 150_000, seed=1, declare_size=False)]
    with DevServer(server_root) as server:
        session = write_session(tmp_path / "s.json", tracks, server=server.url)
        first = mounter(session, *FAST)
        assert cp(first.path / name_of("seen"), tmp_path / "first.wav").returncode == 0
        first.unmount()
    # The server is gone now: its port refuses connections.
    second = mounter(session, *FAST)
    assert os.stat(second.path / name_of("seen")).st_size == 250_000  # from the index
    done = cp(second.path / name_of("seen"), tmp_path / "again.wav")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "again.wav", server_root / "stream" / "seen.wav", shallow=False)
    assert second.track("seen")["status"] == "cached"
    failed = cp(second.path / name_of("never"), tmp_path / "never.wav")
    assert failed.returncode != 0 and "Input/output error" in failed.stderr
    record = second.track("never")
    assert record["status"] == "failed" and record["error"].startswith("server unreachable")
    assert record["attempts"] == 3  # connection refused is retried like any network error


def test_server_blip_at_mount_never_empties_a_cached_track(tmp_path, server_root, devserver, mounter):
    tracks = [cloud_track(server_root, "t1", 250_000, declare_size=False)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    first = mounter(session, *FAST)
    assert cp(first.path / name_of("t1"), tmp_path / "first.wav").returncode == 0
    first.unmount()
    for blip in ({"status": 503, "head": True}, {"status": 404, "head": True},
                 {"body": "<html>maintenance</html>", "head": True}):
        devserver.set_faults({"*": blip})
        mount = mounter(session, *FAST)
        assert os.stat(mount.path / name_of("t1")).st_size == 250_000, blip
        done = cp(mount.path / name_of("t1"), tmp_path / "again.wav")
        assert done.returncode == 0, (blip, done.stderr)
        assert filecmp.cmp(tmp_path / "again.wav", server_root / "stream" / "t1.wav", shallow=False)
        mount.unmount()
    assert len(devserver.requests("GET", "/stream/t1.wav")) == 1  # all served from the cache


def test_a_read_waits_one_stall_on_a_silent_server_its_retries_are_never_the_check(
        tmp_path, server_root, devserver, mounter):
    """The size is in the manifest, so the folder is live at once; the server takes the GET and says nothing.
    The download's first attempt meets the stall timeout; its next attempts (the retry waits add up to more than
    the pause before the origin's check) are refused at once: none of them is the check, whose stall the reader
    would wait a second time. cp gets EIO after one stall timeout, the report says why."""
    track = cloud_track(server_root, "t1", 60_000)
    session = write_session(tmp_path / "s.json", [track], server=devserver.url)
    devserver.set_faults({"*": {"hold": "silent"}})
    try:
        # Retry waits 1 + 2 + 4 s (jitter aside): the last attempt comes after the 5 s pause before a check.
        mount = mounter(session, "--no-prefetch", "--retries", "4", "--retry-wait", "1s", "--stall-timeout", "2s")
        failed = cp(mount.path / name_of("t1"), tmp_path / "t1.wav")
        assert failed.returncode != 0 and "Input/output error" in failed.stderr
        assert devserver.held("silent") == 1  # the first attempt only: no retry was sent as the check
        record = mount.track("t1")
        assert record["status"] == "failed" and record["attempts"] == 4, record
        assert "has not answered" in record["error"], record
    finally:
        devserver.release("silent")


def test_a_server_that_never_answers_costs_a_listing_one_stall_not_one_per_track(
        tmp_path, server_root, devserver, mounter):
    """The server takes each connection and says nothing. Once one question went unanswered for the stall
    timeout, the origin is known not to answer: the listing's next questions are not sent (each track gets its
    report line at once), cached tracks still copy, the others are EIO with a report line, never a hang."""
    cached = cloud_track(server_root, "kept", 60_000)
    sizeless = [cloud_track(server_root, f"s{n}", 40_000 + n, seed=n, declare_size=False) for n in range(6)]
    session = write_session(tmp_path / "s.json", [cached, *sizeless], server=devserver.url)
    # The kept track is in the cache before the server goes silent.
    assert cachectl(tmp_path / "cache", "warm", str(write_session(tmp_path / "kept.json", [cached],
                                                                  server=devserver.url))).returncode == 0
    devserver.set_faults({"*": {"hold": "silent", "hold_head": True}})
    try:
        mount = mounter(session, "--no-prefetch", "--retries", "2", "--retry-wait", "0.01s",
                        "--stall-timeout", "2s")
        asked_at_mount = devserver.wait_held("silent", len(sizeless))
        listing = run(["ls", "-l", str(mount.path)], timeout=120)  # the timeout: a hang guard only
        assert listing.returncode != 0  # the sizes could not be had: ls says so for each
        # At most one more question (a check whether the server answers again) reached it after the mount's own.
        assert devserver.held("silent") <= asked_at_mount + 1, devserver.held("silent")
        status = json.loads(run([MIXVFS, "status", str(mount.path), "--json"]).stdout)
        assert [w["origin"] for w in status["server_silent"]] == [devserver.url], status
        for track in sizeless:
            record = mount.track(track["id"])
            assert record["status"] == "failed" and record["error"].startswith("the size is unknown: "), record
        done = cp(mount.path / name_of("kept"), tmp_path / "kept.wav")
        assert done.returncode == 0, done.stderr
        assert filecmp.cmp(tmp_path / "kept.wav", server_root / "stream" / "kept.wav", shallow=False)
        failed = cp(mount.path / name_of("s0"), tmp_path / "s0.wav")
        assert failed.returncode != 0 and "Input/output error" in failed.stderr
        assert mount.track("s0")["status"] == "failed"
    finally:
        devserver.release("silent")


def test_answers_that_come_after_the_folder_went_live_are_kept_and_a_stat_waits_for_them(
        tmp_path, server_root, devserver, mounter):
    """A server slower than the mount's 10 s for its questions: the folder goes live without the sizes, the
    questions go on, and their answers are kept. ls -l waits for those answers instead of asking each size again,
    one track at a time: the server is asked once per track in all, and every size is right."""
    sizeless = [cloud_track(server_root, f"s{n}", 40_000 + n, seed=n, declare_size=False) for n in range(6)]
    session = write_session(tmp_path / "s.json", sizeless, server=devserver.url)
    devserver.set_faults({"*": {"delay": 11, "head": True}})  # past the mount's 10 s for its questions
    mount = mounter(session, "--no-prefetch")
    listing = run(["ls", "-l", str(mount.path)], timeout=120)  # the timeout: a hang guard only
    assert listing.returncode == 0, listing.stderr
    for track in sizeless:
        assert os.stat(mount.path / name_of(track["id"])).st_size == 40_000 + int(track["id"][1:])
    assert len(devserver.requests("HEAD")) == len(sizeless), devserver.requests("HEAD")


def test_a_track_downloaded_before_its_size_was_known_copies_while_the_server_is_down(
        tmp_path, server_root, mounter):
    """The first mount could not learn the size (the server busy while it listed), so the download began
    knowing the bare URL only. Once the server is gone, the cached track still has its size, from the index, and
    copies; the mount's line says so, and so does the report."""
    track = cloud_track(server_root, "late", 180_000, declare_size=False)
    with DevServer(server_root, faults={"*": {"status": 503, "head": True}}) as server:
        session = write_session(tmp_path / "s.json", [track], server=server.url)
        first = mounter(session, *FAST, "--failed-for", "0s")
        server.set_faults({})
        done = cp(first.path / name_of("late"), tmp_path / "first.wav")
        assert done.returncode == 0, done.stderr
        first.unmount()
    second = mounter(session, *FAST)
    said = notes(second.extra[1])
    assert len(said) == 1 and said[0].endswith(": 1 of 1 cloud tracks are cached and will copy; 0 will fail until "
                                               "it answers"), said
    assert os.stat(second.path / name_of("late")).st_size == 180_000  # the stored blob's, from the index
    done = cp(second.path / name_of("late"), tmp_path / "again.wav")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "again.wav", server_root / "stream" / "late.wav", shallow=False)
    assert second.track("late")["status"] == "cached"


def test_a_track_downloaded_before_its_size_was_known_copies_while_the_server_never_answers(
        tmp_path, server_root, devserver, mounter):
    """As above, with a server that takes each connection and says nothing: the stored size and bytes serve the
    track (and its report line says it was not revalidated), never an EIO."""
    track = cloud_track(server_root, "late", 120_000, declare_size=False)
    session = write_session(tmp_path / "s.json", [track], server=devserver.url)
    devserver.set_faults({"*": {"status": 503, "head": True}})
    first = mounter(session, *FAST, "--failed-for", "0s")
    devserver.set_faults({})
    assert cp(first.path / name_of("late"), tmp_path / "first.wav").returncode == 0
    first.unmount()
    devserver.set_faults({"*": {"hold": "silent", "hold_head": True}})
    try:
        second = mounter(session, "--no-prefetch", "--retries", "2", "--retry-wait", "0.01s", "--stall-timeout", "2s")
        assert os.stat(second.path / name_of("late")).st_size == 120_000  # the stored blob's, from the index
        done = cp(second.path / name_of("late"), tmp_path / "again.wav")
        assert done.returncode == 0, done.stderr
        assert filecmp.cmp(tmp_path / "again.wav", server_root / "stream" / "late.wav", shallow=False)
        assert second.track("late")["status"] == "cached"
    finally:
        devserver.release("silent")
