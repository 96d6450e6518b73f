"""`cachectl pin`/`unpin` beside a live mount of the same cache: the mount's own evictions (after each download
it commits) spare the pinned blobs, and see an unpin at their next turn; the mount names what it sees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import CACHECTL, run, wait_until, write_session
from tests.faults.helpers import cloud_track, name_of

KiB = 1 << 10


def cachectl(cache: Path, *args: str) -> Any:
    return run([CACHECTL, "--cache-dir", str(cache), "--max-size", "1M", *args])


def ls(cache: Path) -> dict[str, dict[str, Any]]:
    done = cachectl(cache, "ls", "--json")
    assert done.returncode == 0, done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)}


def test_pins_beside_a_live_mount_survive_its_evictions_until_unpinned(tmp_path, server_root, devserver, mounter):
    friday_tracks = [cloud_track(server_root, f"f{i}", 300 * KiB, seed=i) for i in range(2)]
    friday = write_session(tmp_path / "friday.json", friday_tracks, server=devserver.url, name="Friday")
    other_tracks = [cloud_track(server_root, f"o{i}", 300 * KiB, seed=10 + i) for i in range(4)]
    # "Other" lists f0 too: the mount sees that cached source under its own session's name.
    other = write_session(tmp_path / "other.json", [friday_tracks[0], *other_tracks], server=devserver.url,
                          name="Other")
    cache = tmp_path / "cache"
    mount = mounter(other, "--max-size", "1M", "--no-prefetch", cache_dir=cache)
    pinned = cachectl(cache, "pin", str(friday))
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    for track in ("o0", "o1", "o2"):  # 900 KiB more through the mount: its evictions must spare Friday's
        run(["cp", str(mount.path / name_of(track)), str(tmp_path / f"{track}.wav")], check=True)
        rows = ls(cache)
        assert rows[name_of("f0")]["pinned_by"] == ["Friday"] and rows[name_of("f1")]["pinned_by"] == ["Friday"]
    assert (tmp_path / "o2.wav").read_bytes() == (server_root / "stream" / "o2.wav").read_bytes()
    rows = ls(cache)
    assert rows[name_of("o2")]["session"] == "Other"  # named by the mount as it committed the download
    # f0 was cached when the mount started (pin runs after): named at its next sighting, the next mount.
    unpinned = cachectl(cache, "unpin", "Friday")
    assert unpinned.returncode == 0, unpinned.stderr
    run(["cp", str(mount.path / name_of("o3")), str(tmp_path / "o3.wav")], check=True)
    rows = ls(cache)
    assert name_of("o3") in rows
    assert not (name_of("f0") in rows and name_of("f1") in rows), "the unpin was not seen by the mount's eviction"
    assert sum(row["size"] for row in rows.values()) <= 1 << 20
    mount.unmount()
    # A new mount of "Other" sees f0 (pinned again first so it is still there) under "Other".
    assert cachectl(cache, "pin", str(friday)).returncode == 0
    again = mounter(other, "--max-size", "1M", "--no-prefetch", cache_dir=cache)
    # The mount writes the names of what it lists in the background (a large session's must not delay it).
    assert wait_until(lambda: ls(cache)[name_of("f0")]["session"] == "Other", timeout=60)
    rows = ls(cache)
    assert rows[name_of("f1")]["session"] == "Friday"
    assert rows[name_of("f0")]["pinned_by"] == ["Friday"]
    again.unmount()
