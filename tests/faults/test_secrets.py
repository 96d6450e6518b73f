"""Secrets: the token never reaches logs, reports, error texts or the process title; a token on the
command line is refused; a shared token file and plain http to another machine get warnings."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mixvfs.cache.errors import AuthRejected
from mixvfs.cache.http import warn_if_insecure
from mixvfs.cache.token import TokenSource
from tests.conftest import MIXVFS, getxattr, run, write_session
from tests.faults.helpers import FAST, cloud_track, cp, name_of, stream_path
from tools.devserver import DevServer

SECRET = "tok-S3CRET-4f9a1c"


def test_token_never_in_log_report_errors_or_process_title(tmp_path, server_root, mounter):
    tracks = [cloud_track(server_root, "ok", 50_000), cloud_track(server_root, "no", 50_000, seed=2)]
    with DevServer(server_root, tokens=[SECRET]) as server:
        server.set_faults({stream_path("no"): {"status": 401}})  # rejected even after the refresh
        session = write_session(tmp_path / "s.json", tracks, server=server.url)
        mount = mounter(session, *FAST, "--log-level", "debug", env={"MIXVFS_TOKEN": SECRET})
        pid = int(getxattr(mount.path, "user.mixvfs.pid"))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert cp(mount.path / name_of("ok"), tmp_path / "ok.wav").returncode == 0
        failed = cp(mount.path / name_of("no"), tmp_path / "no.wav")
        assert failed.returncode != 0 and "Input/output error" in failed.stderr
        assert {g["auth"] for g in server.requests("GET")} == {f"Bearer {SECRET}"}
        shown = run([MIXVFS, "report", str(mount.path)])
        mount.unmount()
    assert "token rejected" in mount.track("no")["error"]
    assert mount.track("ok")["status"] == "cached"
    for where, text in {"cmdline": cmdline.decode(), "log": mount.log(), "report": mount.report_path.read_text(),
                        "cp": failed.stderr, "mixvfs report": shown.stdout + shown.stderr,
                        "mount output": " ".join(mount.extra)}.items():
        assert SECRET not in text, where


def test_token_on_the_command_line_is_refused(tmp_path, server_root, devserver):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 1000)], server=devserver.url)
    (tmp_path / "mnt").mkdir()
    done = run([MIXVFS, "mount", str(session), str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c"),
                "--token", SECRET])
    assert done.returncode == 2
    assert done.stderr.startswith("mixvfs: refusing --token") and done.stderr.count("\n") == 1
    assert SECRET not in done.stderr + done.stdout
    assert not os.path.ismount(tmp_path / "mnt")


def test_token_file_readable_by_others_is_warned_about(tmp_path, server_root, mounter):
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    token_file.chmod(0o644)
    with DevServer(server_root, tokens=[SECRET]) as server:
        session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 20_000)], server=server.url)
        mount = mounter(session, *FAST, "--token-file", str(token_file))
        assert cp(mount.path / name_of("t1"), tmp_path / "out.wav").returncode == 0
    assert f"token file {token_file} is readable by group or others" in mount.log()
    assert SECRET not in mount.log()


def test_token_with_a_line_break_is_refused_without_quoting_it(tmp_path, server_root, devserver, mounter):
    """httpx's "illegal header value" error would print the value: refuse it before it gets there."""
    token_file = tmp_path / "token"
    token_file.write_text("half-of-it\nother-half-of-it\n")
    token_file.chmod(0o600)
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 1000)], server=devserver.url)
    mount = mounter(session, "--token-file", str(token_file), expect_ok=False)
    assert mount.extra[2] != "0" and not os.path.ismount(mount.path)
    assert "contains spaces, control or non-ASCII characters" in mount.extra[1]
    assert "half-of-it" not in mount.extra[1] + mount.log()
    assert devserver.requests() == []


# -- tier 1: no traffic leaves the machine; warn_if_insecure only looks at the URL ----------------------


@pytest.mark.parametrize(("url", "warns"), [
    ("http://music.example.com/stream", True),
    ("http://10.1.2.3:8080", True),
    ("https://music.example.com", False),
    ("http://127.0.0.1:9000", False),
    ("http://localhost:9000", False),
    ("http://[::1]:9000", False),
])
def test_warn_if_insecure_only_for_plain_http_to_another_machine(url, warns, caplog):
    tokens = TokenSource(value="x")
    with caplog.at_level(logging.WARNING, logger="cache.http"):
        assert warn_if_insecure(url, tokens) is warns
    assert ("plain http" in caplog.text) is warns
    assert warn_if_insecure(url, None) is False  # no token, nothing to leak


def test_token_source_refuses_unsendable_tokens_without_quoting_them():
    with pytest.raises(AuthRejected) as caught:
        TokenSource(value="secret part\r\nX-Evil: 1")
    assert "secret" not in str(caught.value)
    assert TokenSource(value="  padded-token \n").current() == ("padded-token", 0)
