"""`mixvfs preflight` against a real dev server: ok, 401, 404, server down, and the disk/limit arithmetic."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.conftest import CACHECTL, MIXVFS, run, write_session
from tools.devserver import DevServer
from tools.make_audio import write_sized, write_wav


def session(tmp_path: Path, server_root: Path, url: str) -> Path:
    (server_root / "stream").mkdir(exist_ok=True)
    write_sized(server_root / "stream" / "a", 300_000, kind="wav", seed=1)
    write_sized(server_root / "stream" / "b", 200_000, kind="wav", seed=2)
    write_wav(tmp_path / "local.wav", 0.1, 440)
    return write_session(tmp_path / "s.json", [
        {"id": "l", "artist": "Loc", "title": "Al", "file_path": "local.wav"},
        {"id": "a", "artist": "A", "title": "One", "cloud_stream_path": "/stream/a", "content_type": "audio/wav"},
        {"id": "b", "artist": "B", "title": "Two", "cloud_stream_path": "/stream/b", "size": 200_000,
         "content_type": "audio/wav"},
    ], server=url)


def preflight(manifest: Path, cache: Path, *extra: str, token: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXVFS_")}
    env["MIXVFS_CONFIG"] = str(cache.parent / "no-config.toml")
    (cache.parent / "no-config.toml").write_text("")
    if token is not None:
        env["MIXVFS_TOKEN"] = token
    done = run([MIXVFS, "preflight", str(manifest), "--cache-dir", str(cache), "--stall-timeout", "2s", "--json",
                *extra], env=env)
    return done.returncode, json.loads(done.stdout) if done.stdout else None, done


def states(doc: dict[str, Any]) -> dict[str, str]:
    return {t["id"]: t["state"] for t in doc["tracks"]}


def test_all_reachable_exits_0_with_bytes_to_download(tmp_path, server_root):
    with DevServer(server_root, tokens=["good"]) as server:
        manifest = session(tmp_path, server_root, server.url)
        code, doc, _ = preflight(manifest, tmp_path / "cache", token="good")
        assert code == 0
        assert states(doc) == {"l": "local_ok", "a": "to_download", "b": "to_download"}
        assert {t["id"]: t["size"] for t in doc["tracks"]}["a"] == 300_000  # from HEAD
        assert doc["to_download"] == {"tracks": 2, "bytes": 500_000, "unknown_sizes": 0}
        assert doc["token"] == "accepted"
        assert doc["disk"]["needed"] == 500_000 and doc["disk"]["enough"] is True
        assert doc["verdict"] == "ok" and doc["problems"] == []
        assert server.requests("GET", "/stream/a") == [] and server.requests("GET", "/stream/b") == []
        assert len(server.requests("HEAD", "/stream/b")) == 1  # size in the manifest: still asked once


def test_cached_tracks_need_nothing(tmp_path, server_root, devserver):
    manifest = session(tmp_path, server_root, devserver.url)
    cache = tmp_path / "cache"
    run([CACHECTL, "--cache-dir", str(cache), "warm", str(manifest)], check=True)
    heads = len(devserver.requests("HEAD"))
    code, doc, _ = preflight(manifest, cache)
    assert code == 0
    assert states(doc) == {"l": "local_ok", "a": "cached", "b": "cached"}
    assert doc["to_download"]["bytes"] == 0
    assert len(devserver.requests("HEAD")) == heads + 1  # only "a" (no size in the manifest) is asked again


def test_a_token_command_that_fails_will_fail_as_the_mount_would(tmp_path, server_root, devserver):
    """`mixvfs mount` refuses to start with a token command that fails; preflight said "can succeed"
    (exit 0) when the server needed no token."""
    manifest = session(tmp_path, server_root, devserver.url)
    code, doc, _ = preflight(manifest, tmp_path / "cache", "--token-command", "false")
    assert code == 3 and doc["verdict"] == "will_fail"
    assert doc["token"].startswith("unusable")
    assert any("`mixvfs mount` will not start with it" in p for p in doc["problems"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXVFS_")}
    (tmp_path / "mnt").mkdir()
    mounted = run([MIXVFS, "mount", str(manifest), str(tmp_path / "mnt"), "--token-command", "false",
                   "--cache-dir", str(tmp_path / "cache")], env=env)
    assert mounted.returncode == 2 and "token command" in mounted.stderr, mounted.stderr  # as the mount says


def test_token_refused_is_unauthorized_and_will_fail(tmp_path, server_root):
    with DevServer(server_root, tokens=["good"]) as server:
        manifest = session(tmp_path, server_root, server.url)
        code, doc, done = preflight(manifest, tmp_path / "cache", token="stale")
        assert code == 3, done.stderr
        assert states(doc) == {"l": "local_ok", "a": "unauthorized", "b": "unauthorized"}
        assert doc["token"] == "rejected"
        assert "HTTP 401" in {t["id"]: t["detail"] for t in doc["tracks"]}["b"]
        assert doc["verdict"] == "will_fail"
        code, doc, _ = preflight(manifest, tmp_path / "cache")
        assert code == 3
        assert doc["token"] == "required, but none is configured: set MIXVFS_TOKEN, --token-file or --token-command"
        detail = {t["id"]: t["detail"] for t in doc["tracks"]}["b"]
        assert "none is configured" in detail and "token rejected" not in detail  # none was sent
        assert all("MIXVFS_TOKEN" not in problem for problem in doc["problems"])  # said once, on the token line


def test_not_found_is_missing_and_will_fail(tmp_path, server_root, devserver):
    manifest = session(tmp_path, server_root, devserver.url)
    (server_root / "stream" / "b").unlink()
    code, doc, _ = preflight(manifest, tmp_path / "cache")
    assert code == 3
    assert states(doc) == {"l": "local_ok", "a": "to_download", "b": "missing"}
    assert doc["problems"] == ["B - Two.wav: missing (the server answered HTTP 404 Not Found)"]


def test_server_down_could_not_check(tmp_path, server_root):
    server = DevServer(server_root).start()
    manifest = session(tmp_path, server_root, server.url)
    server.stop()  # the port is closed now: connection refused
    code, doc, _ = preflight(manifest, tmp_path / "cache")
    assert code == 4
    assert states(doc) == {"l": "local_ok", "a": "unreachable", "b": "unreachable"}
    assert doc["verdict"] == "could_not_check"
    assert "server unreachable" in {t["id"]: t["detail"] for t in doc["tracks"]}["a"]


def test_missing_track_and_human_output(tmp_path, server_root, devserver):
    manifest = session(tmp_path, server_root, devserver.url)
    doc = json.loads(manifest.read_text())
    doc["tracks"].append({"id": "m", "artist": "No", "title": "Where", "file_path": "/nonexistent/x.wav"})
    manifest.write_text(json.dumps(doc))
    env = {**os.environ, "MIXVFS_CONFIG": ""}
    done = run([MIXVFS, "preflight", str(manifest), "--cache-dir", str(tmp_path / "cache")], env=env)
    assert done.returncode == 3
    lines = done.stdout.splitlines()
    assert lines[0] == "session 'Test Session': 4 tracks"
    assert any(line.startswith("No - Where.wav") and "missing" in line for line in lines)
    assert "to download: 2 track(s), 488.3 KiB" in lines
    assert lines[-1] == "verdict: the export will fail (exit 3)"


def test_download_over_max_size_still_ok_but_says_so(tmp_path, server_root, devserver):
    manifest = session(tmp_path, server_root, devserver.url)
    code, doc, _ = preflight(manifest, tmp_path / "cache", "--max-size", "100000", "--jobs", "1")
    assert code == 0
    assert doc["disk"]["exceeds_max_size"] is True
    assert doc["disk"]["needed"] == 100_000 + 300_000  # room under the limit + one download in flight
    assert any("older blobs will be evicted" in note for note in doc["notes"])


def test_bad_manifest_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"tracks": [{"title": "no id"}]}')
    done = run([MIXVFS, "preflight", str(bad), "--cache-dir", str(tmp_path / "cache")])
    assert done.returncode == 2
    assert "track 0" in done.stderr and "'id'" in done.stderr


def test_a_server_without_head_is_size_unknown_or_ranged_not_missing(tmp_path, server_root, devserver):
    """HEAD 405/501 means "ask another way", not "missing": the size comes from a one-byte ranged GET."""
    manifest = session(tmp_path, server_root, devserver.url)
    devserver.set_faults({"/stream/a": {"no_head": 405}, "/stream/b": {"no_head": 501}})
    code, doc, _ = preflight(manifest, tmp_path / "cache")
    assert code == 0, doc
    assert states(doc) == {"l": "local_ok", "a": "to_download", "b": "to_download"}
    assert {t["id"]: t["size"] for t in doc["tracks"]} == {"l": doc["tracks"][0]["size"], "a": 300_000, "b": 200_000}
    ranged = devserver.requests("GET", "/stream/a")
    assert [r["range"] for r in ranged] == ["bytes=0-0"]  # one byte, not the track
