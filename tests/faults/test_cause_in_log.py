"""The errno guard keeps the cause of an EIO in the debug log (issue 9, point 13), and the token still
never reaches the log."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Mount, write_session
from tests.faults.helpers import FAST, cloud_track, cp, name_of, stream_path
from tools.devserver import DevServer

SECRET = "tok-S3CRET-cause-77e2"


def test_the_cause_of_an_eio_is_in_the_debug_log_without_the_token(tmp_path: Path, server_root: Path,
                                                                   mounter: Callable[..., Mount]) -> None:
    tracks = [cloud_track(server_root, "no", 50_000)]
    with DevServer(server_root, tokens=[SECRET]) as server:
        server.set_faults({stream_path("no"): {"status": 401}})  # rejected even after the refresh
        session = write_session(tmp_path / "s.json", tracks, server=server.url)
        mount = mounter(session, *FAST, "--log-level", "debug", env={"MIXVFS_TOKEN": SECRET})
        failed = cp(mount.path / name_of("no"), tmp_path / "no.wav")
        assert failed.returncode != 0 and "Input/output error" in failed.stderr
        mount.unmount()
    log = mount.log()
    assert re.search(r"DEBUG \S+errno_map: (open|read|read_into): EIO from AuthRejected: .*token rejected", log), log
    assert SECRET not in log
