"""The world changing under the mount: local files re-rendered or replaced while mounted (and while being
read), cloud tracks re-rendered on the server, through a real mount with real `cp`, `rsync` and
`shutil.copyfile`. Every copy is one version whole — or an I/O error with a report line — never old and
new bytes mixed, never cut at a stale size."""

from __future__ import annotations

import errno
import filecmp
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run, wait_until, write_session
from tests.faults.helpers import FAST, cloud_track, name_of, stream_path
from tools.make_audio import write_sized

MiB = 1 << 20


def local_session(tmp_path: Path, source: Path) -> Path:
    return write_session(tmp_path / "s.json", [
        {"id": "loc", "artist": "Local", "title": "Render", "file_path": str(source)},
    ])


def mounted_render(tmp_path: Path, mounter: Any, size: int) -> tuple[Path, Any, Path]:
    """A local track of ``size`` bytes (seed 1) in a mounted session: its source, the mount, its file there."""
    source = tmp_path / "render.wav"
    write_sized(source, size, kind="wav", seed=1)
    mount = mounter(local_session(tmp_path, source))
    return source, mount, mount.path / "Local - Render.wav"


def replace_by_rename(path: Path, size: int, seed: int) -> None:
    """What a renderer that writes a temp file and renames it over the old one does."""
    tmp = path.with_name(path.name + ".new")
    write_sized(tmp, size, kind="wav", seed=seed)
    os.replace(tmp, path)


def overwrite_in_place(path: Path, size: int, seed: int) -> None:
    """What `cp new old` (or a renderer reopening with O_TRUNC) does: same inode, new bytes."""
    tmp = path.with_name(path.name + ".bytes")
    write_sized(tmp, size, kind="wav", seed=seed)
    with open(path, "r+b") as out:
        out.truncate(0)
        out.write(tmp.read_bytes())


def copy_all_ways(src: Path, dest: Path) -> dict[str, Path]:
    """The copiers a user's exporter may be: `cp`, `rsync` (size-driven), `rsync --inplace`, shutil.copyfile."""
    dest.mkdir(exist_ok=True)
    copies = {name: dest / name for name in ("cp", "rsync", "inplace", "shutil")}
    run(["cp", str(src), str(copies["cp"])], check=True)
    run(["rsync", str(src), str(copies["rsync"])], check=True)
    run(["rsync", "--inplace", str(src), str(copies["inplace"])], check=True)
    shutil.copyfile(src, copies["shutil"])
    return copies


def assert_same(copies: dict[str, Path], expected: Path) -> None:
    for name, copy in copies.items():
        assert filecmp.cmp(copy, expected, shallow=False), f"{name} copied other bytes than {expected}"


def settle_without_invalidation(path: Path, source: Path) -> None:
    """libfuse 2 (the API macFUSE offers) cannot tell the kernel to drop a file's cached size: there, copiers
    that trust the size (`rsync`, `sendfile` in shutil.copyfile) are right only once the attribute timeout
    (1 s) has passed — the README's known limit. With libfuse 3 the open itself makes the kernel ask again."""
    from mixvfs.vfs.adapter.fuse_ops import LIBFUSE_MAJOR  # the libfuse this lane loads (FUSE_LIBRARY_NAME)

    if LIBFUSE_MAJOR < 3:
        assert wait_until(lambda: path.stat().st_size == source.stat().st_size)


# -- local tracks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [replace_by_rename, overwrite_in_place])
@pytest.mark.parametrize(("old", "new"), [(MiB, 3 * MiB + 123), (3 * MiB, MiB + 7)], ids=["grew", "shrank"])
def test_a_re_rendered_local_file_copies_whole_never_cut_padded_or_mixed(tmp_path, mounter, change, old, new):
    source, _mount, path = mounted_render(tmp_path, mounter, old)
    run(["cp", str(path), str(tmp_path / "before.wav")], check=True)  # the kernel now holds its pages and size
    change(source, new, seed=2)
    # At once, before any attribute cache expired: the open sees another version and reads it to its end.
    run(["cp", str(path), str(tmp_path / "after.wav")], check=True)
    assert filecmp.cmp(tmp_path / "after.wav", source, shallow=False)
    # stat follows the file within the attribute timeout; then the size-driven copiers get it whole too.
    assert wait_until(lambda: path.stat().st_size == source.stat().st_size)
    assert_same(copy_all_ways(path, tmp_path / "copies"), source)


def test_a_same_size_replacement_after_a_partial_read_is_never_mixed(tmp_path, mounter):
    source, _mount, path = mounted_render(tmp_path, mounter, 6 * MiB)
    with open(path, "rb") as peek:  # a DAW reads the header and a bit more: those pages stay in the kernel
        peek.read(2 * MiB)
    replace_by_rename(source, 6 * MiB, seed=3)
    assert_same(copy_all_ways(path, tmp_path / "copies"), source)


