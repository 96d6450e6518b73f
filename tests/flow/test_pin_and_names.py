"""`cachectl pin`/`unpin` and the track names the cache commands speak in, through the real CLI against the real
dev server (and, beside a live mount, through a real mount with real `cp`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mixvfs.cache.digest import hash_fd
from tests.conftest import CACHECTL, run, write_session
from tests.faults.helpers import cloud_track, name_of

KiB = 1 << 10


def cachectl(cache: Path, *args: str) -> Any:
    return run([CACHECTL, "--cache-dir", str(cache), *args])


def ls(cache: Path) -> list[dict[str, Any]]:
    done = cachectl(cache, "ls", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def sessions(tmp_path: Path, server_root: Path, url: str) -> tuple[Path, Path]:
    """"Friday" (two tracks, 600 KiB) and "Other" (three tracks, 900 KiB)."""
    friday = write_session(tmp_path / "friday.json", [cloud_track(server_root, f"f{i}", 300 * KiB, seed=i)
                                                      for i in range(2)], server=url, name="Friday")
    other = write_session(tmp_path / "other.json", [cloud_track(server_root, f"o{i}", 300 * KiB, seed=10 + i)
                                                    for i in range(3)], server=url, name="Other")
    return friday, other


def test_pinned_tracks_survive_eviction_and_prune_until_unpinned(tmp_path, server_root, devserver):
    friday, other = sessions(tmp_path, server_root, devserver.url)
    cache = tmp_path / "cache"
    done = cachectl(cache, "--max-size", "1M", "pin", str(friday))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("pinned 'Friday': 2 of 2 cloud track(s) held, 600.0 KiB")
    # Another session's downloads overflow the 1 MiB limit: eviction takes the unpinned ones only.
    assert cachectl(cache, "--max-size", "1M", "warm", str(other)).returncode == 0
    rows = ls(cache)
    pinned = sorted(r["name"] for r in rows if r["pinned_by"] == ["Friday"])
    assert pinned == [name_of("f0"), name_of("f1")]
    assert sum(r["size"] for r in rows) <= 1 << 20
    # prune to nothing: the pinned blobs stay, and it says so.
    pruned = cachectl(cache, "--max-size", "0", "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "kept 2 pinned blob(s), 600.0 KiB, whatever the limits" in pruned.stdout
    assert "warning: pinned sessions alone hold 600.0 KiB, over the size limit (0 B)" in pruned.stdout
    assert sorted(r["name"] for r in ls(cache)) == [name_of("f0"), name_of("f1")]
    # stats shows them apart, and warns when pins alone exceed the limit.
    stats = json.loads(cachectl(cache, "--max-size", "500K", "stats", "--json").stdout)
    assert stats["pinned"]["blobs"] == 2 and stats["pinned"]["bytes"] == 600 * KiB
    assert stats["unpinned"] == {"blobs": 0, "bytes": 0}
    assert stats["pinned"]["sessions"] == [{"session": "Friday", "manifest": str(friday.resolve()), "tracks": 2,
                                            "blobs": 2, "bytes": 600 * KiB}]
    assert stats["pins_exceed_limit"] is True
    text = cachectl(cache, "--max-size", "500K", "stats").stdout
    assert "pinned:   2 blob(s), 600.0 KiB, kept whatever the limits" in text
    assert "warning: pinned sessions alone hold 600.0 KiB, over the size limit (500.0 KiB)" in text
    listing = cachectl(cache, "ls").stdout.splitlines()
    assert listing[0].split()[:4] == ["NAME", "(SESSION)", "SIZE", "LAST"]
    assert listing[1].startswith(f"{name_of('f0')} (Friday)") or listing[1].startswith(f"{name_of('f1')} (Friday)")
    assert all(" Friday " in line for line in listing[1:])
    # unpin by the session's name: the blobs are ordinary again, and the next prune takes them.
    released = cachectl(cache, "unpin", "Friday")
    assert released.returncode == 0, released.stderr
    assert released.stdout.startswith("unpinned 'Friday'")
    again = cachectl(cache, "unpin", str(friday))
    assert again.returncode == 2 and "'Friday'" not in again.stdout
    assert "is not pinned; pinned sessions: none" in again.stderr
    assert "freed 2 blob(s)" in cachectl(cache, "--max-size", "0", "prune").stdout
    assert ls(cache) == []


def test_pin_downloads_only_what_is_missing_and_counts_a_failure(tmp_path, server_root, devserver):
    friday, _ = sessions(tmp_path, server_root, devserver.url)
    cache = tmp_path / "cache"
    assert cachectl(cache, "warm", str(friday)).returncode == 0
    gets = len(devserver.requests("GET"))
    devserver.set_faults({"/stream/f1.wav": {"status": 404}})  # cached already: pin asks nothing of it
    done = cachectl(cache, "pin", str(friday))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == "Friday: 2 tracks; 2 cached, 0 local, 0 to download (0 B)"
    assert len(devserver.requests("GET")) == gets
    # A track of the pinned session that is not in the cache and cannot be had: exit 1, and the pin says so.
    assert cachectl(cache, "unpin", "Friday").returncode == 0
    assert "freed 2 blob(s)" in cachectl(cache, "--max-size", "0", "prune").stdout
    failed = cachectl(cache, "pin", str(friday))
    assert failed.returncode == 1
    assert failed.stdout.splitlines()[-1].startswith("pinned 'Friday': 1 of 2 cloud track(s) held, 300.0 KiB")


def test_the_cache_commands_name_blobs_by_track_and_session_first(tmp_path, server_root, devserver):
    friday, _ = sessions(tmp_path, server_root, devserver.url)
    cache = tmp_path / "cache"
    assert cachectl(cache, "warm", str(friday)).returncode == 0
    rows = ls(cache)
    assert sorted((r["name"], r["session"]) for r in rows) == [(name_of("f0"), "Friday"), (name_of("f1"), "Friday")]
    # The same source seen under another session (a later warm, a mount): the last one is shown.
    renamed = write_session(tmp_path / "renamed.json", json.loads(friday.read_text())["tracks"],
                            server=devserver.url, name="Saturday")
    assert cachectl(cache, "warm", str(renamed)).returncode == 0
    assert {r["session"] for r in ls(cache)} == {"Saturday"}
    dry = cachectl(cache, "--max-size", "0", "prune", "--dry-run").stdout.splitlines()
    assert sorted(line.split("  ")[0] for line in dry[:2]) == [f"{name_of('f0')} (Saturday)",
                                                               f"{name_of('f1')} (Saturday)"]
    # verify names the damaged track before its digest.
    row = next(r for r in ls(cache) if r["name"] == name_of("f0"))
    blob = next(p for p in (cache / "blobs").rglob("*.val") if digest_of(p) == row["digest"])
    blob.write_bytes(b"x" * row["size"])
    verify = cachectl(cache, "verify")
    assert verify.returncode == 1
    assert verify.stdout.splitlines()[0] == (f"corrupt, removed: {name_of('f0')} (Saturday) (300.0 KiB) "
                                             f"{row['digest']}")


def digest_of(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return hash_fd(fd, size=path.stat().st_size)
    finally:
        os.close(fd)


def test_unpin_by_a_name_two_pins_share_asks_for_the_manifest(tmp_path, server_root, devserver):
    friday, _ = sessions(tmp_path, server_root, devserver.url)
    copy = tmp_path / "copy"
    copy.mkdir()
    twin = copy / "friday.json"
    twin.write_text(friday.read_text())  # another manifest, the same session name
    cache = tmp_path / "cache"
    for manifest in (friday, twin):
        assert cachectl(cache, "pin", str(manifest)).returncode == 0
    ambiguous = cachectl(cache, "unpin", "Friday")
    assert ambiguous.returncode == 2
    assert ambiguous.stderr == (f"cachectl: 2 pinned sessions are named 'Friday': name one by its manifest: "
                                f"{twin.resolve()}, {friday.resolve()}\n")
    assert cachectl(cache, "unpin", str(twin)).returncode == 0
    stats = json.loads(cachectl(cache, "stats", "--json").stdout)
    assert [p["manifest"] for p in stats["pinned"]["sessions"]] == [str(friday.resolve())]
    assert stats["pinned"]["blobs"] == 2


def test_a_pin_larger_than_the_size_limit_keeps_every_track_it_downloads(tmp_path, server_root, devserver):
    """Five 300 KiB tracks pinned under a 1 MiB limit, downloaded at once: each commit's eviction must spare the
    blobs of the pin that other downloads committed a moment before (their index rows, through which a pin
    finds its blobs, may not be written yet)."""
    tracks = [cloud_track(server_root, f"p{i}", 300 * KiB, seed=20 + i) for i in range(5)]
    big = write_session(tmp_path / "big.json", tracks, server=devserver.url, name="Big")
    cache = tmp_path / "cache"
    done = cachectl(cache, "--max-size", "1M", "pin", str(big), "--jobs", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pinned 'Big': 5 of 5 cloud track(s) held" in done.stdout
    assert "over the size limit" in done.stdout
    assert sorted(r["name"] for r in ls(cache)) == sorted(name_of(f"p{i}") for i in range(5))
