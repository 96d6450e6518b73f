"""The cache folder removed or replaced under a live mount (`rm -rf ~/.cache/mixvfs`, a disk-cleaner app): the
mount notices at its next cache access, says so once in its log, recreates its folder and goes on; tracks whose
blobs went with it are downloaded again. Where it cannot go on, each read is EIO with the cause in the report."""

from __future__ import annotations

import filecmp
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import MIXVFS, Mount, run, wait_until, without_root_override, write_session
from tests.faults.helpers import FAST, cachectl, cloud_track, name_of, stream_path
from tools.devserver import DevServer

TRACKS = ("first", "second", "third")


def session_with_one_cached(tmp_path: Path, server_root: Path, devserver: DevServer,
                            mounter: Callable[..., Mount]) -> Mount:
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, t, 300_000 + i, seed=i)
                                                  for i, t in enumerate(TRACKS)], server=devserver.url)
    mount = mounter(session, *FAST)
    run(["cp", str(mount.path / name_of("first")), str(tmp_path / "warm.wav")], check=True)
    assert mount.wait_track("first", lambda r: r["status"] == "cached")["status"] == "cached"
    return mount


def export_is_whole(mount: Mount, server_root: Path, out: Path) -> None:
    done = run(["cp", "-r", f"{mount.path}/.", str(out)])
    assert done.returncode == 0, done.stderr + mount.log()
    for track in TRACKS:
        assert filecmp.cmp(server_root / "stream" / f"{track}.wav", out / name_of(track), shallow=False), track


def test_the_cache_folder_removed_while_mounted_is_recreated_and_the_export_is_whole(
        tmp_path, server_root, devserver, mounter):
    mount = session_with_one_cached(tmp_path, server_root, devserver, mounter)
    shutil.rmtree(mount.cache_dir)
    export_is_whole(mount, server_root, tmp_path / "out")
    assert len(devserver.requests("GET", stream_path("first"))) == 2  # its blob went: downloaded again
    # Said once. Which words depends on when the mount looked: rmtree empties the folder before it removes it, and a
    # prefetch that looks in between finds its subfolders gone ("lost blobs, index, staging"), after it the folder
    # itself ("was removed or replaced").
    assert mount.log().count("while in use: made again") == 1, mount.log()
    assert stat.S_IMODE(mount.cache_dir.stat().st_mode) == 0o700
    export_is_whole(mount, server_root, tmp_path / "again")  # now from the new cache
    assert len(devserver.requests("GET", stream_path("second"))) == 1
    mount.unmount()
    assert cachectl(mount.cache_dir, "verify").returncode == 0


def test_the_cache_folder_replaced_while_mounted_is_taken_up_and_the_export_is_whole(
        tmp_path, server_root, devserver, mounter):
    mount = session_with_one_cached(tmp_path, server_root, devserver, mounter)
    mount.cache_dir.rename(tmp_path / "old-cache")  # a cleaner that moves the folder away and leaves an empty one
    mount.cache_dir.mkdir(mode=0o700)
    export_is_whole(mount, server_root, tmp_path / "out")
    assert mount.log().count("was removed or replaced") == 1, mount.log()
    mount.unmount()
    assert cachectl(mount.cache_dir, "verify").returncode == 0
    listed = cachectl(mount.cache_dir, "ls").stdout
    assert all(stream_path(t) in listed for t in TRACKS), listed


def test_a_cache_folder_that_cannot_be_made_again_fails_each_read_with_the_cause_in_the_report(
        tmp_path, server_root, devserver, mounter):
    mount = session_with_one_cached(tmp_path, server_root, devserver, mounter)
    def replaced() -> bool:
        """The folder removed and a file put in its place (mkdir cannot make it again); the daemon may make the
        folder again in between (its report is written there), so until the file is in place."""
        shutil.rmtree(mount.cache_dir, ignore_errors=True)
        try:
            mount.cache_dir.write_text("a file where the cache folder was\n")
        except IsADirectoryError:
            return False
        return True

    assert wait_until(replaced, interval=0)
    done = run(["cp", "-r", f"{mount.path}/.", str(tmp_path / "out")])
    assert done.returncode == 1
    for track in TRACKS:
        record = mount.track(track)
        reason = record.get("reader_error") or record.get("error") or ""
        assert f"{name_of(track)}' for reading: Input/output error" in done.stderr, done.stderr
        assert str(mount.cache_dir) in reason and "cache" in reason, record
    mount.unmount()  # the end, too, goes on without the folder
    assert "unmounted" in mount.log() and "Traceback" not in mount.log()


