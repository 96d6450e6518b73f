"""The real `cachectl` over a file a refused commit left outside the index: stats tells of it, prune keeps it
while a commit may still name it and removes it once ``UNINDEXED_GRACE`` has passed (the command's wall clock
moved on by libfaketime; the file's own times are the kernel's)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mixvfs.cache.defaults import UNINDEXED_GRACE
from mixvfs.cache.index import SourceEntry
from mixvfs.cache.store import REFUSED_NOTE, BlobStore
from tests.conftest import CACHECTL, missing_part, run, write_session
from tests.unit.conftest import GiB
from tests.unit.test_store import put
from tests.unit.test_unindexed_files import files_in, refused_commit

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def later(seconds: float) -> dict[str, str]:
    """The environment of a command whose wall clock runs ``seconds`` ahead (file times left as they are)."""
    if not LIBFAKETIME.exists():
        missing_part("libfaketime is not installed (apt install faketime)", "CI must test the grace period")
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"+{int(seconds)}", "NO_FAKE_STAT": "1",
            "DONT_FAKE_MONOTONIC": "1"}


def test_cachectl_stats_tells_of_a_refused_commit_s_file_and_prune_removes_it_after_the_grace(tmp_path):
    cache = tmp_path / "cache"
    store = BlobStore(cache, max_size=GiB, max_age=3600)
    try:
        kept = put(store, b"indexed" * 1000)
        store.index.record("https://music.example/kept.wav", SourceEntry(kept, 7000, None))  # as a download does
        refused_commit(store, b"x" * 300_000)
        [left] = store.unindexed()
    finally:
        store.close()

    def cachectl(*args: str, env: dict[str, str] | None = None) -> str:
        done = run([CACHECTL, "--cache-dir", str(cache), *args], env={**os.environ, **(env or {})})
        assert done.returncode == 0, done.stderr
        return done.stdout

    stats = json.loads(cachectl("stats", "--json"))
    assert stats["unindexed"]["files"] == 1 and stats["unindexed"]["bytes"] == 300_000
    assert ("outside:  1 file(s) (293.0 KiB) in the blob folder outside the index, left by commits the cache "
            "database refused: cachectl prune removes them once 60 min old (1 younger") in cachectl("stats")

    # Now: a commit may still name it.
    young = json.loads(cachectl("prune", "--json"))
    assert young["unindexed_files"] == [] and (young["unindexed_kept"], young["unindexed_kept_bytes"]) == (1, 300_000)
    assert ("kept 1 file(s) outside the index, 293.0 KiB, less than 60 min old: a commit may still name them"
            in cachectl("prune"))
    assert left.filename in files_in(cache)

    ahead = later(UNINDEXED_GRACE + 60)
    dry = cachectl("prune", "--dry-run", env=ahead)
    path = cache / "blobs" / left.filename
    assert f"{path}  293.0 KiB" in dry and "would free 1 file(s) outside the index, 293.0 KiB" in dry
    assert path.exists()
    done = json.loads(cachectl("prune", "--json", env=ahead))
    assert [f["path"] for f in done["unindexed_files"]] == [str(path)] and done["unindexed_bytes"] == 300_000
    assert done["unindexed_kept"] == 0
    assert not path.exists()
    assert json.loads(cachectl("stats", "--json"))["unindexed"]["files"] == 0
    assert "outside:" not in cachectl("stats")
    listed = json.loads(cachectl("ls", "--json"))
    assert [blob["digest"] for blob in listed] == [kept]



def test_the_housekeeping_of_a_command_that_downloads_removes_a_noted_leftover_after_the_grace(tmp_path):
    """`cachectl warm` opens the runtime as a mount does, with its housekeeping: a refused commit's file stays
    while a commit may name it, and goes (with the note) once ``UNINDEXED_GRACE`` has passed."""
    cache = tmp_path / "cache"
    store = BlobStore(cache, max_size=GiB, max_age=3600)
    try:
        put(store, b"indexed" * 1000)
        refused_commit(store, b"v" * 70_000)
        [left] = store.unindexed()
    finally:
        store.close()
    session = write_session(tmp_path / "s.json", [])

    def warm(env: dict[str, str] | None = None) -> None:
        done = run([CACHECTL, "warm", str(session), "--cache-dir", str(cache)], env={**os.environ, **(env or {})})
        assert done.returncode == 0, done.stderr

    warm()
    assert left.filename in files_in(cache) and (cache / REFUSED_NOTE).exists()
    warm(later(UNINDEXED_GRACE + 60))
    assert left.filename not in files_in(cache) and not (cache / REFUSED_NOTE).exists()
