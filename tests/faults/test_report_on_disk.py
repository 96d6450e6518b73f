"""The report is on disk before the reader sees EIO, also when the report is big and slow to write and
several tracks fail at once: the report file read right after `cp` returns already says "failed" and why
(no polling)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from tests.conftest import write_session
from tests.faults.helpers import cloud_track, cp, name_of, stream_path

LOCAL_TRACKS = 3000  # a report of ~0.5 MB: tens of ms per write, far over the old 5 ms urgent-write cut-off


def local_tracks(tmp_path: Path, count: int) -> list[dict[str, Any]]:
    folder = tmp_path / "local"
    folder.mkdir()
    tracks = []
    for i in range(count):
        path = folder / f"l{i}.wav"
        path.write_bytes(b"RIFF" + i.to_bytes(4, "little"))
        tracks.append({"id": f"l{i}", "artist": "Local Artist With A Longish Name", "title": f"Local Track {i}",
                       "file_path": str(path)})
    return tracks


def record_of(report_path: Path, track_id: str) -> dict[str, Any]:
    for record in json.loads(report_path.read_text())["tracks"]:
        if record["id"] == track_id:
            return dict(record)
    raise KeyError(track_id)


def test_failure_is_in_a_big_report_before_cp_gets_eio(tmp_path, server_root, devserver, mounter):
    failing = {f"e{i}": (404 if i % 2 else 500) for i in range(8)}
    cloud = [cloud_track(server_root, track_id, 100_000, seed=i) for i, track_id in enumerate(failing)]
    session = write_session(tmp_path / "s.json", local_tracks(tmp_path, LOCAL_TRACKS) + cloud, server=devserver.url)
    devserver.set_faults({stream_path(track_id): {"status": status} for track_id, status in failing.items()})
    mount = mounter(session, "--no-prefetch", "--retries", "1", "--retry-wait", "0.01s")

    seen: dict[str, tuple[int, dict[str, Any]]] = {}
    errors: list[BaseException] = []

    def copy(track_id: str) -> None:
        try:
            done = cp(mount.path / name_of(track_id), tmp_path / f"{track_id}.wav")
            # Read the report the instant cp is back: no waiting, no polling.
            seen[track_id] = (done.returncode, record_of(mount.report_path, track_id))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    # Eight failures at once, while the report holds thousands of tracks (the load): every reader must
    # find its own failure on disk.
    threads = [threading.Thread(target=copy, args=(track_id,)) for track_id in failing]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for track_id, status in failing.items():
        returncode, record = seen[track_id]
        assert returncode != 0
        assert record["status"] == "failed", (track_id, record)
        assert f"HTTP {status}" in (record["error"] or ""), (track_id, record)


def test_failure_is_on_disk_when_cp_returns_one_track_at_a_time(tmp_path, server_root, devserver, mounter):
    entries = [cloud_track(server_root, f"e{i}", 50_000, seed=i) for i in range(5)]
    session = write_session(tmp_path / "s.json", local_tracks(tmp_path, LOCAL_TRACKS) + entries,
                            server=devserver.url)
    devserver.set_faults({"*": {"status": 500}})
    mount = mounter(session, "--no-prefetch", "--retries", "1", "--retry-wait", "0.01s")
    for entry in entries:
        done = cp(mount.path / name_of(entry["id"]), tmp_path / "out.wav")
        record = record_of(mount.report_path, entry["id"])
        assert done.returncode != 0 and "Input/output error" in done.stderr
        assert record["status"] == "failed" and "HTTP 500" in record["error"], record
