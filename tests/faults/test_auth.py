"""Auth lifecycle: a rejected token is refreshed once (token command run again / token file re-read),
still rejected is EIO with "token rejected" and no storm; Authorization never follows a redirect to
another origin."""

from __future__ import annotations

import filecmp
from pathlib import Path

from tests.conftest import write_session
from tests.faults.helpers import FAST, cloud_track, cp, name_of, stream_path
from tools.devserver import DevServer


def token_command(tmp_path: Path, token: str) -> tuple[str, Path, Path]:
    """A --token-command that prints the token in a file and counts its runs."""
    source, calls = tmp_path / "client-token", tmp_path / "calls"
    source.write_text(token)
    source.chmod(0o600)
    return f"echo run >> {calls}; cat {source}", source, calls


def test_expired_token_is_refreshed_once_and_the_read_succeeds(tmp_path, server_root, mounter):
    server_tokens = tmp_path / "server-tokens"
    server_tokens.write_text("fresh-token\n")
    session_tracks = [cloud_track(server_root, "t1", 200_000)]
    command, source, calls = token_command(tmp_path, "expired-token")
    with DevServer(server_root, token_file=server_tokens) as server:
        session = write_session(tmp_path / "s.json", session_tracks, server=server.url)
        mount = mounter(session, *FAST, "--token-command", command)
        source.write_text("fresh-token")  # the token service has rotated the token meanwhile
        done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
        assert done.returncode == 0, done.stderr
        assert filecmp.cmp(tmp_path / "out.wav", server_root / "stream" / "t1.wav", shallow=False)
        gets = server.requests("GET", stream_path("t1"))
    assert [(g["auth"], g["status"]) for g in gets] == [("Bearer expired-token", 401), ("Bearer fresh-token", 200)]
    assert calls.read_text().count("run") == 2  # once at mount, once on the 401: exactly one refresh


def test_token_file_is_reread_on_401(tmp_path, server_root, mounter):
    token_file = tmp_path / "token"
    token_file.write_text("old\n")
    token_file.chmod(0o600)
    with DevServer(server_root, tokens=["new"]) as server:
        session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 50_000)], server=server.url)
        mount = mounter(session, *FAST, "--token-file", str(token_file))
        token_file.write_text("new\n")
        done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
        assert done.returncode == 0, done.stderr
        assert [g["status"] for g in server.requests("GET", stream_path("t1"))] == [401, 200]


def test_token_still_rejected_after_refresh_is_eio_without_a_storm(tmp_path, server_root, mounter):
    command, _source, calls = token_command(tmp_path, "wrong-token")
    with DevServer(server_root, tokens=["right-token"]) as server:
        session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 50_000)], server=server.url)
        mount = mounter(session, *FAST, "--token-command", command)
        for _ in range(3):  # reading again within --failed-for asks nobody
            done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
            assert done.returncode != 0 and "Input/output error" in done.stderr
        gets = server.requests("GET", stream_path("t1"))
    assert [g["status"] for g in gets] == [401, 401]
    record = mount.track("t1")
    assert record["status"] == "failed" and "token rejected" in record["error"]
    assert "wrong-token" not in mount.report_path.read_text() and "wrong-token" not in mount.log()
    assert calls.read_text().count("run") == 2


def test_authorization_is_not_sent_to_another_origin_after_a_redirect(tmp_path, server_root, mounter):
    other_root = tmp_path / "cdn"
    other_root.mkdir()
    entry = cloud_track(server_root, "t1", 120_000)
    (other_root / "stream").mkdir()
    (other_root / "stream" / "t1.wav").write_bytes((server_root / "stream" / "t1.wav").read_bytes())
    with DevServer(other_root) as cdn, DevServer(server_root, tokens=["the-token"]) as api:
        api.set_faults({stream_path("t1"): {"redirect": cdn.url_for("/stream/t1.wav")}})
        session = write_session(tmp_path / "s.json", [entry], server=api.url)
        mount = mounter(session, *FAST, env={"MIXVFS_TOKEN": "the-token"})
        done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
        assert done.returncode == 0, done.stderr
        assert filecmp.cmp(tmp_path / "out.wav", server_root / "stream" / "t1.wav", shallow=False)
        assert [(g["status"], g["auth"]) for g in api.requests("GET")] == [(302, "Bearer the-token")]
        assert [(g["status"], g["auth"]) for g in cdn.requests("GET")] == [(200, None)]
