"""Through a real mount: a slow but steady link is waited for (readers of the tail and of the start alike),
and a cache database that refuses a commit fails that one track — the download workers go on."""

from __future__ import annotations

import filecmp
import subprocess

from tests.conftest import MIXVFS, database_refusing_writes, run, write_session
from tests.faults.helpers import FAST, cachectl, cloud_track, name_of, stream_path

KiB, MiB = 1 << 10, 1 << 20


def test_a_slow_steady_download_serves_a_tail_reader_and_a_copier(tmp_path, server_root, devserver, mounter):
    size = 2 * MiB  # about 8 s at 256 KiB/s, far past the 3 s stall timeout: only progress keeps it going
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "slow", size, seed=1)],
                            server=devserver.url)
    devserver.set_faults({stream_path("slow"): {"rate": 256 * KiB}})
    mount = mounter(session, *FAST)
    path = mount.path / name_of("slow")
    expected = (server_root / "stream" / "slow.wav").read_bytes()
    with open(path, "rb", buffering=0) as tail_first:  # a DAW reading the end of the file first
        tail_first.seek(size - 64 * KiB)
        copier = subprocess.Popen(["cp", str(path), str(tmp_path / "copy.wav")])
        assert tail_first.read(64 * KiB) == expected[-64 * KiB:]
        assert copier.wait(timeout=120) == 0
    assert filecmp.cmp(tmp_path / "copy.wav", server_root / "stream" / "slow.wav", shallow=False)
    record = mount.track("slow")
    assert record["status"] in ("fetching", "cached") and record["error"] is None


def test_a_cache_database_refusing_a_commit_fails_no_copy_read_whole_and_the_worker_goes_on(
        tmp_path, server_root, devserver, mounter):
    entries = [cloud_track(server_root, name, 300_000, seed=n) for n, name in enumerate(("a", "b", "c"))]
    session = write_session(tmp_path / "s.json", entries, server=devserver.url)
    mount = mounter(session, *FAST, "--jobs", "1")
    run(["cp", str(mount.path / name_of("a")), str(tmp_path / "a.wav")], check=True)
    # `cp` may end before the commit does (its bytes were all there): only a's cached line says it is stored.
    assert mount.wait_track("a", lambda r: r["status"] == "cached")["status"] == "cached", mount.diagnosis()
    with database_refusing_writes(mount.cache_dir / "blobs"):  # the commit fails after the blob file was renamed in
        done = run(["cp", str(mount.path / name_of("b")), str(tmp_path / "b.wav")])
        # The reader reads the verified staging file to its end whatever the commit met: a whole copy.
        assert done.returncode == 0, f"cp exited {done.returncode}: {done.stderr}\n{mount.diagnosis()}"
        assert filecmp.cmp(tmp_path / "b.wav", server_root / "stream" / "b.wav", shallow=False)
        # So the track was had: not failed (status would exit 1 for a whole copy), pending with the cause. The
        # report is rewritten in batches; a loaded machine may take seconds to get there.
        record = mount.wait_track("b", lambda r: r["note"] is not None, timeout=60)
        assert record["status"] == "pending" and record["error"] is None and "cache" in record["note"], \
            f"{record}\n{mount.diagnosis()}"
        status = run([MIXVFS, "status", str(mount.path)])
        assert status.returncode == 0, f"{status.stdout}\n{mount.diagnosis()}"
    # The only worker survived: the next track downloads (a dead worker would leave this cp waiting forever).
    done = run(["cp", str(mount.path / name_of("c")), str(tmp_path / "c.wav")], timeout=30)
    assert done.returncode == 0, f"cp exited {done.returncode}: {done.stderr}\n{mount.diagnosis()}"
    assert filecmp.cmp(tmp_path / "c.wav", server_root / "stream" / "c.wav", shallow=False)
    assert cachectl(mount.cache_dir, "verify").returncode == 0


def test_cached_tracks_copy_whole_while_the_cache_database_refuses_writes(tmp_path, server_root, devserver, mounter):
    """An open records the blob's use, a write: a database that refuses it must not fail a copy of whole,
    verified bytes. They are served; the report's note and one log line say the use was not recorded."""
    entries = [cloud_track(server_root, name, 300_000, seed=n) for n, name in enumerate(("a", "b"))]
    session = write_session(tmp_path / "s.json", entries, server=devserver.url)
    first = mounter(session, *FAST)
    for name in ("a", "b"):
        run(["cp", str(first.path / name_of(name)), str(tmp_path / f"{name}.first")], check=True)
        first.wait_track(name, lambda r: r["status"] == "cached")
    first.unmount()
    mount = mounter(session, *FAST)
    with database_refusing_writes(mount.cache_dir / "blobs"):
        for name in ("a", "b"):
            done = run(["cp", str(mount.path / name_of(name)), str(tmp_path / f"{name}.wav")])
            assert done.returncode == 0, f"{done.stderr}\n{mount.diagnosis()}"
            assert filecmp.cmp(tmp_path / f"{name}.wav", server_root / "stream" / f"{name}.wav", shallow=False)
            record = mount.wait_track(name, lambda r: r["note"] is not None)
            assert record["status"] == "cached" and record["reader_error"] is None, record
            assert record["note"].startswith("served from cache; its use was not recorded: the cache database "
                                             "refused the write"), record
    assert mount.log().count("their use cannot be recorded") == 1, mount.log()


def test_a_mount_whose_threads_met_a_refusing_cache_database_writes_again_once_it_takes_writes(
        tmp_path, server_root, devserver, mounter):
    """SQLite opens a database it may not write read-only for the connection's life, and the mount keeps a
    connection per thread: a download worker whose first access came while the database was immutable kept
    refusing every download after `chattr -i`. It connects anew after a refusal: the next download is cached,
    and `mixvfs status` no longer says uses are not recorded."""
    entries = [cloud_track(server_root, name, 300_000, seed=n) for n, name in enumerate(("a", "b", "c"))]
    session = write_session(tmp_path / "s.json", entries, server=devserver.url)
    first = mounter(session, *FAST)
    run(["cp", str(first.path / name_of("a")), str(tmp_path / "a.first")], check=True)
    first.wait_track("a", lambda r: r["status"] == "cached")
    first.unmount()
    mount = mounter(session, *FAST, "--jobs", "1")  # one download worker, started by the first download
    with database_refusing_writes(mount.cache_dir / "blobs"):
        run(["cp", str(mount.path / name_of("a")), str(tmp_path / "a.wav")], check=True)
        assert mount.wait_track("a", lambda r: r["note"] is not None)["note"].startswith("served from cache")
        run(["cp", str(mount.path / name_of("b")), str(tmp_path / "b.wav")], check=True)
        assert mount.wait_track("b", lambda r: r["note"] is not None)["status"] == "pending"
    done = run(["cp", str(mount.path / name_of("c")), str(tmp_path / "c.wav")])
    assert done.returncode == 0, f"{done.stderr}\n{mount.diagnosis()}"
    assert filecmp.cmp(tmp_path / "c.wav", server_root / "stream" / "c.wav", shallow=False)
    record = mount.wait_track("c", lambda r: r["status"] == "cached" or r["note"] is not None, timeout=60)
    assert record["status"] == "cached" and record["note"] is None, f"{record}\n{mount.diagnosis()}"
    status = run([MIXVFS, "status", str(mount.path)])
    assert status.returncode == 0 and "cache:" not in status.stdout, f"{status.stdout}\n{mount.diagnosis()}"
