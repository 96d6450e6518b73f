"""Which libfuse serves the mount. `make test` runs this tier twice: as installed (libfuse 3 where present, as
the README promises) and with FUSE_LIBRARY_NAME=fuse (libfuse 2, the API macFUSE gives mfusepy on macOS)."""

from __future__ import annotations

import ctypes.util
import filecmp

from tests.conftest import daemon_libfuse_major, getxattr, lane_libfuse_major, run, write_session
from tools.make_audio import write_sized


def test_the_daemon_runs_on_the_libfuse_the_lane_asks_for(tmp_path, mounter):
    local = tmp_path / "local.wav"
    write_sized(local, 200_000, seed=3)
    session = write_session(tmp_path / "s.json", [{"id": "l", "artist": "A", "title": "L", "file_path": str(local)}])
    mount = mounter(session)
    run(["cp", str(mount.path / "A - L.wav"), str(tmp_path / "out.wav")], check=True)
    assert filecmp.cmp(tmp_path / "out.wav", local, shallow=False)
    default = 3 if ctypes.util.find_library("fuse3") else 2  # libfuse 3 when installed, else libfuse 2
    pid = int(getxattr(mount.path, "user.mixvfs.pid"))
    assert daemon_libfuse_major(pid) == (lane_libfuse_major() or default)
