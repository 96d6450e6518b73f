"""Bad input: hostile or broken manifests are sanitised or refused with one clear line — never a
traceback, never a file outside the mount, never a hang on a local path that is not a plain file."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MIXVFS, run, without_root_override, write_session
from tests.faults.helpers import cloud_track, cp
from tools.make_audio import write_sized


def mount_fails(tmp_path: Path, manifest: bytes) -> str:
    """Run `mixvfs mount` on a bad manifest; it must refuse with exit 2 and one line on stderr."""
    session = tmp_path / "bad.json"
    session.write_bytes(manifest)
    mountpoint = tmp_path / "mnt-bad"
    mountpoint.mkdir(exist_ok=True)
    done = run([MIXVFS, "mount", str(session), str(mountpoint), "--cache-dir", str(tmp_path / "cache")])
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("mixvfs: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not os.path.ismount(mountpoint)
    return done.stderr


def doc(*tracks: dict[str, Any], server: str | None = None) -> bytes:
    return json.dumps({"name": "x", "server": server, "tracks": list(tracks)}).encode()


@pytest.mark.parametrize(("manifest", "message"), [
    (b'{"tracks": [{"id": "a", "title": "\xff\xfe"}]}', "not UTF-8 text (byte 34)"),
    (doc({"id": "a\x00b", "title": "t"}), "track 0: field 'id' must not contain NUL"),
    (doc({"id": "ok", "file_path": "/tmp/a\x00b.wav"}), "track 0 (id 'ok'): field 'file_path' contains a NUL"),
    (b'{"tracks": [{"id": "a\\ud800", "title": "t"}]}', "track 0: field 'id' is not valid Unicode text"),
    (b'{"tracks": [{"id": "a", "file_path": "/x/\\udc80.wav"}]}', "field 'file_path' is not valid Unicode text"),
    (doc({"id": "a", "cloud_stream_path": "/s"}, server="ftp://music.example.com"),
     "session field 'server': must be an http:// or https:// URL"),
    (doc({"id": "a", "cloud_stream_path": "/s"}, server="file:///etc"), "must be an http:// or https:// URL"),
    (doc({"id": "a", "cloud_stream_path": "file:///etc/passwd"}), "field 'cloud_stream_path': must be an http"),
    (doc({"id": "a", "title": "x" * ((1 << 20) + 1)}), "field 'title' is longer than 1048576 characters"),
    (doc({"id": "a"}, {"id": "a"}), "track 1 (id 'a'): field 'id' duplicates track 0"),
], ids=["invalid-utf8", "nul-id", "nul-path", "surrogate-id", "surrogate-path", "ftp-server", "file-server",
        "file-stream", "huge-field", "duplicate-id"])
def test_bad_manifest_is_one_clear_line(tmp_path, manifest, message):
    assert message in mount_fails(tmp_path, manifest)


def test_hostile_names_stay_inside_the_mount(tmp_path, server_root, devserver, mounter):
    tracks = [
        {**cloud_track(server_root, "dots", 5000), "artist": "..", "title": "../../../etc/passwd"},
        {**cloud_track(server_root, "slash", 5000, seed=1), "artist": "/", "title": "/"},
        {**cloud_track(server_root, "nul", 5000, seed=2), "artist": "A\x00B", "title": "C\x00\x1f\x7fD"},
        {**cloud_track(server_root, "sur", 5000, seed=3), "artist": "\ud800", "title": "x\udfff"},
        {**cloud_track(server_root, "huge", 5000, seed=4), "title": "é" * 1_000_000},
        {**cloud_track(server_root, "empty", 5000, seed=5), "artist": "", "title": "  ..  "},
    ]
    session = tmp_path / "s.json"
    session.write_text(json.dumps({"name": "../../evil", "server": devserver.url, "tracks": tracks}))
    mount = mounter(session, "--no-prefetch")
    names = os.listdir(mount.path)
    assert len(names) == len(tracks)
    for name in names:
        assert "/" not in name and "\x00" not in name and name not in (".", "..")
        assert 0 < len(name.encode()) <= 255
    done = run(["cp", "-r", f"{mount.path}/.", str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    assert all(p.is_file() for p in (tmp_path / "out").iterdir())  # flat: nothing climbed out
    assert not (tmp_path / "evil").exists() and mount.report_path.exists()
    assert "Traceback" not in mount.log()


def test_ten_thousand_tracks_mount_and_list(tmp_path, mounter):
    tracks = [{"id": f"t{i}", "artist": "Same", "title": "Name", "file_path": f"/nonexistent/{i}.wav"}
              for i in range(10_000)]
    session = write_session(tmp_path / "s.json", tracks)
    mount = mounter(session, "--no-prefetch")
    names = os.listdir(mount.path)
    assert len(names) == 10_000 and len(set(names)) == 10_000  # collisions numbered, not dropped
    assert "Same - Name (10000).wav" in names
    assert len(mount.report()["tracks"]) == 10_000


def test_local_paths_that_are_not_readable_files_are_missing_not_hangs(tmp_path, mounter):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)  # opening it would block forever waiting for a writer
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    cases = {
        "fifo": (str(fifo), "is not a regular file"),
        "dev": ("/dev/zero", "is not a regular file"),  # endless: a copy would never finish
        "folder": (str(folder), "is a folder"),
        "under-file": ("/etc/hostname/x.wav", "Not a directory"),
        "dangling": (str(tmp_path / "dangling.wav"), "No such file or directory"),
    }
    session = write_session(tmp_path / "s.json", [{"id": k, "artist": "L", "title": k, "file_path": path}
                                                  for k, (path, _) in cases.items()])
    mount = mounter(session, "--no-prefetch")
    for track_id, (_, reason) in cases.items():
        done = cp(mount.path / mount.track(track_id)["name"], tmp_path / "out.wav")
        assert done.returncode != 0 and "Input/output error" in done.stderr, track_id
        record = mount.track(track_id)
        assert record["status"] == "missing" and reason in record["error"], record


def test_a_local_track_that_cannot_be_read_fails_stat_and_open_and_leaves_nothing_in_the_export(tmp_path, mounter):
    """Missing, unreadable or a folder: like a cloud track the server lacks — `stat` and `open` are EIO, so no
    empty stand-in reaches the export; the report names the path and the reason. A file removed while mounted
    is the same at the next look, and a file put back is served again."""
    music = tmp_path / "music"
    music.mkdir()
    write_sized(music / "good.wav", 20_000, kind="wav", seed=1)
    write_sized(music / "locked.wav", 20_000, kind="wav", seed=2)
    (music / "locked.wav").chmod(0o000)  # the daemon runs without root's override: it cannot read this
    (music / "folder.wav").mkdir()
    write_sized(music / "later.wav", 20_000, kind="wav", seed=3)
    cases = {
        "gone": (str(music / "gone.wav"), "No such file or directory"),
        "locked": (str(music / "locked.wav"), "Permission denied"),
        "folder": (str(music / "folder.wav"), "is a folder"),
        "later": (str(music / "later.wav"), "No such file or directory"),
    }
    session = write_session(tmp_path / "s.json", [
        {"id": "good", "artist": "L", "title": "good", "file_path": str(music / "good.wav")},
        *({"id": k, "artist": "L", "title": k, "file_path": path} for k, (path, _) in cases.items())])
    mount = mounter(session, "--no-prefetch", wrap=without_root_override([]))
    (music / "later.wav").unlink()  # removed while mounted (after the mount found it)
    for track_id in cases:
        path = mount.path / f"L - {track_id}.wav"
        with pytest.raises(OSError) as caught:
            os.stat(path)
        assert caught.value.errno == errno.EIO, track_id
        with pytest.raises(OSError) as caught:
            os.open(path, os.O_RDONLY)
        assert caught.value.errno == errno.EIO, track_id
    out = tmp_path / "export"
    done = run(["cp", "-r", f"{mount.path}/.", str(out)])
    assert done.returncode == 1 and done.stderr.count("Input/output error") == len(cases), done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["L - good.wav"]  # no 0-byte stand-ins
    for track_id, (path, reason) in cases.items():
        record = mount.track(track_id)
        assert record["status"] in ("missing", "failed"), record
        assert path in record["error"] and reason in record["error"], record
    write_sized(music / "later.wav", 20_000, kind="wav", seed=3)  # put back: served again
    run(["cp", str(mount.path / "L - later.wav"), str(out)], check=True)
    assert (out / "L - later.wav").read_bytes() == (music / "later.wav").read_bytes()
    record = mount.wait_track("later", lambda r: r["status"] == "local")
    assert record["status"] == "local" and "No such file" in record["reader_error"], record  # cp got EIO before
    mount.unmount()  # the final report counts every EIO answered, each track's with its reason (see conftest)
    assert set(mount.report()["eio_answers"]) == set(cases), mount.report()["eio_answers"]
