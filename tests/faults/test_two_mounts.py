"""One session mounted twice at once (a forgotten mount and a new one, two folders): each mount keeps its own
report, and ``mixvfs report``/``status`` of a mountpoint answer for that mount, during and after the other's
unmount."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MIXVFS, run, wait_until, write_session
from tests.faults.helpers import FAST, cloud_track, cp, name_of


def report_of(mountpoint: Path) -> dict[str, Any]:
    done = run([MIXVFS, "report", str(mountpoint), "--json"])
    assert done.returncode in (0, 1), done.stderr
    return dict(json.loads(done.stdout))


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {t["id"]: t["status"] for t in doc["tracks"]}


def test_one_session_mounted_twice_keeps_a_report_per_mount(tmp_path, server_root, devserver, mounter):
    tracks = [cloud_track(server_root, "ok", 300_000, seed=1), cloud_track(server_root, "gone", 200_000, seed=2)]
    (server_root / "stream" / "gone.wav").unlink()  # the server answers 404 for it
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    first = mounter(session, *FAST, default_report=True)
    second = mounter(session, *FAST, default_report=True)
    assert first.report_path != second.report_path
    assert first.report_path.parent == second.report_path.parent == first.cache_dir / "reports"

    with pytest.raises(OSError) as caught:
        (first.path / name_of("gone")).read_bytes()
    assert caught.value.errno == errno.EIO
    assert cp(second.path / name_of("ok"), tmp_path / "ok.wav").returncode == 0

    # The report is rewritten in batches (a fraction of a second): wait for the copy's record to reach it.
    wait_until(lambda: statuses(report_of(second.path)) == {"ok": "cached", "gone": "pending"}
               and statuses(report_of(first.path)) == {"ok": "pending", "gone": "failed"}, timeout=30)
    assert statuses(report_of(first.path)) == {"ok": "pending", "gone": "failed"}
    assert statuses(report_of(second.path)) == {"ok": "cached", "gone": "pending"}
    assert report_of(first.path)["mountpoint"] == str(first.path)
    status = json.loads(run([MIXVFS, "status", str(second.path), "--json"], check=False).stdout)
    assert status["failed_total"] == 0
    status = json.loads(run([MIXVFS, "status", str(first.path), "--json"], check=False).stdout)
    assert status["failed_total"] == 1

    second.unmount()  # its final report must not touch the first mount's
    # The report is rewritten in batches (a fraction of a second): wait for the copy's record to reach it.
    wait_until(lambda: statuses(report_of(second.path)) == {"ok": "cached", "gone": "pending"}
               and statuses(report_of(first.path)) == {"ok": "pending", "gone": "failed"}, timeout=30)
    assert statuses(report_of(first.path)) == {"ok": "pending", "gone": "failed"}
    assert statuses(report_of(second.path)) == {"ok": "cached", "gone": "pending"}  # its last report
    first.unmount()
    # The report is rewritten in batches (a fraction of a second): wait for the copy's record to reach it.
    wait_until(lambda: statuses(report_of(second.path)) == {"ok": "cached", "gone": "pending"}
               and statuses(report_of(first.path)) == {"ok": "pending", "gone": "failed"}, timeout=30)
    assert statuses(report_of(first.path)) == {"ok": "pending", "gone": "failed"}
    assert statuses(report_of(second.path)) == {"ok": "cached", "gone": "pending"}


def test_a_second_live_mount_is_refused_the_report_file_of_the_first(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "ok", 300_000, seed=1)],
                            server=devserver.url)
    first = mounter(session, *FAST)
    second = mounter(session, *FAST, "--report", str(first.report_path), expect_ok=False)
    _stdout, stderr, code = second.extra
    assert code == "2" and not second.mounted
    assert f"the live mount at {first.path} writes it" in stderr, stderr
    first.unmount()  # once the first is gone, its report file may be taken
    third = mounter(session, *FAST, "--report", str(first.report_path), mountpoint=tmp_path / "mnt1")
    assert third.mounted and report_of(third.path)["mountpoint"] == str(third.path)
