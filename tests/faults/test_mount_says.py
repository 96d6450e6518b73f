"""`mixvfs mount` says what it can say as the folder goes live — the server refusing the token, out of
reach, or slow to answer — in one line each, and `mixvfs status` says the same while the mount runs."""

from __future__ import annotations

import filecmp
import json

from tests.conftest import MIXVFS, run, wait_until, write_session
from tests.faults.helpers import FAST, cloud_track, cp, name_of
from tools.devserver import DevServer

TOKEN_LINE = ("set the token with MIXVFS_TOKEN, or token_file / token_command in the config (--token-file, "
              "--token-command); until then every cloud track not in the cache fails with an input/output error")


def notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mixvfs: ")]


def status_text(mount) -> tuple[int, list[str]]:
    done = run([MIXVFS, "status", str(mount.path)])
    return done.returncode, done.stdout.splitlines()


def test_a_token_the_server_demands_and_none_configured_is_one_line_at_mount(tmp_path, server_root, mounter):
    tracks = [cloud_track(server_root, "t1", 50_000, declare_size=False)]
    with DevServer(server_root, tokens=["good"]) as server:
        session = write_session(tmp_path / "s.json", tracks, server=server.url)
        mount = mounter(session, *FAST, env={"MIXVFS_TOKEN": ""})
        said = notes(mount.extra[1])
        assert said == ["mixvfs: the music service refuses the cloud tracks (the server asks for a token (HTTP 401 "
                        f"Unauthorized) and none is configured): {TOKEN_LINE}"]
        code, lines = status_text(mount)
        assert code == 0 and lines[1] == said[0].replace("mixvfs: ", "server: ", 1)


def test_a_token_the_server_rejects_is_one_line_at_mount(tmp_path, server_root, mounter):
    tracks = [cloud_track(server_root, "t1", 50_000, declare_size=False)]
    with DevServer(server_root, tokens=["good"]) as server:
        session = write_session(tmp_path / "s.json", tracks, server=server.url)
        mount = mounter(session, *FAST, env={"MIXVFS_TOKEN": "stale"})
        assert notes(mount.extra[1]) == ["mixvfs: the music service refuses the cloud tracks (token rejected by the "
                                         f"server (HTTP 401 Unauthorized)): {TOKEN_LINE}"]


def test_an_offline_start_says_how_many_tracks_will_copy_and_status_says_it_too(tmp_path, server_root, mounter):
    tracks = [cloud_track(server_root, "seen", 60_000, declare_size=False),
              cloud_track(server_root, "never", 40_000, seed=1, declare_size=False)]
    with DevServer(server_root) as server:
        session = write_session(tmp_path / "s.json", tracks, server=server.url)
        first = mounter(session, *FAST)
        assert cp(first.path / name_of("seen"), tmp_path / "first.wav").returncode == 0
        first.unmount()
        host = server.url.split("//", 1)[1]
    # The server is gone: its port refuses connections.
    mount = mounter(session, *FAST)
    said = notes(mount.extra[1])
    assert len(said) == 1, said
    assert said[0].startswith(f"mixvfs: server unreachable: cannot connect to {host} (")
    assert said[0].endswith(": 1 of 2 cloud tracks are cached and will copy; 1 will fail until it answers")
    code, lines = status_text(mount)
    assert code == 0 and lines[1] == said[0].replace("mixvfs: ", "server: ", 1)
    assert cp(mount.path / name_of("seen"), tmp_path / "again.wav").returncode == 0
    assert filecmp.cmp(tmp_path / "again.wav", server_root / "stream" / "seen.wav", shallow=False)
    assert cp(mount.path / name_of("never"), tmp_path / "never.wav").returncode != 0


def test_an_offline_start_with_every_size_in_the_manifest_shows_in_status_at_the_first_failure(
        tmp_path, server_root, mounter):
    """Nothing is asked at mount when the manifest gives every size and type: the first download that cannot
    connect tells status."""
    tracks = [cloud_track(server_root, "t1", 40_000)]
    server = DevServer(server_root).start()
    session = write_session(tmp_path / "s.json", tracks, server=server.url)
    server.stop()
    mount = mounter(session, "--retries", "1")
    assert notes(mount.extra[1]) == []
    mount.wait_track("t1", lambda r: r["status"] == "failed")
    data = json.loads(run([MIXVFS, "status", str(mount.path), "--json"]).stdout)
    assert data["server"].endswith(": 0 of 1 cloud tracks are cached and will copy; 1 will fail until it answers")


def test_a_slow_server_at_mount_says_what_the_mount_waits_for(tmp_path, server_root, devserver, mounter):
    tracks = [cloud_track(server_root, "t1", 40_000, declare_size=False)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    devserver.set_faults({"*": {"hold": "slow", "hold_head": True}})
    try:
        mount = mounter(session, "--no-prefetch")  # the server never answers the HEAD: 10 s, then live
    finally:
        devserver.release("slow")
    host = devserver.url.split("//", 1)[1]
    assert notes(mount.extra[1]) == [
        f"mixvfs: waiting for {host} to answer about 1 track(s) whose size or format the manifest does not give "
        "(at most 10 s in all; tracks still unanswered then are asked again later)"]
    assert wait_until(lambda: (mount.path / name_of("t1")).stat().st_size == 40_000, 30)