def read_while(path: Path, change: Callable[[], None], *, size: int) -> bytes | OSError:
    """Read ``path`` 1 MiB at a time, calling ``change`` after the first 2 MiB; the bytes, or the error."""
    got = bytearray()
    try:
        with open(path, "rb", buffering=0) as reader:
            while chunk := reader.read(MiB):
                got += chunk
                if len(got) == 2 * MiB:
                    change()
    except OSError as exc:
        return exc
    return bytes(got)


def test_a_copy_in_progress_when_the_file_is_replaced_gets_one_version_whole(tmp_path, mounter):
    source, _mount, path = mounted_render(tmp_path, mounter, 8 * MiB)
    old = source.read_bytes()
    # Replaced by a shorter file while being read: the reader keeps reading the version it opened, whole
    # (a stat in between must not cut it off at the new size).
    def replace_and_stat() -> None:
        replace_by_rename(source, 3 * MiB, seed=4)
        path.stat()

    result = read_while(path, replace_and_stat, size=8 * MiB)
    assert result == old


def test_a_copy_in_progress_when_the_file_is_rewritten_in_place_gets_eio_or_one_version(tmp_path, mounter):
    source, mount, path = mounted_render(tmp_path, mounter, 16 * MiB)
    old = source.read_bytes()
    result = read_while(path, lambda: overwrite_in_place(source, 16 * MiB, seed=5), size=16 * MiB)
    if isinstance(result, OSError):
        assert result.errno == errno.EIO
        record = mount.track("loc")
        assert "changed while it was being read" in (record["error"] or "")
    else:  # only possible if every byte was already in the kernel's cache before the rewrite
        assert result == old


def test_stat_follows_a_local_file_while_mounted(tmp_path, mounter):
    source, _mount, path = mounted_render(tmp_path, mounter, 1 * MiB)
    assert path.stat().st_size == MiB
    replace_by_rename(source, 2 * MiB, seed=2)
    os.utime(source, (1_700_000_000, 1_700_000_000))
    assert wait_until(lambda: path.stat().st_size == 2 * MiB and int(path.stat().st_mtime) == 1_700_000_000)


# -- cloud tracks ---------------------------------------------------------------------------------------


def test_a_peeked_cloud_track_re_rendered_on_the_server_is_never_mixed(tmp_path, server_root, devserver, mounter):
    size = 8 * MiB
    entry = cloud_track(server_root, "t1", size, seed=1)  # the manifest gives the size: no HEAD at mount
    session = write_session(tmp_path / "s.json", [entry], server=devserver.url)
    # The first download is slow, so the peek below ends (and cancels it) long before it finishes.
    devserver.set_faults({stream_path("t1"): {"rate": 2 * MiB, "times": 1}})
    mount = mounter(session, *FAST)
    path = mount.path / name_of("t1")
    with open(path, "rb") as peek:
        assert len(peek.read(2 * MiB)) == 2 * MiB
    # The reader went away: the download is cancelled (back to pending), its first 2 MiB stay in the kernel.
    assert mount.wait_track("t1", lambda r: r["status"] == "pending")["status"] == "pending"
    replace_by_rename(server_root / "stream" / "t1.wav", size, seed=2)  # re-rendered on the server, same size
    assert_same(copy_all_ways(path, tmp_path / "copies"), server_root / "stream" / "t1.wav")


def test_a_cached_track_re_rendered_on_the_server_is_revalidated_at_its_first_open(
        tmp_path, server_root, devserver, mounter):
    size = 3 * MiB
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", size, seed=1)],
                            server=devserver.url)
    first = mounter(session, *FAST)
    run(["cp", str(first.path / name_of("t1")), str(tmp_path / "old.wav")], check=True)
    old_mtime = (first.path / name_of("t1")).stat().st_mtime
    first.unmount()
    write_sized(server_root / "stream" / "t1.wav", size, kind="wav", seed=2)  # same size: same identity
    before = len(devserver.requests())
    second = mounter(session, *FAST, cache_dir=first.cache_dir)
    path = second.path / name_of("t1")
    assert_same(copy_all_ways(path, tmp_path / "copies"), server_root / "stream" / "t1.wav")
    # Tools that compare mtimes (rsync) see a new version (once the kernel's 1 s attribute cache expires).
    assert wait_until(lambda: path.stat().st_mtime != old_mtime)
    asked = [r["method"] for r in devserver.requests()[before:]]
    assert asked == ["HEAD", "GET"]  # one revalidation, one download of the new version
    record = second.wait_track("t1", lambda r: bool(r.get("note")))  # the report is written in batches
    assert "changed since it was cached" in record["note"]


