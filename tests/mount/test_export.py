"""Tier 2: the product's main job through a real mount, read by real cp / rsync / shutil.copytree."""

from __future__ import annotations

import errno
import filecmp
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.conftest import run, without_root_override, write_session
from tools.make_audio import write_flac, write_sized, write_wav


def mixed_session(tmp_path: Path, server_root: Path, url: str) -> Path:
    local = tmp_path / "local"
    local.mkdir()
    write_wav(local / "intro.wav", 0.5, 440)
    (server_root / "stream").mkdir()
    write_flac(server_root / "stream" / "c7.flac", 0.5, 660)
    write_sized(server_root / "stream" / "big", 3 << 20, kind="wav", seed=1)
    write_sized(server_root / "stream" / "noext", 200_000, kind="wav", seed=2)
    return write_session(tmp_path / "session.json", [
        {"id": "a1", "artist": "Nina", "title": "Intro", "file_path": "local/intro.wav"},
        {"id": "c7", "artist": "Kid A", "title": "Hook", "cloud_stream_path": "/stream/c7.flac",
         "size": (server_root / "stream" / "c7.flac").stat().st_size, "content_type": "audio/flac"},
        {"id": "c8", "artist": "Big", "title": "Tune", "cloud_stream_path": "/stream/big",
         "content_type": "audio/wav"},
        {"id": "c9", "artist": "Magic", "title": "Bytes", "cloud_stream_path": "stream/noext"},
    ], server=url)


EXPECTED = {
    "Nina - Intro.wav": "local/intro.wav",
    "Kid A - Hook.flac": "server/stream/c7.flac",
    "Big - Tune.wav": "server/stream/big",
    "Magic - Bytes.wav": "server/stream/noext",
}


def test_mixed_export_with_cp_is_byte_identical(tmp_path, server_root, devserver, mounter):
    session = mixed_session(tmp_path, server_root, devserver.url)
    mount = mounter(session)
    assert sorted(os.listdir(mount.path)) == sorted(EXPECTED)
    out = tmp_path / "export"
    run(["cp", "-r", f"{mount.path}/.", str(out)], check=True)
    for name, origin in EXPECTED.items():
        assert filecmp.cmp(out / name, tmp_path / origin, shallow=False), name
    statuses = {t["id"]: mount.wait_track(t["id"], lambda r: r["status"] not in ("pending", "fetching"))["status"]
                for t in mount.report()["tracks"]}
    assert statuses == {"a1": "local", "c7": "cached", "c8": "cached", "c9": "cached"}


def test_rsync_and_copytree_read_the_same_bytes(tmp_path, server_root, devserver, mounter):
    session = mixed_session(tmp_path, server_root, devserver.url)
    mount = mounter(session, "--no-prefetch")
    run(["rsync", "-r", f"{mount.path}/", str(tmp_path / "rsync")], check=True)
    shutil.copytree(mount.path, tmp_path / "copytree")
    for name, origin in EXPECTED.items():
        assert filecmp.cmp(tmp_path / "rsync" / name, tmp_path / origin, shallow=False)
        assert filecmp.cmp(tmp_path / "copytree" / name, tmp_path / origin, shallow=False)


def test_archive_copies_read_the_same_bytes(tmp_path, server_root, devserver, mounter):
    """`cp -a` and `rsync -aAX` ask each file for its ACL and extended attributes: a namespace mixvfs does
    not support (ENOTSUP for security.* and system.*) is no error for them, as on any file system without ACLs."""
    session = mixed_session(tmp_path, server_root, devserver.url)
    mount = mounter(session, "--no-prefetch")
    cp = run(["cp", "-a", f"{mount.path}/.", str(tmp_path / "cp")], check=True)
    rsync = run(["rsync", "-aAX", f"{mount.path}/", str(tmp_path / "rsync")], check=True)
    assert (cp.stderr, rsync.stderr) == ("", "")
    for name, origin in EXPECTED.items():
        assert filecmp.cmp(tmp_path / "cp" / name, tmp_path / origin, shallow=False), name
        assert filecmp.cmp(tmp_path / "rsync" / name, tmp_path / origin, shallow=False), name


def test_size_is_exact_before_first_read_from_head(tmp_path, server_root, devserver, mounter):
    session = mixed_session(tmp_path, server_root, devserver.url)
    mount = mounter(session, "--no-prefetch")
    assert (mount.path / "Big - Tune.wav").stat().st_size == 3 << 20  # not in the manifest: HEAD at mount
    assert (mount.path / "Magic - Bytes.wav").stat().st_size == 200_000
    assert devserver.requests("GET", "/stream/big") == []  # known without downloading
    assert len(devserver.requests("HEAD", "/stream/big")) == 1


