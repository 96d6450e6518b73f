"""An export onto exFAT, the file system of a DJ's USB stick, through a real exFAT image (a loop device and
exfat-fuse) with real `cp -r`: every track, whatever characters its title holds, lands under the name the mount
shows, and `mixvfs check-export` finds them all."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MIXVFS, missing_part, run, write_session
from tests.faults.helpers import cloud_track

TITLES = ['Why? "A" <B>', "a:b", "Pipe|Dream", "Star*", "Back\\slash", "trailing.", "Why？", "HOOK", "hook"]


@pytest.fixture
def exfat_stick(tmp_path: Path) -> Iterator[Path]:
    tools = [shutil.which(t) for t in ("losetup", "mkfs.exfat", "mount.exfat-fuse")]
    if not all(tools) or os.geteuid() != 0:
        missing_part("an exFAT image cannot be mounted here (needs root, losetup, exfatprogs and exfat-fuse: "
                     "tools/install_system.sh)", "CI must export onto exFAT")
    image, stick = tmp_path / "stick.img", tmp_path / "stick"
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    run(["mkfs.exfat", str(image)], check=True)
    loop = run(["losetup", "-f", "--show", str(image)])
    if loop.returncode != 0:
        missing_part(f"no loop device for the exFAT image: {loop.stderr.strip()}", "CI must export onto exFAT")
    device = loop.stdout.strip()
    stick.mkdir()
    try:
        run(["mount.exfat-fuse", device, str(stick)], check=True)
        try:
            yield stick
        finally:
            run(["fusermount", "-u", str(stick)])
    finally:
        with contextlib.suppress(Exception):
            run(["losetup", "-d", device])


def test_cp_r_onto_exfat_takes_every_track_whatever_its_title(tmp_path, server_root, devserver, mounter,
                                                               exfat_stick):
    tracks = []
    for i, title in enumerate(TITLES):
        entry = cloud_track(server_root, f"t{i}", 20_000 + i, seed=i)
        entry.update(title=title, artist='DJ "Q"')
        tracks.append(entry)
    local = tmp_path / "local.wav"
    local.write_bytes(b"RIFF" + bytes(3000))
    tracks.append({"id": "loc", "artist": "Nina:", "title": "Intro?", "file_path": str(local)})
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    shown = sorted(os.listdir(mount.path))
    assert len(shown) == len(tracks)
    copied = run(["cp", "-r", f"{mount.path}/.", str(exfat_stick)])
    assert copied.returncode == 0, copied.stderr
    assert sorted(os.listdir(exfat_stick)) == shown
    checked = run([MIXVFS, "check-export", str(session), str(exfat_stick), "--cache-dir", str(mount.cache_dir)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
