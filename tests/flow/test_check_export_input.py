"""`mixvfs check-export` without a mount: bad input (exit 2), a track it cannot verify and how `cachectl warm`
makes it verifiable, and a check that never creates a cache."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CACHECTL, MIXVFS, run, wait_until, write_session
from tools.make_audio import write_sized


def one_cloud_track(tmp_path: Path, server_root: Path, url: str) -> Path:
    (server_root / "stream").mkdir(exist_ok=True)
    write_sized(server_root / "stream" / "a", 300_000, kind="wav", seed=1)
    return write_session(tmp_path / "s.json", [
        {"id": "a", "artist": "A", "title": "One", "cloud_stream_path": "/stream/a", "size": 300_000,
         "content_type": "audio/wav"},
    ], server=url)


def check(*args: str) -> tuple[int, str, str]:
    done = run([MIXVFS, "check-export", *args])
    return done.returncode, done.stdout, done.stderr


def test_bad_input_exits_2_with_one_line(tmp_path):
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "T", "file_path": "a.wav"}])
    export = tmp_path / "export"
    export.mkdir()
    (tmp_path / "not-json.json").write_text("{not json")
    (tmp_path / "no-tracks.json").write_text(json.dumps({"tracks": "nope"}))
    (tmp_path / "bad-report.json").write_text(json.dumps({"session": "s", "started": "x", "tracks": [{"id": "a"}]}))
    cases = {
        (str(session), str(tmp_path / "nowhere")): f"export folder {tmp_path / 'nowhere'} does not exist",
        (str(session), str(session)): f"export folder {session} is not a folder",
        (str(tmp_path / "none.json"), str(export)): "cannot read it: No such file or directory",
        (str(tmp_path / "not-json.json"), str(export)): (
            "not a session manifest or a mixvfs report: not valid JSON at line 1 column 2: Expecting property "
            "name enclosed in double quotes; the line reads '{not json'"),
        (str(tmp_path / "no-tracks.json"), str(export)): "field 'tracks' must be a list",
        (str(tmp_path / "bad-report.json"), str(export)): "track 0 of the report has no id or name",
    }
    for args, message in cases.items():
        code, out, err = check(*args, "--json")
        assert code == 2, (args, out, err)
        assert out == "" and len(err.splitlines()) == 1 and message in err, (args, err)


def test_a_track_with_no_digest_is_not_verifiable_until_warmed(tmp_path, server_root, devserver):
    session = one_cloud_track(tmp_path, server_root, devserver.url)
    export = tmp_path / "export"
    export.mkdir()
    shutil.copyfile(server_root / "stream" / "a", export / "A - One.wav")  # right bytes, but nothing to prove it
    cache = tmp_path / "cache"
    code, out, _ = check(str(session), str(export), "--cache-dir", str(cache))
    assert code == 1
    assert out.splitlines()[0] == (f"not verifiable A - One.wav: no digest known (not in the report, not in the "
                                   f"cache): `cachectl warm {session}` downloads it into the cache; then check again")
    assert not cache.exists()  # a check never creates a cache
    run([CACHECTL, "--cache-dir", str(cache), "warm", str(session)], check=True)
    code, out, _ = check(str(session), str(export), "--cache-dir", str(cache), "--json")
    assert code == 0
    assert [t["state"] for t in json.loads(out)["tracks"]] == ["ok"]
    (export / "A - One.wav").write_bytes(b"x" * 300_000)  # the same size, other bytes: now it is caught
    code, out, _ = check(str(session), str(export), "--cache-dir", str(cache), "--json")
    assert code == 1 and [t["state"] for t in json.loads(out)["tracks"]] == ["wrong_content"]


@pytest.mark.linux_facilities  # gated on the read lease, in /proc/locks
def test_ctrl_c_stops_a_long_check_at_once_with_one_line(tmp_path):
    """A 64 GiB track (sparse: nothing on disk) takes a minute to hash: Ctrl-C, once it is being hashed (the
    export file is leased, /proc/locks), ends the command with 130 and one line, no traceback."""
    source, export = tmp_path / "huge.wav", tmp_path / "export"
    export.mkdir()
    for path in (source, export / "A - Huge.wav"):
        with open(path, "wb") as f:
            f.truncate(64 << 30)
    session = write_session(tmp_path / "s.json", [{"id": "h", "artist": "A", "title": "Huge",
                                                    "file_path": str(source)}])
    proc = subprocess.Popen([MIXVFS, "check-export", str(session), str(export)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: proc.poll() is not None or any(
            " LEASE " in line and f" {proc.pid} " in line for line in Path("/proc/locks").read_text().splitlines()),
            timeout=60), "check-export never started hashing"
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)  # hang guard: it stops at the next span, milliseconds
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err == "mixvfs: check-export interrupted (Ctrl-C): the export was not checked to the end\n"
    assert "Traceback" not in out


def test_a_check_loads_nothing_it_does_not_use(tmp_path):
    """check-export starts as a new process after every export, and its start-up is most of its time on a
    small one (the bench's ratio against xxhsum): no HTTP client, cache database, FUSE binding, token
    runner or team-cache policy is imported for a check that needs none, nor a TOML parser without a file."""
    source, export = tmp_path / "a.wav", tmp_path / "export"
    export.mkdir()
    write_sized(source, 10_000, kind="wav", seed=2)
    shutil.copyfile(source, export / "A - T.wav")
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "T",
                                                    "file_path": str(source)}])
    probe = ("import json, sys\n"
             "from mixvfs.vfs.commands import cli\n"
             "code = cli.main(sys.argv[1:])\n"
             "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}), file=sys.stderr)\n")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "MIXVFS_CONFIG": ""}
    done = run([sys.executable, "-c", probe, "check-export", str(session), str(export), "--json"], env=env)
    seen = json.loads(done.stderr.splitlines()[-1])
    assert seen["code"] == 0 and json.loads(done.stdout)["tracks"][0]["state"] == "ok", (done.stdout, done.stderr)
    unwanted = {"httpx", "diskcache", "sqlite3", "mfusepy", "rich", "tomllib", "subprocess", "socket",
                "mixvfs.cache.team", "mixvfs.cache.token", "mixvfs.vfs.commands.team_cache",
                "mixvfs.vfs.fs.history"}
    assert unwanted.isdisjoint(seen["modules"]), sorted(unwanted.intersection(seen["modules"]))
