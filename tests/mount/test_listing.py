"""`ls -l` of a session: with libfuse 3 the listing hands the kernel each file's attributes (READDIRPLUS), so
the kernel sends no LOOKUP or GETATTR per file (issue 12); the sizes are getattr's, whatever their origin."""

from __future__ import annotations

import contextlib
import errno
import json
from pathlib import Path
from typing import Any

import pytest

from mixvfs.vfs.fs.mount import MountOptions
from tests.conftest import Mount, daemon_libfuse_major, getxattr, run, wait_until, write_session
from tests.faults.helpers import cloud_track, name_of
from tools.make_audio import write_sized

COUNT = 30


def requests(mount_path: Path) -> dict[str, int]:
    return dict(json.loads(getxattr(mount_path, "user.mixvfs.requests")))


def ls_sizes(folder: Path) -> dict[str, int]:
    done = run(["ls", "-l", "--time-style=+%s", str(folder)], check=True)
    sizes = {}
    for line in done.stdout.splitlines()[1:]:  # after "total N"
        fields = line.split(maxsplit=6)
        sizes[fields[6]] = int(fields[4])
    return sizes


def test_ls_l_takes_attributes_from_the_listing(tmp_path, server_root, devserver, mounter):
    tracks: list[dict[str, Any]] = [cloud_track(server_root, f"t{i:02d}", 1000 + 37 * i, seed=i) for i in range(COUNT)]
    tracks.append(cloud_track(server_root, "probed", 4321, seed=99, declare_size=False))  # HEAD at mount
    local = tmp_path / "local.wav"
    write_sized(local, 5555, seed=5)
    tracks.append({"id": "local", "artist": "Artist", "title": "local", "file_path": str(local)})
    expected = {name_of(f"t{i:02d}"): 1000 + 37 * i for i in range(COUNT)}
    expected[name_of("probed")] = 4321
    expected[name_of("local")] = 5555
    mount = mounter(write_session(tmp_path / "s.json", tracks, server=devserver.url), "--no-prefetch")
    libfuse = daemon_libfuse_major(int(getxattr(mount.path, "user.mixvfs.pid")))

    # The kernel keeps what a listing told it for the attribute timeout (1 s): a loaded machine may let it
    # lapse between the listing and `ls`'s stat calls, and the kernel then asks again. Try a few listings.
    for _ in range(5):
        before = requests(mount.path)
        sizes = ls_sizes(mount.path)
        after = requests(mount.path)
        assert sizes == expected  # what getattr answers: the manifest's, the probe's, the local file's
        asked = after["file_getattrs"] - before["file_getattrs"]
        listed = after["listed_with_attributes"] - before["listed_with_attributes"]
        if libfuse != 3 or asked == 0:
            break
    if libfuse == 3:
        assert (asked, listed) == (0, len(expected)), (asked, listed)
    else:  # libfuse 2 has no READDIRPLUS: names only, the kernel looks each file up
        assert listed == 0 and asked >= len(expected), (asked, listed)
    assert {p.name: p.stat().st_size for p in mount.path.iterdir()} == expected


def test_ls_l_asks_no_security_or_acl_question_per_file(tmp_path, server_root, devserver, mounter):
    """`ls -l` asks each file for security.selinux and its POSIX ACL, which the kernel never caches for FUSE:
    2 requests per file. mixvfs supports neither namespace and says so (ENOTSUP, as a Linux file system
    without them does); GNU ls remembers that per file system and asks no more."""
    tracks = [cloud_track(server_root, f"t{i:02d}", 1000 + i, seed=i) for i in range(COUNT)]
    mount = mounter(write_session(tmp_path / "s.json", tracks, server=devserver.url), "--no-prefetch")
    before = requests(mount.path)
    done = run(["ls", "-l", str(mount.path)], check=True)
    asked = requests(mount.path)["foreign_xattrs"] - before["foreign_xattrs"]
    assert asked <= 2, asked  # was 2 per file: 60
    assert done.stderr == ""
    modes = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert modes == ["-rw-r--r--"] * COUNT  # no ACL "+" nor SELinux context "." after the mode

    track = mount.path / name_of("t00")
    for name in ("security.selinux", "system.posix_acl_access", "security.capability"):
        with pytest.raises(OSError) as raised:
            getxattr(track, name)
        assert raised.value.errno == errno.ENOTSUP, name
    with pytest.raises(OSError) as raised:  # the user namespace is supported: a name not there is ENODATA
        getxattr(track, "user.xdg.origin.url")
    assert raised.value.errno == errno.ENODATA
    assert getxattr(track, "user.mixvfs.id") == b"t00"


