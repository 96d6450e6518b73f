"""Server down or blipping: the mount still comes up; cached tracks read normally with their sizes from
the index; uncached ones are EIO with "server unreachable"; a blip never empties a cached track."""

from __future__ import annotations

import filecmp
import os

from tests.conftest import write_session
from tests.faults.helpers import FAST, cloud_track, cp, name_of
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
