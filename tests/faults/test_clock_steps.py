"""Wall-clock steps (an NTP correction, suspend and resume, a user changing the time) under a live mount: the
daemon runs under libfaketime, whose wall clock the test steps while the monotonic clock runs on. Every
duration (how long a failed track stays failed, backoff, server waits, stalls) is monotonic, so a step in
either direction changes none of them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import getxattr, missing_part, wait_until, write_session
from tests.faults.helpers import FAST, cloud_track, cp, name_of, stream_path

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
EIO = "Input/output error"


@pytest.fixture
def wall_clock(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The file that sets the daemon's wall-clock offset (seconds, re-read on every call), and the
    environment that runs the daemon under libfaketime with its monotonic clock left alone."""
    if not LIBFAKETIME.exists():
        missing_part("libfaketime is not installed (apt install faketime)", "CI must test clock steps")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    return offset, {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset),
                    "FAKETIME_NO_CACHE": "1", "DONT_FAKE_MONOTONIC": "1"}


def step(offset: Path, seconds: int) -> None:
    tmp = offset.with_suffix(".new")
    tmp.write_text(f"{seconds:+d}\n")
    os.replace(tmp, offset)  # libfaketime never reads half a file


def daemon_time_is_faked(mount) -> bool:
    pid = int(getxattr(mount.path, "user.mixvfs.pid"))
    return str(LIBFAKETIME) in Path(f"/proc/{pid}/maps").read_text()


def failed_track(tmp_path, server_root, devserver, mounter, env, failed_for: str):
    """A mount whose daemon's wall clock libfaketime moves, and one track that has just failed (404, EIO)."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 300_000)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 404}})
    mount = mounter(session, *FAST, "--failed-for", failed_for, env=env)
    assert daemon_time_is_faked(mount)
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode != 0 and EIO in done.stderr
    return mount


def test_a_failed_track_is_tried_again_after_failed_for_when_the_clock_steps_back(
        tmp_path, server_root, devserver, mounter, wall_clock):
    offset, env = wall_clock
    mount = failed_track(tmp_path, server_root, devserver, mounter, env, "2s")
    step(offset, -3600)  # the clock steps back an hour (an NTP correction)
    devserver.set_faults({})  # the server is fixed
    assert wait_until(lambda: cp(mount.path / name_of("t1"), tmp_path / "out.wav").returncode == 0, timeout=30)
    assert (tmp_path / "out.wav").read_bytes() == (server_root / "stream" / "t1.wav").read_bytes()
    assert [g["status"] for g in devserver.requests("GET", stream_path("t1"))] == [404, 200]


def test_a_failed_track_stays_failed_for_failed_for_when_the_clock_steps_forward(
        tmp_path, server_root, devserver, mounter, wall_clock):
    offset, env = wall_clock
    mount = failed_track(tmp_path, server_root, devserver, mounter, env, "1h")
    step(offset, 2 * 3600)  # the clock jumps two hours ahead (resume from suspend, a user's change)
    devserver.set_faults({})
    done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
    assert done.returncode != 0 and EIO in done.stderr  # an hour of failure memory is an hour of real time
    assert [g["status"] for g in devserver.requests("GET", stream_path("t1"))] == [404]