def test_failing_track_gives_eio_others_copy_and_report_says_why(tmp_path, server_root, devserver, mounter):
    session = mixed_session(tmp_path, server_root, devserver.url)
    doc = session.read_text().replace('"tracks": [', '"tracks": [{"id": "x1", "artist": "Gone", "title": "Track", '
                                      '"cloud_stream_path": "/stream/missing.wav", "size": 1000}, ')
    session.write_text(doc)
    mount = mounter(session)
    out = tmp_path / "export"
    done = run(["cp", "-r", f"{mount.path}/.", str(out)])
    assert done.returncode != 0
    assert "Gone - Track.wav" in done.stderr and "Input/output error" in done.stderr
    for name, origin in EXPECTED.items():
        assert filecmp.cmp(out / name, tmp_path / origin, shallow=False), name
    record = mount.track("x1")
    assert record["status"] == "failed"
    assert "404" in record["error"]
    try:  # its failure is known now: the open itself fails, so no copier creates a copy to leave empty
        os.close(os.open(mount.path / "Gone - Track.wav", os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EIO
    else:
        raise AssertionError("a track known to fail must not open")


def test_missing_track_is_listed_and_reads_fail_with_eio(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [
        {"id": "m1", "artist": "No", "title": "File", "file_path": "/nonexistent/x.wav"},
    ])
    mount = mounter(session)
    path = mount.path / "No - File.wav"
    assert os.listdir(mount.path) == ["No - File.wav"]  # listed; stat is EIO, as for a cloud track not there
    done = run(["cp", str(path), str(tmp_path / "x.wav")])
    assert done.returncode != 0 and "Input/output error" in done.stderr
    assert not (tmp_path / "x.wav").exists()  # never an empty stand-in
    assert mount.track("m1")["status"] == "missing"
    assert "/nonexistent/x.wav" in mount.track("m1")["error"]


def test_remount_reuses_the_cache_without_a_second_get(tmp_path, server_root, devserver, mounter):
    session = mixed_session(tmp_path, server_root, devserver.url)
    first = mounter(session)
    run(["cp", "-r", f"{first.path}/.", str(tmp_path / "one")], check=True)
    first.unmount()
    gets_before = len(devserver.requests("GET"))
    second = mounter(session, cache_dir=first.cache_dir)
    run(["cp", "-r", f"{second.path}/.", str(tmp_path / "two")], check=True)
    devserver.wait_idle()
    assert len(devserver.requests("GET")) == gets_before
    assert filecmp.cmp(tmp_path / "two" / "Big - Tune.wav", server_root / "stream" / "big", shallow=False)


def test_writes_are_refused_with_erofs(tmp_path, server_root, devserver, mounter):
    session = mixed_session(tmp_path, server_root, devserver.url)
    mount = mounter(session, "--no-prefetch")
    for action in (lambda: (mount.path / "new.wav").write_bytes(b"x"),
                   lambda: os.open(mount.path / "Nina - Intro.wav", os.O_WRONLY),
                   lambda: os.unlink(mount.path / "Nina - Intro.wav"),
                   lambda: os.rename(mount.path / "Nina - Intro.wav", mount.path / "x.wav"),
                   lambda: os.mkdir(mount.path / "d")):
        try:
            action()
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc
        else:
            raise AssertionError("write succeeded on a read-only mount")


def test_a_server_refusing_head_still_gives_the_size_to_every_copier(tmp_path, server_root, devserver, mounter):
    write_sized(server_root / "nosize", 300_000, kind="wav", seed=5)
    devserver.set_faults({"/nosize": {"no_head": 405}})  # HEAD refused: a ranged GET tells the size
    session = write_session(tmp_path / "s.json", [
        {"id": "n", "artist": "No", "title": "Size", "cloud_stream_path": "/nosize", "content_type": "audio/wav"},
    ], server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    path = mount.path / "No - Size.wav"
    assert path.stat().st_size == 300_000  # never a made-up 0: rsync and shutil.copyfile copy st_size bytes
    run(["rsync", str(path), str(tmp_path / "rsync.wav")], check=True)
    assert filecmp.cmp(tmp_path / "rsync.wav", server_root / "nosize", shallow=False)
    run(["cp", str(path), str(tmp_path / "copy.wav")], check=True)
    assert filecmp.cmp(tmp_path / "copy.wav", server_root / "nosize", shallow=False)


def test_files_show_0644_so_exported_copies_are_writable_and_the_mount_stays_read_only(tmp_path, mounter):
    source = tmp_path / "a.wav"
    write_sized(source, 10_000, kind="wav", seed=1)
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "T", "file_path": str(source)}])
    mount = mounter(session)
    path = mount.path / "A - T.wav"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    run(["cp", str(path), str(tmp_path / "copy.wav")], check=True)
    assert stat.S_IMODE((tmp_path / "copy.wav").stat().st_mode) & 0o200  # the owner may write (and delete) it
    with pytest.raises(OSError) as caught:
        path.open("r+b")
    assert caught.value.errno == errno.EROFS


def test_the_folder_shows_0755_so_an_export_of_it_stays_the_users_and_the_mount_stays_read_only(tmp_path, mounter):
    source = tmp_path / "a.wav"
    write_sized(source, 10_000, kind="wav", seed=1)
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "T", "file_path": str(source)}])
    mount = mounter(session)
    assert stat.S_IMODE(mount.path.stat().st_mode) == 0o755
    out = tmp_path / "export"
    run(["cp", "-r", f"{mount.path}/.", str(out)], check=True)  # cp gives OUT the mount root's mode
    run(without_root_override(["touch", str(out / "notes.txt")]), check=True)  # the user adds to their export
    run(without_root_override(["rm", "-r", str(out)]), check=True)  # and cleans it up
    assert not out.exists()
    with pytest.raises(OSError) as caught:
        (mount.path / "new.wav").write_bytes(b"x")
    assert caught.value.errno == errno.EROFS
    with pytest.raises(OSError) as caught:
        os.mkdir(mount.path / "folder")
    assert caught.value.errno == errno.EROFS
