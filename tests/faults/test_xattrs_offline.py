"""Every xattr of ours answers from memory: without a request to the server and without EIO, whatever the
track's state. A track whose size cannot be learned is the hard case: `getfattr` needs the kernel's lookup of
the file to succeed, and a lookup asks for its attributes."""

from __future__ import annotations

import errno
import subprocess

import pytest

from tests.conftest import run, write_session
from tests.faults.helpers import FAST, cloud_track, name_of, stream_path


def xattrs(path) -> dict[str, str]:
    done = run(["getfattr", "--absolute-names", "-d", "-m", "user.mixvfs", str(path)])
    assert done.returncode == 0, done.stderr
    pairs = [line.split("=", 1) for line in done.stdout.splitlines() if line.startswith("user.mixvfs.")]
    return {name.removeprefix("user.mixvfs."): value.strip('"') for name, value in pairs}


def test_the_xattrs_of_a_track_whose_size_cannot_be_learned_answer_without_the_server(
        tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 700_000, seed=1,
                                                              declare_size=False)], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 503, "head": True}})  # HEAD and GET: always 503
    mount = mounter(session, *FAST, "--failed-for", "1h")
    path = mount.path / name_of("t1")
    with pytest.raises(OSError) as caught:
        path.stat()  # the size is asked of the server, which cannot say: EIO, never an empty file
    assert caught.value.errno == errno.EIO
    asked = len(devserver.requests())
    values = xattrs(path)
    assert values["status"] == "failed" and "the size is unknown" in values["error"], values
    done = run(["getfattr", "--only-values", "-n", "user.mixvfs.error", str(path)])
    assert done.returncode == 0 and "503" in done.stdout, done.stderr
    assert len(devserver.requests()) == asked  # answered from memory
    # Copiers still never make an empty stand-in of it: the open fails while the size is unknown.
    for copier in (["cp", str(path), str(tmp_path / "cp.wav")], ["rsync", str(path), str(tmp_path / "r.wav")],
                   ["python3", "-c", f"import shutil; shutil.copyfile({str(path)!r}, {str(tmp_path / 'py.wav')!r})"]):
        done = subprocess.run(copier, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode != 0, copier
    assert not any((tmp_path / name).exists() for name in ("cp.wav", "r.wav", "py.wav"))
    record = mount.track("t1")
    assert record["status"] == "failed" and "size is unknown" in record["reader_error"]


def test_the_xattrs_of_a_failed_and_a_pending_track_answer(tmp_path, server_root, devserver, mounter):
    tracks = [cloud_track(server_root, "gone", 1000, seed=1), cloud_track(server_root, "later", 1000, seed=2),
              {"id": "nowhere", "artist": "Artist", "title": "nowhere"}]
    (server_root / "stream" / "gone.wav").unlink()
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, *FAST)
    assert subprocess.run(["cat", str(mount.path / name_of("gone"))], capture_output=True, check=False).returncode
    asked = len(devserver.requests())
    assert xattrs(mount.path / name_of("gone"))["status"] == "failed"
    assert xattrs(mount.path / name_of("later"))["status"] == "pending"
    assert len(devserver.requests()) == asked
    # A track with no source at all fails stat itself (like a local file that is gone: no empty stand-in), so
    # the kernel's lookup fails before any xattr is asked; the report says why.
    with pytest.raises(OSError) as caught:
        (mount.path / "Artist - nowhere").stat()
    assert caught.value.errno == errno.EIO
    assert mount.track("nowhere")["status"] == "missing"