def reloads_done(mount: Mount) -> int:
    """Live reloads the daemon finished: it logs the line once the new listing is in and the kernel was told."""
    return mount.log().count("manifest changed: now ")


SIZES = {"gone": 1000, "grows": 2000, "stays": 3000}


def test_a_reload_is_seen_by_stat_at_once(tmp_path, server_root, devserver, mounter):
    """A listing lets the kernel cache every name with its size (READDIRPLUS; on libfuse 2 the lookups do):
    once a reload is done, a removed track must not answer `stat`, nor a changed one show its old size."""
    tracks = [cloud_track(server_root, name, size, seed=i) for i, (name, size) in enumerate(SIZES.items())]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    gone, grows = mount.path / name_of("gone"), mount.path / name_of("grows")
    assert ls_sizes(mount.path) == {name_of("gone"): 1000, name_of("grows"): 2000, name_of("stays"): 3000}
    write_session(session, [cloud_track(server_root, "grows", 5000, seed=7), tracks[2]], server=devserver.url)
    # Until the reload is done, keep the kernel's entries fresh (a lookup or listing renews them for 1 s), so
    # that what it answers right after the reload comes from the daemon's notice, not from their expiry.
    def reloaded_keeping_entries_fresh() -> bool:
        if reloads_done(mount):
            return True
        # The reload may land between the check above and these looks (its log line comes after it): then
        # "gone" is gone, and `ls` may list a name it can no longer stat. What counts is asserted below.
        with contextlib.suppress(FileNotFoundError):
            gone.stat()
            grows.stat()
        run(["ls", "-l", str(mount.path)])
        return False

    # The watcher polls every 0.5 s.
    assert wait_until(reloaded_keeping_entries_fresh, 30, interval=0.05), mount.log()
    assert not gone.exists()
    assert grows.stat().st_size == 5000
    assert ls_sizes(mount.path) == {name_of("grows"): 5000, name_of("stays"): 3000}
    assert grows.read_bytes() == (server_root / "stream" / "grows.wav").read_bytes()


def test_libfuse_threads_keep_their_python_state(tmp_path, server_root, devserver, mounter):
    """Each request reaches Python on one of libfuse's threads; ctypes made and destroyed a Python thread state
    for every one (an mmap and munmap of its frame stack each: ``ls -l`` sends two xattr questions per file).
    A thread's state is kept from its first callback on, so every later callback finds it."""
    tracks = [cloud_track(server_root, f"t{i:02d}", 1000 + i, seed=i) for i in range(3)]
    mount = mounter(write_session(tmp_path / "s.json", tracks, server=devserver.url), "--no-prefetch")
    before = requests(mount.path)
    questions = 60
    for _ in range(questions):  # the kernel caches no xattr: each is a request on some libfuse thread
        getxattr(mount.path, "user.mixvfs.pid")
    after = requests(mount.path)
    kept = after["thread_states_kept"]
    assert 1 <= kept <= 2 * MountOptions.threads  # run()'s limit: twice the idle threads libfuse keeps
    # Only a thread's first callback keeps its state (the requests() questions are callbacks too).
    reused = after["callbacks_on_kept_states"] - before["callbacks_on_kept_states"]
    assert reused >= questions - kept, (reused, kept)
