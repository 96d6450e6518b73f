"""Found by trying to break the redesign: the cache keeps to --max-size once nothing reads, a dead mount's
report is still shown, bad paths and non-reports are one clear line."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.conftest import MIXVFS, getxattr, run, write_session
from tests.faults.helpers import cachectl_json, cloud_track, name_of, stream_path

MiB = 1 << 20


def test_the_cache_keeps_to_max_size_once_nothing_reads(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 3 * MiB, seed=1)],
                            server=devserver.url)
    mount = mounter(session, "--max-size", "1M", "--no-prefetch")
    run(["cp", str(mount.path / name_of("t1")), str(tmp_path / "x.wav")], check=True)  # served whole
    mount.unmount()
    stats = cachectl_json(mount.cache_dir, "stats")
    assert stats["bytes"] <= MiB and stats["index"]["sources"] == stats["blobs"]


def test_report_of_a_dead_mount_shows_its_last_report(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 2 * MiB, seed=1)],
                            server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"hold": "t1", "hold_after": MiB}})
    mount = mounter(session, "--no-prefetch")
    reader = subprocess.Popen(["cat", str(mount.path / name_of("t1"))], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    devserver.wait_held("t1")
    watching = subprocess.Popen([MIXVFS, "status", str(mount.path), "--watch", "0.2"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    assert watching.stdout is not None and watching.stdout.readline()  # the watch has seen the mount live
    os.kill(int(getxattr(mount.path, "user.mixvfs.pid")), signal.SIGKILL)
    reader.wait(timeout=30)
    _, said = watching.communicate(timeout=60)
    # A script watching an export to its end learns from the exit code that the export lacks tracks.
    assert watching.returncode == 1 and "its daemon died" in said, said
    done = run([MIXVFS, "report", str(mount.path)])
    assert "Traceback" not in done.stderr
    assert done.returncode == 1 and "Artist - t1.wav" in done.stdout, done.stderr
    assert "its daemon died" in done.stderr
    # Right after the kill too: `status` says the daemon died (exit 1), not "not mounted now".
    done = run([MIXVFS, "status", str(mount.path)])
    assert done.returncode == 1 and "its daemon died" in done.stderr and "not mounted now" not in done.stderr, \
        done.stderr
    # The unmount clears the dead mount and says what happened to it.
    done = run([MIXVFS, "unmount", str(mount.path)])
    assert done.returncode == 0, done.stderr
    assert f"its daemon had died; cleared the dead mount at {mount.path}" in done.stdout, done.stdout
    assert not os.path.ismount(mount.path)
    mount.mounted = False


def test_an_empty_cache_dir_and_a_manifest_given_as_a_report_are_one_line(tmp_path):
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "T",
                                                   "cloud_stream_path": "/a.wav"}], server="http://127.0.0.1:9")
    done = run([MIXVFS, "preflight", str(session), "--cache-dir", ""], cwd=tmp_path)
    assert done.returncode == 2 and "must not be empty" in done.stderr
    assert not (tmp_path / "blobs").exists()  # the current folder did not become a cache
    done = run([MIXVFS, "report", str(session)])
    assert done.returncode == 2 and "not a mixvfs report" in done.stderr and "Traceback" not in done.stderr