def cached_by_a_first_mount(tmp_path: Path, server_root: Path, devserver: Any,
                            mounter: Any) -> tuple[Path, Any]:
    """A 1 MiB cloud track copied once through a mount that is then unmounted: it is in the cache."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", MiB, seed=1)],
                            server=devserver.url)
    first = mounter(session, *FAST)
    run(["cp", str(first.path / name_of("t1")), str(tmp_path / "one.wav")], check=True)
    first.unmount()
    return session, first


def test_an_unchanged_cached_track_costs_one_conditional_request_and_no_get(
        tmp_path, server_root, devserver, mounter):
    session, first = cached_by_a_first_mount(tmp_path, server_root, devserver, mounter)
    before = len(devserver.requests())
    second = mounter(session, *FAST, cache_dir=first.cache_dir)
    run(["ls", "-l", str(second.path)], check=True)  # listing never revalidates
    assert len(devserver.requests()) == before
    for n in range(3):  # one check per track per mount, not one per open
        run(["cp", str(second.path / name_of("t1")), str(tmp_path / f"two{n}.wav")], check=True)
    after = devserver.requests()[before:]
    assert [r["method"] for r in after] == ["HEAD"]
    assert filecmp.cmp(tmp_path / "two2.wav", server_root / "stream" / "t1.wav", shallow=False)


def test_a_track_prefetched_in_this_mount_is_opened_without_a_revalidation(
        tmp_path, server_root, devserver, mounter):
    """The download itself was the server's answer: its open must not ask again (a HEAD per track was the
    largest per-track cost of a cold export of many short tracks)."""
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", MiB, seed=1)],
                            server=devserver.url)  # the size is in the manifest: nothing asked at mount
    mount = mounter(session, "--retries", "3", "--retry-wait", "0.01s")  # prefetch on
    mount.wait_track("t1", lambda r: r["status"] == "cached")
    run(["cp", str(mount.path / name_of("t1")), str(tmp_path / "one.wav")], check=True)
    assert [r["method"] for r in devserver.requests()] == ["GET"]
    assert filecmp.cmp(tmp_path / "one.wav", server_root / "stream" / "t1.wav", shallow=False)


def test_with_prefetch_a_cached_track_is_revalidated_ahead_of_its_open(tmp_path, server_root, devserver, mounter):
    """The look-ahead makes the first open's conditional request before the exporter opens the track (a HEAD
    per track on the exporter's serial path was most of a warm export of short tracks); the open asks nothing."""
    session, first = cached_by_a_first_mount(tmp_path, server_root, devserver, mounter)
    before = len(devserver.requests())
    second = mounter(session, "--retries", "3", "--retry-wait", "0.01s", cache_dir=first.cache_dir)  # prefetch on
    assert wait_until(lambda: [r["method"] for r in devserver.requests()[before:]] == ["HEAD"])  # no open yet
    run(["cp", str(second.path / name_of("t1")), str(tmp_path / "two.wav")], check=True)
    assert [r["method"] for r in devserver.requests()[before:]] == ["HEAD"]
    assert filecmp.cmp(tmp_path / "two.wav", server_root / "stream" / "t1.wav", shallow=False)


def test_with_prefetch_a_cached_track_re_rendered_on_the_server_is_copied_new(tmp_path, server_root, devserver,
                                                                              mounter):
    session, first = cached_by_a_first_mount(tmp_path, server_root, devserver, mounter)
    write_sized(server_root / "stream" / "t1.wav", MiB, kind="wav", seed=2)  # same size: same identity
    before = len(devserver.requests())
    second = mounter(session, "--retries", "3", "--retry-wait", "0.01s", cache_dir=first.cache_dir)  # prefetch on
    assert_same(copy_all_ways(second.path / name_of("t1"), tmp_path / "copies"), server_root / "stream" / "t1.wav")
    assert [r["method"] for r in devserver.requests()[before:]] == ["HEAD", "GET"]
    record = second.wait_track("t1", lambda r: bool(r.get("note")))
    assert "changed since it was cached" in record["note"]


def test_a_cached_track_is_served_when_the_server_is_down_and_the_report_says_so(
        tmp_path, server_root, devserver, mounter):
    session, first = cached_by_a_first_mount(tmp_path, server_root, devserver, mounter)
    devserver.stop()
    second = mounter(session, *FAST, cache_dir=first.cache_dir)
    run(["cp", str(second.path / name_of("t1")), str(tmp_path / "two.wav")], check=True)
    assert filecmp.cmp(tmp_path / "two.wav", server_root / "stream" / "t1.wav", shallow=False)
    record = second.wait_track("t1", lambda r: bool(r.get("note")))
    assert record["status"] == "cached"
    assert "served from cache, not revalidated" in record["note"]


