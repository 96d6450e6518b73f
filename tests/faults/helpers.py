"""Small helpers shared by the fault tests: cloud tracks on the dev server, `cp`, `cachectl`, waiting."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import CACHECTL, run
from tools.make_audio import write_sized

# Short, per-test timeouts: a fault test must fail fast, never wait for production defaults.
# Quick retries; the stall timeout only a hang guard here (a loaded 2-core machine can pause a body for a second).
FAST = ["--no-prefetch", "--retries", "3", "--retry-wait", "0.01s", "--stall-timeout", "3s"]


def cloud_track(server_root: Path, track_id: str, size: int, *, seed: int = 0,
                declare_size: bool = True) -> dict[str, Any]:
    """A WAV of ``size`` bytes at ``/stream/<id>.wav`` on the dev server, and its manifest entry.

    With the size and content type in the manifest the mount sends no HEAD, so the request log holds
    only what reading caused."""
    folder = server_root / "stream"
    folder.mkdir(exist_ok=True)
    write_sized(folder / f"{track_id}.wav", size, kind="wav", seed=seed)
    entry: dict[str, Any] = {"id": track_id, "artist": "Artist", "title": track_id,
                             "cloud_stream_path": f"/stream/{track_id}.wav", "content_type": "audio/wav"}
    if declare_size:
        entry["size"] = size
    return entry


def name_of(track_id: str) -> str:
    return f"Artist - {track_id}.wav"


def stream_path(track_id: str) -> str:
    return f"/stream/{track_id}.wav"


def cp(src: Path, dst: Path) -> subprocess.CompletedProcess[str]:
    return run(["cp", str(src), str(dst)])


def cachectl(cache_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([CACHECTL, "--cache-dir", str(cache_dir), *args])


def cachectl_json(cache_dir: Path, *args: str) -> Any:
    done = cachectl(cache_dir, *args, "--json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def holds_open(pid: int, path: Path) -> bool:
    """True once process ``pid`` has ``path`` open (Linux /proc; a `cp` then sits in a read of it)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def max_overlap(entries: list[dict[str, Any]], *, lag: float = 0.0) -> int:
    """The largest number of requests in flight at once, from the log's start and end times. ``lag``: how late
    the server may log an end (it writes the last byte, then takes the time; the client, done at once, may
    start its next request in between) — meaningful only for requests that last far longer."""
    events = sorted([(float(e["t"]), 1) for e in entries] + [(float(e["t_end"]) - lag, -1) for e in entries])
    current = peak = 0
    for _, step in events:  # at equal times the end (-1) sorts first: touching intervals do not overlap
        current += step
        peak = max(peak, current)
    return peak
