"""What Finder, Spotlight and QuickLook ask of a mount (vfs/fs/finder.py), through a real mount: their probe
names are ENOENT with no request and no report line; ``.metadata_never_index`` is there by name and in no
listing, so no export carries it; listing, stat and xattrs download nothing; a previewer process gets cached
tracks and never starts a download."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run, write_session
from tests.faults.helpers import cloud_track, name_of, stream_path

PROBES = ["._Artist - a.wav", ".DS_Store", ".localized", ".hidden", ".Spotlight-V100", ".Trashes", ".fseventsd",
          "._.", ".VolumeIcon.icns"]


def test_finder_probes_are_enoent_with_no_request_and_no_report_line(tmp_path, server_root, devserver, mounter):
    tracks = [cloud_track(server_root, t, 40_000, seed=i, declare_size=False) for i, t in enumerate("ab")]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    before = devserver.requests()
    report = mount.report()["tracks"]
    for name in PROBES:
        with pytest.raises(FileNotFoundError):
            os.stat(mount.path / name)
        with pytest.raises(FileNotFoundError):
            open(mount.path / name, "rb").close()
    assert devserver.requests() == before
    assert mount.report()["tracks"] == report
    assert "ERROR" not in mount.log()


def test_metadata_never_index_is_found_by_name_and_never_exported(tmp_path, server_root, devserver, mounter):
    tracks = [cloud_track(server_root, "a", 30_000)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    marker = mount.path / ".metadata_never_index"
    assert os.stat(marker).st_size == 0 and marker.read_bytes() == b""
    assert sorted(os.listdir(mount.path)) == [name_of("a")]
    run(["cp", "-r", f"{mount.path}/.", str(tmp_path / "export")], check=True)
    run(["rsync", "-a", f"{mount.path}/", str(tmp_path / "export-rsync")], check=True)
    assert sorted(os.listdir(tmp_path / "export")) == [name_of("a")]
    assert sorted(os.listdir(tmp_path / "export-rsync")) == [name_of("a")]


def test_listing_stat_and_xattrs_of_many_tracks_download_nothing(tmp_path, server_root, devserver, mounter):
    """Finder showing a folder: names, sizes, attributes, extended attributes — no GET. The sizes are not
    in the manifest, so each is asked of the server (HEAD), never learnt by a download."""
    tracks = [cloud_track(server_root, f"t{i:02d}", 10_000 + i, seed=i, declare_size=False) for i in range(30)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    run(["ls", "-l", str(mount.path)], check=True)
    for entry in os.scandir(mount.path):
        assert entry.stat().st_size == 10_000 + int(entry.name[-6:-4])
    run(["getfattr", "-d", "-R", str(mount.path)], check=True)
    assert devserver.requests("GET") == []


@pytest.fixture
def previewer(tmp_path: Path) -> str:
    """``cat`` under the name Spotlight's importer has (the name a process shows is its program's)."""
    program = tmp_path / "bin" / "mdworker_shared"
    program.parent.mkdir()
    shutil.copy(shutil.which("cat") or "/bin/cat", program)
    return str(program)


@pytest.mark.linux_facilities  # the requester's name comes from /proc/PID/comm (macOS: proc_name; else unknown)
def test_a_previewer_gets_cached_tracks_and_never_starts_a_download(tmp_path, server_root, devserver, mounter,
                                                                     previewer):
    tracks = [cloud_track(server_root, "a", 50_000)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    track = mount.path / name_of("a")
    refused = subprocess.run([previewer, str(track)], capture_output=True, timeout=60, check=False)
    assert refused.returncode != 0 and os.strerror(errno.EIO).encode() in refused.stderr
    assert devserver.requests("GET", stream_path("a")) == []
    record = mount.track("a")
    assert record["status"] == "pending" and "not downloaded for mdworker_shared" in record["note"]
    assert track.read_bytes() == (server_root / "stream" / "a.wav").read_bytes()  # any other reader: downloaded
    assert mount.wait_track("a", lambda r: r["status"] == "cached")["status"] == "cached"  # stored now
    served = subprocess.run([previewer, str(track)], capture_output=True, timeout=60, check=False)
    assert served.returncode == 0 and served.stdout == (server_root / "stream" / "a.wav").read_bytes()
    assert len(devserver.requests("GET", stream_path("a"))) == 1