def test_a_download_under_way_when_the_folder_goes_is_stored_in_the_new_one(
        tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "long", 2_000_000)],
                            server=devserver.url)
    mount = mounter(session, *FAST)
    devserver.set_faults({stream_path("long"): {"hold": "mid", "hold_after": 500_000}})
    copy = subprocess.Popen(["cp", str(mount.path / name_of("long")), str(tmp_path / "long.wav")],
                            stderr=subprocess.PIPE, text=True)
    try:
        devserver.wait_held("mid", 1)  # half a megabyte is in the staging file
        shutil.rmtree(mount.cache_dir)
    finally:
        devserver.release("mid")
    assert copy.wait(timeout=60) == 0, copy.stderr.read() if copy.stderr else ""
    if copy.stderr:
        copy.stderr.close()
    assert filecmp.cmp(server_root / "stream" / "long.wav", tmp_path / "long.wav", shallow=False)
    assert mount.wait_track("long", lambda r: r["status"] == "cached")["status"] == "cached", mount.log()
    assert "its bytes were copied back" in mount.log()
    mount.unmount()
    assert cachectl(mount.cache_dir, "verify").returncode == 0
    assert stream_path("long") in cachectl(mount.cache_dir, "ls").stdout
    assert len(devserver.requests("GET", stream_path("long"))) == 1  # nothing downloaded twice


def test_a_report_and_log_kept_in_the_cache_folder_are_written_again_after_it_goes(
        tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, t, 300_000 + i, seed=i)
                                                  for i, t in enumerate(TRACKS)], server=devserver.url)
    cache = tmp_path / "cache"
    report, log = cache / "reports" / "s.json", cache / "logs" / "mixvfs.log"  # where they go by default
    mount = mounter(session, *FAST, "--report", str(report), "--log-file", str(log), cache_dir=cache)
    mount.report_path, mount.log_file = report, log
    shutil.rmtree(cache)
    export_is_whole(mount, server_root, tmp_path / "out")
    assert "was removed or replaced while in use" in mount.log()  # the log file, opened again
    assert wait_until(report.exists)  # the next batch of the report's changes writes it again
    for track in TRACKS:
        assert mount.wait_track(track, lambda r: r["status"] == "cached")["status"] == "cached"
    assert "cached" in run([MIXVFS, "report", str(mount.path)], check=True).stdout


def test_a_log_in_a_cache_folder_that_cannot_be_made_again_never_changes_the_readers_error(
        tmp_path, server_root, devserver, mounter):
    """The log's default place is the cache folder: a log line that cannot be written (a file where the folder
    was) is the log's problem, and every reader still gets EIO, never ENOTDIR from the log call."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, t, 300_000 + i, seed=i)
                                                  for i, t in enumerate(TRACKS)], server=devserver.url)
    cache = tmp_path / "cache"
    mount = mounter(session, *FAST, "--log-file", str(cache / "logs" / "mixvfs.log"), cache_dir=cache)
    shutil.rmtree(cache)
    cache.write_text("a file where the cache folder was\n")
    done = run(["cp", "-r", f"{mount.path}/.", str(tmp_path / "out")])
    assert done.returncode == 1
    assert "Not a directory" not in done.stderr, done.stderr
    for track in TRACKS:
        assert f"{name_of(track)}' for reading: Input/output error" in done.stderr, done.stderr


def test_a_cache_folder_made_unreadable_while_mounted_says_permission_denied_and_leaves_nothing_behind(
        tmp_path, server_root, devserver, mounter):
    """`chmod 000` on the cache folder under a live mount (the daemon bound by permission bits, as a user's
    is): each track that needs the cache is EIO whose report line says permission denied — the folder was neither
    removed nor replaced — (a download under way, read whole from its staging file, is a whole copy, its note
    saying why it was not cached), the log (kept in that folder) goes on in the file already open, with one line saying
    so and no logging error, and once the folder is readable again after a clean unmount, no staging file is
    left in it."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, t, 300_000 + i, seed=i)
                                                  for i, t in enumerate(TRACKS)], server=devserver.url)
    cache = tmp_path / "cache"
    log = cache / "logs" / "mixvfs.log"
    # The tracks copy out held back by the server: a download is under way when the folder's mode changes.
    devserver.set_faults({stream_path("second"): {"hold": "mid", "hold_after": 100_000}})
    mount = mounter(session, *FAST, "--stall-timeout", "30s", "--log-file", str(log), cache_dir=cache,
                    wrap=without_root_override([]))
    mount.log_file = log
    run(["cp", str(mount.path / name_of("first")), str(tmp_path / "first.wav")], check=True)
    copier = subprocess.Popen(["cp", str(mount.path / name_of("second")), str(tmp_path / "second.wav")],
                              stderr=subprocess.PIPE, text=True)
    devserver.wait_held("mid")
    cache.chmod(0)
    try:
        devserver.release("mid")
        _, copier_said = copier.communicate(timeout=60)
        done = run(["cp", str(mount.path / name_of("third")), str(tmp_path / "third.wav")])
        assert done.returncode == 1 and "Input/output error" in done.stderr, done.stderr
        # The download under way ends in its staging file, open before the change: its reader reads it whole,
        # so that track is not failed; the cache could not keep it, and its note says why.
        assert copier.returncode == 0, copier_said
        assert filecmp.cmp(tmp_path / "second.wav", server_root / "stream" / "second.wav", shallow=False)
        record = mount.wait_track("second", lambda r: r["note"] is not None)
        assert record["status"] == "pending" and "Permission denied" in record["note"], record
        record = mount.wait_track("third", lambda r: r["status"] == "failed" or r["reader_error"] is not None)
        said = record["error"] or record["reader_error"]
        assert "Permission denied" in said and "removed or replaced" not in said, (record, copier_said)
    finally:
        cache.chmod(0o700)
    mount.unmount()
    text = log.read_text()
    assert "--- Logging error ---" not in text and "Traceback" not in text, text
    assert text.count("cannot be looked at") == 1, text
    assert "unmounted" in text or "stopped" in text or "final report" in text, text
    assert list((cache / "staging").glob("*.part")) == []


