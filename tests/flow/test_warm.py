"""`cachectl warm`: plain line-per-event output off a terminal, the report's summary, exit codes, and a
Ctrl-C that leaves only whole blobs and no staging files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.conftest import CACHECTL, run, write_session
from tools.devserver import DevServer
from tools.make_audio import write_sized


def session(tmp_path: Path, server_root: Path, url: str) -> Path:
    (server_root / "stream").mkdir(exist_ok=True)
    write_sized(server_root / "stream" / "a", 300_000, kind="wav", seed=1)
    write_sized(server_root / "stream" / "b", 2_000_000, kind="wav", seed=2)
    return write_session(tmp_path / "s.json", [
        {"id": "a", "artist": "A", "title": "One", "cloud_stream_path": "/stream/a", "size": 300_000,
         "content_type": "audio/wav"},
        {"id": "b", "artist": "B", "title": "Two", "cloud_stream_path": "/stream/b", "size": 2_000_000,
         "content_type": "audio/wav"},
    ], server=url)


def cachectl(cache: Path, *args: str) -> list[str]:
    return [CACHECTL, "--cache-dir", str(cache), *args]


def test_warm_downloads_everything_with_plain_lines(tmp_path, server_root, devserver):
    manifest = session(tmp_path, server_root, devserver.url)
    cache = tmp_path / "cache"
    done = run(cachectl(cache, "warm", str(manifest), "--jobs", "2"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Test Session: 2 tracks; 0 cached, 0 local, 2 to download (2.2 MiB)"
    events = sorted(" ".join(line.split()[:2]) for line in lines[1:] if line.startswith(("done", "failed")))
    assert events == ["done A", "done B"]
    assert "\x1b[" not in done.stdout  # no terminal control codes in a pipe
    assert lines[-1] == "2 cached"
    assert lines[-4].split()[:3] == ["NAME", "SOURCE", "STATUS"]
    assert len(devserver.requests("GET", "/stream/a")) == 1 and len(devserver.requests("GET", "/stream/b")) == 1
    listing = json.loads(run(cachectl(cache, "ls", "--json"), check=True).stdout)
    assert sorted(blob["size"] for blob in listing) == [300_000, 2_000_000]
    again = run(cachectl(cache, "warm", str(manifest)), check=True)  # nothing left to do, no request
    assert again.stdout.splitlines()[0] == "Test Session: 2 tracks; 2 cached, 0 local, 0 to download (0 B)"
    assert len(devserver.requests("GET")) == 2


def test_warm_exits_1_and_reports_a_failed_track(tmp_path, server_root, devserver):
    manifest = session(tmp_path, server_root, devserver.url)
    devserver.set_faults({"/stream/b": {"status": 404}})
    done = run(cachectl(tmp_path / "cache", "warm", str(manifest)))
    assert done.returncode == 1
    assert "failed B - Two.wav: the server answered HTTP 404 Not Found" in done.stdout.splitlines()
    assert done.stdout.splitlines()[-1] == "1 cached, 1 failed"


def test_ctrl_c_stops_cleanly_leaving_only_whole_blobs(tmp_path, server_root, devserver):
    manifest = session(tmp_path, server_root, devserver.url)
    devserver.set_faults({"/stream/b": {"rate": 200_000}})  # 10 s for the whole track: it is mid-way when we stop
    cache = tmp_path / "cache"
    proc = subprocess.Popen(cachectl(cache, "warm", str(manifest), "--jobs", "2"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # wait until "a" is whole and "b" is downloading
        seen.append(line.rstrip("\n"))
        if any(s.startswith("done   A") for s in seen) and any(s.startswith("start  B") for s in seen):
            break
    parts = list((cache / "staging").glob("*.part"))
    assert len(parts) == 1  # b's body, growing
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert out.splitlines()[-1] == "interrupted: downloads stopped; only whole files are in the cache"
    assert "Traceback" not in err
    assert os.listdir(cache / "staging") == []
    verify = run(cachectl(cache, "verify", "--json"), check=True)
    assert json.loads(verify.stdout) == {"checked": 1, "corrupt": []}
    listing = json.loads(run(cachectl(cache, "ls", "--json"), check=True).stdout)
    assert [blob["size"] for blob in listing] == [300_000]
    served = devserver.requests("GET", "/stream/b")
    assert len(served) == 1 and served[0]["bytes"] < 2_000_000  # b really was cut off mid-way


def test_every_download_gets_its_start_and_done_line_however_fast(tmp_path, server_root, devserver):
    """The lines come from the downloads' own events: a 10 KB track that downloads in a millisecond still
    gets its `start` line before its `done` line, exactly once each."""
    (server_root / "stream").mkdir()
    entries = []
    for n in range(12):
        write_sized(server_root / "stream" / f"t{n}", 10_000, kind="wav", seed=n)
        entries.append({"id": f"t{n}", "artist": "A", "title": f"T{n}", "cloud_stream_path": f"/stream/t{n}",
                        "size": 10_000, "content_type": "audio/wav"})
    manifest = write_session(tmp_path / "s.json", entries, server=devserver.url)
    done = run(cachectl(tmp_path / "cache", "warm", str(manifest), "--jobs", "3"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for n in range(12):
        mine = [line.split()[0] for line in lines if f" A - T{n}.wav" in line and line.startswith(("start", "done"))]
        assert mine == ["start", "done"], (n, done.stdout)


def test_without_a_token_each_failure_is_said_once_and_how_to_set_one(tmp_path, server_root):
    with DevServer(server_root, tokens=["good"]) as server:
        manifest = session(tmp_path, server_root, server.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIXVFS_")}
        done = run(cachectl(tmp_path / "cache", "warm", str(manifest)), env=env)
    assert done.returncode == 1
    failed = [line for line in done.stdout.splitlines() if line.startswith("failed")]
    assert len(failed) == 2 and all("none is configured: set MIXVFS_TOKEN" in line for line in failed)
    assert "none is configured" not in done.stderr  # not a second time through the log


def test_warm_says_when_the_server_asked_to_wait_and_waits(tmp_path, server_root, devserver):
    manifest = session(tmp_path, server_root, devserver.url)
    devserver.set_faults({"/stream/a": {"status": 503, "headers": {"Retry-After": "2"}, "times": 1}})
    done = run(cachectl(tmp_path / "cache", "warm", str(manifest), "--retry-wait", "0.01s"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wait   A - One.wav: server asked to wait 2 s" in done.stdout.splitlines(), done.stdout
    refused, *later = devserver.requests("GET", "/stream/a")
    assert refused["status"] == 503 and [r["status"] for r in later] == [200]
    assert later[0]["t"] >= refused["t"] + 2


def test_every_kind_of_404_is_counted_failed_and_exits_1(tmp_path, server_root, devserver):
    """A track the server does not have is never "done": without a size in the manifest (its size probe meets
    the 404 first, as "Gone" in README's Try it), after a retried 503, and behind a URL two tracks share."""
    (server_root / "stream").mkdir()
    write_sized(server_root / "stream" / "here", 100_000, kind="wav", seed=3)
    manifest = write_session(tmp_path / "s.json", [
        {"id": "h", "artist": "H", "title": "Here", "cloud_stream_path": "/stream/here"},
        {"id": "g", "artist": "Nobody", "title": "Gone", "cloud_stream_path": "/stream/gone.flac"},
        {"id": "g2", "artist": "Nobody", "title": "Gone Too", "cloud_stream_path": "/stream/gone.flac"},
        {"id": "r", "artist": "R", "title": "Retried", "cloud_stream_path": "/stream/retried", "size": 5000},
    ], server=devserver.url)
    devserver.set_faults({"/stream/retried": {"status": 503, "times": 1, "then": {"status": 404}}})
    cache = tmp_path / "cache"
    for _ in range(2):  # and again: what failed is asked again, and fails again, never "cached"
        done = run(cachectl(cache, "warm", str(manifest)))
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[-1] == "1 cached, 3 failed", done.stdout
        failed = sorted(line.split(":")[0] for line in lines if line.startswith("failed "))
        assert failed == ["failed Nobody - Gone Too.flac", "failed Nobody - Gone.flac", "failed R - Retried"]
        assert not any(line.startswith("done   Nobody") or line.startswith("done   R") for line in lines)
    (report_path,) = (cache / "reports").glob("*.warm.json")
    report = json.loads(report_path.read_text())
    statuses = {t["id"]: t["status"] for t in report["tracks"]}
    assert statuses == {"h": "cached", "g": "failed", "g2": "failed", "r": "failed"}