# -- unknown sizes ---------------------------------------------------------------------------------------


def test_a_size_probe_that_failed_at_mount_is_retried_at_lookup(tmp_path, server_root, devserver, mounter):
    entry = cloud_track(server_root, "t1", 700_000, seed=1, declare_size=False)
    session = write_session(tmp_path / "s.json", [entry], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 503, "head": True, "times": 1}})  # a blip at mount
    mount = mounter(session, *FAST)
    path = mount.path / name_of("t1")
    assert path.stat().st_size == 700_000
    assert_same(copy_all_ways(path, tmp_path / "copies"), server_root / "stream" / "t1.wav")


def test_a_size_that_cannot_be_learned_is_an_error_not_an_empty_file(tmp_path, server_root, devserver, mounter):
    entry = cloud_track(server_root, "t1", 700_000, seed=1, declare_size=False)
    session = write_session(tmp_path / "s.json", [entry], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 503, "head": True}})  # HEAD and GET: always 503
    mount = mounter(session, *FAST)
    path = mount.path / name_of("t1")
    with pytest.raises(OSError) as caught:
        path.stat()
    assert caught.value.errno == errno.EIO
    done = run(["rsync", str(path), str(tmp_path / "r.wav")])
    assert done.returncode != 0
    assert not (tmp_path / "r.wav").exists()
    record = mount.track("t1")
    assert record["status"] == "failed" and "size is unknown" in record["error"]


def test_a_size_probe_that_failed_at_mount_is_retried_in_the_background(tmp_path, server_root, devserver, mounter):
    entry = cloud_track(server_root, "t1", 700_000, seed=1, declare_size=False)
    session = write_session(tmp_path / "s.json", [entry], server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 503, "head": True, "times": 1}})
    mount = mounter(session, *FAST)
    assert wait_until(lambda: len(devserver.requests("HEAD", stream_path("t1"))) >= 2)
    asked = len(devserver.requests())
    assert (mount.path / name_of("t1")).stat().st_size == 700_000
    assert len(devserver.requests()) == asked  # known already: the lookup did not have to ask


@pytest.mark.parametrize("new_size", [3 * MiB + 5, MiB - 3])
def test_a_re_render_then_a_peek_then_a_copy_all_within_the_attribute_timeout(tmp_path, mounter, new_size):
    """Found by trying it: version A read, the file re-rendered (bigger or smaller), something peeks at it
    (a thumbnailer, `file`), then the export copies it — all inside the kernel's 1 s attribute cache."""
    source, _mount, path = mounted_render(tmp_path, mounter, 2 * MiB)
    assert len(path.read_bytes()) == 2 * MiB  # the kernel holds version A's size and pages
    replace_by_rename(source, new_size, seed=2)
    with open(path, "rb") as peek:
        peek.read(4096)
    settle_without_invalidation(path, source)
    assert_same(copy_all_ways(path, tmp_path / "copies"), source)


@pytest.mark.parametrize("new_size", [3 * MiB + 5, MiB - 3])
def test_shutil_copyfile_right_after_a_re_render_gets_the_new_file(tmp_path, mounter, new_size):
    """shutil.copyfile uses sendfile, which stops at the size the kernel holds: the open must make the
    kernel ask again, or the copy is cut (bigger file) or padded with zeros (smaller file)."""
    source, _mount, path = mounted_render(tmp_path, mounter, 2 * MiB)
    assert len(path.read_bytes()) == 2 * MiB
    replace_by_rename(source, new_size, seed=2)
    settle_without_invalidation(path, source)
    shutil.copyfile(path, tmp_path / "copy.wav")
    assert filecmp.cmp(tmp_path / "copy.wav", source, shallow=False)


def test_a_cached_track_whose_server_copy_became_empty_is_eio_with_its_report_line_never_the_old_bytes(
        tmp_path, server_root, devserver, mounter):
    """The server's file emptied (its HEAD: 200, a new ETag, Content-Length 0; a one-byte GET refused with 416):
    the cached version is no longer the server's. It was served as if nothing had happened, with a note that it
    was not revalidated (or none at all)."""
    session, first = cached_by_a_first_mount(tmp_path, server_root, devserver, mounter)
    (server_root / "stream" / "t1.wav").write_bytes(b"")
    second = mounter(session, *FAST, cache_dir=first.cache_dir)
    done = run(["cp", str(second.path / name_of("t1")), str(tmp_path / "two.wav")])
    assert done.returncode != 0 and "Input/output error" in done.stderr
    record = second.wait_track("t1", lambda r: r["status"] == "failed")
    assert "0 bytes" in record["error"], record  # "the server sends 0 bytes where 1048576 were advertised"