def test_a_final_report_that_cannot_be_written_makes_unmount_and_report_say_so_and_fail(
        tmp_path, server_root, devserver, mounter):
    """The cache folder (where the report is kept by default) unreadable at the unmount (the daemon bound by
    permission bits, as a user's is): the final report cannot be written. `unmount` says so, with the cause, and
    exits 1; once the folder is readable again, `report` of the mountpoint says the report it shows is
    incomplete (as last written while mounted, not the mount's outcome) and exits 1."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "first", 300_000, seed=1)],
                            server=devserver.url)
    cache = tmp_path / "cache"
    mount = mounter(session, *FAST, cache_dir=cache, wrap=without_root_override([]), default_report=True)
    run(["cp", str(mount.path / name_of("first")), str(tmp_path / "first.wav")], check=True)
    mount.wait_track("first", lambda r: r["status"] == "cached")
    cache.chmod(0)
    try:
        done = run([MIXVFS, "unmount", str(mount.path)])
        mount.mounted = False
    finally:
        cache.chmod(0o700)
    assert done.returncode == 1, f"{done.stdout}{done.stderr}"
    assert "the final report was not written" in done.stderr and "Permission denied" in done.stderr, done.stderr
    shown = run([MIXVFS, "report", str(mount.path)])
    assert shown.returncode == 1, f"{shown.stdout}{shown.stderr}"
    assert "this report is incomplete" in shown.stderr and "Permission denied" in shown.stderr, shown.stderr
    assert "cannot write the final report" in mount.log(), mount.log()


def test_a_report_the_live_mount_cannot_write_is_said_to_be_behind_and_leaves_no_temporary_files(
        tmp_path, server_root, devserver, mounter):
    """Its folder no longer takes files (as a full disk, which made `mixvfs report` show tracks as fetching or
    pending that had failed with EIO, and left a temporary file per batch): status says the report is behind,
    `mixvfs report MOUNTPOINT` says so and exits 1, and no half-written temporary file stays."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "first", 300_000, seed=1),
                                                  {"id": "gone", "artist": "Artist", "title": "gone",
                                                   "cloud_stream_path": "/stream/gone.wav", "size": 1000}],
                            server=devserver.url)
    mount = mounter(session, *FAST, "--no-prefetch", wrap=without_root_override([]))
    run(["cp", str(mount.path / name_of("first")), str(tmp_path / "first.wav")], check=True)
    mount.wait_track("first", lambda r: r["status"] == "cached")
    mode = tmp_path.stat().st_mode
    tmp_path.chmod(0o555)  # where the report is: no new file (its temporary one) can be made there
    try:
        assert run(["cp", str(mount.path / "Artist - gone.wav"), str(tmp_path / "out.wav")]).returncode != 0
        assert wait_until(lambda: "report: behind this status" in run([MIXVFS, "status", str(mount.path)]).stdout)
        shown = run([MIXVFS, "report", str(mount.path)])
        assert shown.returncode == 1, f"{shown.stdout}{shown.stderr}"
        assert "this report is behind the live mount" in shown.stderr and "Permission denied" in shown.stderr
    finally:
        tmp_path.chmod(mode)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    mount.wait_track("gone", lambda r: r["status"] == "failed")  # written again once it can be
