"""`mixvfs preflight` against a real dev server: ok, 401, 404, server down, and the disk/limit arithmetic."""

from __future__ import annotations

import json
import os
import socket
import subprocess
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


def test_a_server_too_slow_to_answer_could_not_check_exit_4_with_the_reason(tmp_path, server_root, devserver):
    """Slow is not missing: a track the server does not answer about in time is "unreachable" with why
    (exit 4), and while preflight waits it says what for. Default stall timeout (30 s): the server is slow,
    not silent beyond it."""
    manifest = session(tmp_path, server_root, devserver.url)
    devserver.set_faults({"*": {"hold": "slow", "hold_head": True}})  # every HEAD waits until released
    (tmp_path / "no-config.toml").write_text("")
    check = subprocess.Popen([MIXVFS, "preflight", str(manifest), "--cache-dir", str(tmp_path / "cache"), "--json"],
                             env=done_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # "a" (no size in the manifest) is asked as the tracks are built, for at most 10 s; "b" after that.
        devserver.wait_held("slow", count=2, timeout=60)
    finally:
        devserver.release("slow")
    out, err = check.communicate(timeout=60)
    doc = json.loads(out)
    assert check.returncode == 4, err
    assert states(doc) == {"l": "local_ok", "a": "unreachable", "b": "to_download"}
    assert {t["id"]: t["detail"] for t in doc["tracks"]}["a"] == "the server did not answer within 10 s"
    assert doc["problems"] == ["A - One.wav: unreachable (the server did not answer within 10 s)"]
    host = devserver.url.split("//", 1)[1]
    assert (f"mixvfs: waiting for {host} to answer about 1 track(s) whose size or format the manifest does not "
            "give (at most 10 s in all") in err


def test_a_url_shared_by_two_tracks_is_one_download(tmp_path, server_root, devserver):
    manifest = session(tmp_path, server_root, devserver.url)
    doc = json.loads(manifest.read_text())
    doc["tracks"].append({**doc["tracks"][2], "id": "b2", "title": "Two again"})
    manifest.write_text(json.dumps(doc))
    code, result, _ = preflight(manifest, tmp_path / "cache")
    assert code == 0
    assert states(result)["b2"] == "to_download"
    assert result["to_download"] == {"tracks": 2, "bytes": 500_000, "unknown_sizes": 0}
    assert result["disk"]["needed"] == 500_000


def self_signed(tmp_path: Path) -> Path:
    pem = tmp_path / "server.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(pem), "-out", str(pem)], check=True)
    return pem


def test_a_server_certificate_not_trusted_says_so_and_will_fail(tmp_path, server_root):
    with DevServer(server_root, tls=self_signed(tmp_path)) as server:
        manifest = session(tmp_path, server_root, server.url)
        code, doc, _ = preflight(manifest, tmp_path / "cache")
    assert code == 3 and doc["verdict"] == "will_fail"
    assert states(doc) == {"l": "local_ok", "a": "untrusted", "b": "untrusted"}
    detail = {t["id"]: t["detail"] for t in doc["tracks"]}["b"]
    assert detail.startswith("certificate not trusted: 127.0.0.1:") and "unreachable" not in detail


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_team_cache_that_is_down_or_not_trusted_shows_in_preflight(tmp_path, server_root, devserver):
    """The export still works (from the music service), so the verdict stands; but the user is told."""
    manifest = session(tmp_path, server_root, devserver.url)
    down = f"http://127.0.0.1:{closed_port()}"
    with DevServer(server_root, tls=self_signed(tmp_path)) as untrusted:
        code, doc, _ = preflight(manifest, tmp_path / "cache", "--team-cache", f"{down};{untrusted.url}")
        text = run([MIXVFS, "preflight", str(manifest), "--cache-dir", str(tmp_path / "cache"), "--team-cache",
                    f"{down};{untrusted.url}"], env=done_env(tmp_path)).stdout
    assert code == 0, doc
    by_url = {c["url"]: c for c in doc["team_cache"]}
    assert by_url[down]["state"] == "down" and "server unreachable" in by_url[down]["reason"]
    assert by_url[untrusted.url]["state"] == "down"
    assert by_url[untrusted.url]["reason"].startswith("certificate not trusted: 127.0.0.1:")
    assert any(n.startswith(f"team cache {untrusted.url} is down (certificate not trusted") for n in doc["notes"])
    assert f"team cache:  {down} DOWN (server unreachable" in text
    assert f"team cache:  {untrusted.url} DOWN (certificate not trusted" in text


def done_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXVFS_")}
    env["MIXVFS_CONFIG"] = str(tmp_path / "no-config.toml")
    return env
