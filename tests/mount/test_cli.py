"""The `mixvfs` and `cachectl` commands as a user runs them, on real mounts."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CACHECTL, MIXVFS, run, write_session
from tools.make_audio import write_sized


def test_mount_refuses_bad_mountpoints_with_one_line(tmp_path, mounter):
    session = write_session(tmp_path / "s.json", [])
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    (tmp_path / "mnt").mkdir()
    through_missing = tmp_path / "nope" / ".." / "mnt"  # realpath reads it as mnt; the kernel finds no such path
    for target, words in ((tmp_path / "absent", "does not exist"), (not_a_dir, "is not a folder"),
                          (through_missing, f"does not exist: {tmp_path / 'nope'} is missing")):
        done = run([MIXVFS, "mount", str(session), str(target), "--cache-dir", str(tmp_path / "c")])
        assert done.returncode == 2
        assert words in done.stderr and done.stderr.count("\n") == 1
    live = mounter(session)
    again = run([MIXVFS, "mount", str(session), str(live.path), "--cache-dir", str(tmp_path / "c")])
    assert again.returncode == 2 and "already mounted" in again.stderr


def test_invalid_manifest_exits_nonzero_naming_track_and_field_and_mounts_nothing(tmp_path):
    session = write_session(tmp_path / "s.json", [{"id": "a", "title": "ok"}, {"id": "b", "size": "big"}])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    done = run([MIXVFS, "mount", str(session), str(mountpoint), "--cache-dir", str(tmp_path / "c")])
    assert done.returncode == 2
    assert "track 1 (id 'b'): field 'size'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(mountpoint)


def test_token_on_the_command_line_is_refused(tmp_path):
    session = write_session(tmp_path / "s.json", [])
    (tmp_path / "mnt").mkdir()
    done = run([MIXVFS, "mount", str(session), str(tmp_path / "mnt"), "--token", "sekrit"])
    assert done.returncode == 2
    assert "refusing --token" in done.stderr and "sekrit" not in done.stderr


def test_names_follow_the_rules_through_the_mount(tmp_path, server_root, devserver, mounter):
    write_sized(server_root / "riff", 5000, kind="wav", seed=3)
    (server_root / "x.flac").write_bytes(b"fLaC" + b"\0" * 100)
    long_title = "é" * 200
    tracks = [
        {"id": "1", "artist": "AC/DC", "title": " Back\u0000 in\tBlack. ", "cloud_stream_path": "/x.flac"},
        {"id": "2", "artist": "", "title": "", "cloud_stream_path": "/x.flac", "content_type": "audio/flac"},
        {"id": "3", "artist": "ac_dc", "title": "BACK IN BLACK", "cloud_stream_path": "/x.flac"},
        {"id": "4", "artist": "Cafe\u0301", "title": long_title, "cloud_stream_path": "/x.flac"},
        {"id": "5", "artist": "Magic", "title": "Riff", "cloud_stream_path": "/riff"},
    ]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session, "--no-prefetch")
    names = [t["name"] for t in mount.report()["tracks"]]
    assert names[0] == "AC_DC - Back in Black.flac"
    assert names[1] == "Unknown Artist - 2.flac"
    assert names[2] == "ac_dc - BACK IN BLACK (2).flac"
    assert names[3].startswith("Café - éé") and names[3].endswith(".flac")
    assert len(names[3].encode()) <= 255
    assert names[4] == "Magic - Riff.wav"  # from the magic bytes: no type anywhere else
    assert sorted(os.listdir(mount.path)) == sorted(names)
    mount.unmount()
    again = mounter(session, "--no-prefetch", cache_dir=mount.cache_dir)
    assert sorted(os.listdir(again.path)) == sorted(names)  # stable across remounts


def test_report_file_is_private_and_printable(tmp_path, server_root, devserver, mounter):
    (server_root / "a.wav").write_bytes(b"a" * 1000)
    session = write_session(tmp_path / "s.json", [
        {"id": "a", "artist": "A", "title": "Song", "cloud_stream_path": "/a.wav"},
        {"id": "m", "artist": "M", "title": "Gone"},
    ], server=devserver.url)
    mount = mounter(session)
    run(["cp", str(mount.path / "A - Song.wav"), str(tmp_path / "out.wav")], check=True)
    assert stat.S_IMODE(mount.report_path.stat().st_mode) == 0o600
    table = run([MIXVFS, "report", str(mount.path)])
    assert table.returncode == 1  # a missing track is a failure to report
    assert "A - Song.wav" in table.stdout and "missing" in table.stdout
    mount.unmount()
    as_json = run([MIXVFS, "report", str(mount.report_path), "--json"])
    data = json.loads(as_json.stdout)
    assert data["session"] == "Test Session" and data["mountpoint"] == str(mount.path)
    by_id = {t["id"]: t for t in data["tracks"]}
    assert by_id["a"]["status"] == "cached" and by_id["a"]["bytes"] == 1000 and by_id["a"]["digest"]
    assert by_id["m"]["status"] == "missing" and "neither a local file nor a cloud stream path" in by_id["m"]["error"]


def test_cachectl_stats_ls_prune_verify(tmp_path, server_root, devserver, mounter):
    for i in range(3):
        (server_root / f"{i}.wav").write_bytes(bytes([i]) * (1 << 20))
    (server_root / "dup.wav").write_bytes(bytes([0]) * (1 << 20))
    tracks = [{"id": str(i), "artist": "A", "title": str(i), "cloud_stream_path": f"/{i}.wav"} for i in range(3)]
    tracks.append({"id": "d", "artist": "A", "title": "dup", "cloud_stream_path": "/dup.wav"})
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    mount = mounter(session)
    run(["cp", "-r", f"{mount.path}/.", str(tmp_path / "out")], check=True)
    mount.unmount()
    cache = ["--cache-dir", str(mount.cache_dir)]
    stats = json.loads(run([CACHECTL, *cache, "stats", "--json"], check=True).stdout)
    assert (stats["blobs"], stats["bytes"], stats["max_size"]) == (3, 3 << 20, 10 << 30)  # dup stored once
    listing = json.loads(run([CACHECTL, *cache, "ls", "--json"], check=True).stdout)
    zero = next(row for row in listing if len(row["sources"]) == 2)
    assert sorted(s.split("#")[0].rsplit("/", 1)[1] for s in zero["sources"]) == ["0.wav", "dup.wav"]
    dry = json.loads(run([CACHECTL, *cache, "prune", "--max-size", "2M", "--dry-run", "--json"], check=True).stdout)
    assert dry["freed_blobs"] == 1 and dry["freed_bytes"] == 1 << 20
    assert json.loads(run([CACHECTL, *cache, "stats", "--json"]).stdout)["blobs"] == 3
    pruned = json.loads(run([CACHECTL, *cache, "prune", "--max-size", "2M", "--json"], check=True).stdout)
    assert pruned["freed_blobs"] == 1
    aged = json.loads(run([CACHECTL, *cache, "prune", "--max-age", "0s", "--json"], check=True).stdout)
    assert aged["freed_blobs"] == 2
    assert json.loads(run([CACHECTL, *cache, "stats", "--json"]).stdout)["blobs"] == 0
    ok = run([CACHECTL, *cache, "verify"])
    assert ok.returncode == 0 and "0 corrupt" in ok.stdout


def test_cachectl_verify_reports_corruption(tmp_path, server_root, devserver, mounter):
    (server_root / "v.wav").write_bytes(b"v" * 100_000)
    session = write_session(tmp_path / "s.json", [{"id": "v", "artist": "A", "title": "V",
                                                   "cloud_stream_path": "/v.wav"}], server=devserver.url)
    mount = mounter(session)
    run(["cp", str(mount.path / "A - V.wav"), str(tmp_path / "v.wav")], check=True)
    mount.unmount()
    blobs = [p for p in Path(mount.cache_dir, "blobs").rglob("*.val")]
    assert len(blobs) == 1
    with open(blobs[0], "r+b") as handle:
        handle.write(b"X")
    done = run([CACHECTL, "--cache-dir", str(mount.cache_dir), "verify", "--json"])
    assert done.returncode == 1
    assert len(json.loads(done.stdout)["corrupt"]) == 1


def test_missing_libfuse_is_one_clear_line(tmp_path):
    session = write_session(tmp_path / "s.json", [])
    (tmp_path / "mnt").mkdir()
    env = {**os.environ, "FUSE_LIBRARY_NAME": "no-such-libfuse"}  # as on a machine without libfuse
    done = run([MIXVFS, "mount", str(session), str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c")], env=env)
    assert done.returncode == 2
    assert "no usable libfuse" in done.stderr and "fuse3" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(tmp_path / "mnt")


def test_report_through_a_link_to_a_live_mount_is_that_mounts_report(tmp_path, mounter):
    music = tmp_path / "music"
    music.mkdir()
    write_sized(music / "a.wav", 10_000, kind="wav")
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "a", "file_path": "music/a.wav"}])
    live = mounter(session)
    link = tmp_path / "link"
    link.symlink_to(live.path)
    done = run([MIXVFS, "report", str(link)])
    assert done.returncode == 0, done.stderr
    assert "not mounted" not in done.stderr and "A - a.wav" in done.stdout


def test_the_mounted_line_and_the_report_name_the_mountpoint_normalised(tmp_path, mounter):
    music = tmp_path / "music"
    music.mkdir()
    write_sized(music / "a.wav", 10_000, kind="wav")
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "a", "file_path": "music/a.wav"}])
    (tmp_path / "mnt").mkdir()
    live = mounter(session, mountpoint=tmp_path / "music" / ".." / "." / "mnt")
    assert live.extra[0].splitlines()[0] == f"mounted {tmp_path / 'mnt'}", live.extra[0]
    assert live.report()["mountpoint"] == str(tmp_path / "mnt")


def test_the_waiting_mount_leaves_the_manifest_and_the_core_to_the_daemon(tmp_path):
    """`mixvfs mount` waits in the terminal while its daemon starts: it checks what only it can say before a
    daemon exists (the mountpoint, the folders, that a libfuse loads), and leaves the rest to the daemon, whose
    errors reach the terminal word for word. It neither parses the manifest (a 100 000-track one cost the
    mount a second more) nor loads the core, the HTTP client or the cache database (a quarter second more)."""
    source = tmp_path / "a.wav"
    write_sized(source, 5000, seed=1)
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "T", "file_path": str(source)}])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    probe = ("import json, sys\n"
             "from mixvfs.vfs.session import manifest\n"
             "parsed = []\n"
             "real = manifest.parse_manifest\n"
             "def counted(*args, **kwargs):\n"
             "    parsed.append(1)\n"
             "    return real(*args, **kwargs)\n"
             "manifest.parse_manifest = counted\n"
             "from mixvfs.vfs.commands import cli\n"
             "code = cli.main(sys.argv[1:])\n"
             "print(json.dumps({'code': code, 'parsed': len(parsed), 'modules': sorted(sys.modules)}), "
             "file=sys.stderr)\n")
    done = run([sys.executable, "-c", probe, "mount", str(session), str(mountpoint), "--cache-dir",
                str(tmp_path / "c"), "--no-prefetch"])
    try:
        seen = json.loads(done.stderr.splitlines()[-1])
        assert seen["code"] == 0 and os.path.ismount(mountpoint), done
        assert (mountpoint / "A - T.wav").read_bytes() == source.read_bytes()
        assert seen["parsed"] == 0
        unwanted = {"httpx", "diskcache", "sqlite3", "mixvfs.vfs.adapter.fuse_ops", "mixvfs.vfs.fs.sessionfs",
                    "mixvfs.vfs.runtime", "mixvfs.vfs.commands.daemon"}
        assert unwanted.isdisjoint(seen["modules"]), sorted(unwanted.intersection(seen["modules"]))
    finally:
        run([MIXVFS, "unmount", str(mountpoint)])


def test_the_daemon_is_the_command_forked_on_linux_and_a_new_interpreter_when_asked(tmp_path, mounter):
    """Linux: `mixvfs mount` forks itself into the daemon (no second interpreter, imports and checks: ~80 ms
    of the mount's start); MIXVFS_DAEMON_START=spawn (and macOS) starts `mixvfs mount ... --foreground` in a
    new interpreter. Either way the folder serves the same bytes and the unmount writes the report."""
    if sys.platform != "linux":
        pytest.skip("the fork start is Linux's (and /proc/PID/cmdline tells the two apart)")
    source = tmp_path / "a.wav"
    write_sized(source, 5000, seed=1)
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "T", "file_path": str(source)}])
    for how in ("", "spawn"):
        live = mounter(session, env={"MIXVFS_DAEMON_START": how})
        assert (live.path / "A - T.wav").read_bytes() == source.read_bytes()
        command = Path(f"/proc/{live.pid}/cmdline").read_bytes().split(b"\0")
        assert (b"--foreground" in command) == (how == "spawn"), command
        assert os.getsid(live.pid) == live.pid
        done = run([MIXVFS, "unmount", str(live.path)])
        assert done.returncode == 0, done
        live.mounted = False
        assert live.report()["tracks"][0]["status"] == "local"


@pytest.mark.parametrize("closed", [">&-", "2>&-", ">&- 2>&-", "<&- 2>&-"])
@pytest.mark.parametrize("how", ["", "spawn"])
def test_a_mount_started_with_its_stdio_closed_mounts_and_says_so_in_its_status(tmp_path, closed, how):
    """A script may start `mixvfs mount` with stdout or stderr closed: the ready pipe and the log must not take
    their numbers (the daemon's word landed in its log, and the command waited and failed); the exit status says
    what happened to the mount."""
    source = tmp_path / "a.wav"
    write_sized(source, 5000, seed=1)
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "T", "file_path": str(source)}])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "m.log"
    command = (f"exec {MIXVFS} mount {session} {mountpoint} --cache-dir {tmp_path / 'c'} --log-file {log} "
               f"--no-prefetch {closed}")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MIXVFS_DAEMON_START": how})
    try:
        assert done.returncode == 0, (done, log.read_text() if log.exists() else "")
        assert os.path.ismount(mountpoint)
        assert (mountpoint / "A - T.wav").read_bytes() == source.read_bytes()
        assert '"ok"' not in log.read_text(), "the daemon's word went to its log instead of the command"
    finally:
        run([MIXVFS, "unmount", str(mountpoint)])


def test_unmount_leaves_a_file_system_that_is_not_mixvfs_alone(tmp_path):
    """`mixvfs unmount` of someone else's mount (here a tmpfs, whose files an unmount loses; root mounts it) is
    refused, exit 2, and the mount and its files stay."""
    other = tmp_path / "other"
    other.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(other)], check=True)
    try:
        (other / "notes.txt").write_text("keep me")
        done = run([MIXVFS, "unmount", str(other)])
        assert done.returncode == 2, done
        assert "is mounted, but not by mixvfs" in done.stderr and done.stderr.count("\n") == 1
        if "portable_lane" not in sys.modules:  # there the mount table is hidden from mixvfs: no type to name
            assert "(it is tmpfs)" in done.stderr
        assert os.path.ismount(other) and (other / "notes.txt").read_text() == "keep me"
    finally:
        run(["umount", "-l", str(other)])


def test_a_second_mount_of_a_folder_still_being_mounted_is_refused(tmp_path, server_root, devserver):
    """The first mount is still starting (its token command waits on a pipe): a second `mixvfs mount` of the same
    folder is refused, exit 2, naming the first, instead of mounting on top of it; the first then goes live with
    its own session. And files put into the folder while a mount starts are not hidden by it: the mount is
    refused when it finds them at the end of its start."""
    track = server_root / "stream" / "slow.wav"
    track.parent.mkdir(exist_ok=True)
    write_sized(track, 20_000, kind="wav", seed=3)
    first = write_session(tmp_path / "first.json", [{"id": "s", "artist": "First", "title": "Slow", "size": 20_000,
                                                    "cloud_stream_path": "/stream/slow.wav"}], server=devserver.url)
    source = tmp_path / "b.wav"
    write_sized(source, 5000, seed=1)
    second = write_session(tmp_path / "second.json", [{"id": "b", "artist": "Second", "title": "B",
                                                      "file_path": str(source)}])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    gate, started = tmp_path / "gate", tmp_path / "started"

    def start(session: Path) -> subprocess.Popen[str]:
        started.unlink(missing_ok=True)
        gate.unlink(missing_ok=True)
        os.mkfifo(gate)
        return subprocess.Popen([MIXVFS, "mount", str(session), str(mountpoint), "--cache-dir", str(tmp_path / "c"),
                                 "--log-file", str(tmp_path / "m.log"), "--no-prefetch",
                                 "--token-command", f"touch {started}; cat {gate}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_started(starting: subprocess.Popen[str]) -> None:
        while not started.exists():  # the token command has begun: the daemon is inside its start
            assert starting.poll() is None, starting.communicate()
            time.sleep(0.02)

    def open_gate() -> None:
        with open(gate, "w") as pipe:
            pipe.write("token\n")

    waiting = start(first)
    try:
        wait_started(waiting)
        refused = run([MIXVFS, "mount", str(second), str(mountpoint), "--cache-dir", str(tmp_path / "c2")])
        assert refused.returncode == 2, refused
        assert "is being mounted or served by another mixvfs (pid" in refused.stderr
        assert not os.path.ismount(mountpoint)
        open_gate()
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert sorted(os.listdir(mountpoint)) == ["First - Slow.wav"]
    finally:
        if waiting.poll() is None:
            waiting.kill()
        run([MIXVFS, "unmount", str(mountpoint)])
    assert not os.path.ismount(mountpoint)

    waiting = start(first)
    try:
        wait_started(waiting)
        (mountpoint / "precious.txt").write_text("mine")
        open_gate()
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 2 and "not empty" in err, (out, err)
        assert not os.path.ismount(mountpoint) and (mountpoint / "precious.txt").read_text() == "mine"
    finally:
        if waiting.poll() is None:
            waiting.kill()
        if os.path.ismount(mountpoint):
            run([MIXVFS, "unmount", str(mountpoint)])


def test_a_mount_cancelled_while_its_token_command_runs_stops_that_command_and_its_children(tmp_path, devserver):
    session = write_session(tmp_path / "s.json", [{"id": "s", "artist": "A", "title": "T", "size": 10,
                                                   "cloud_stream_path": "/stream/t.wav"}], server=devserver.url)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    started, gate = tmp_path / "started", tmp_path / "gate"
    os.mkfifo(gate)
    marker = f"{os.getpid() % 1000 + 43000}"  # `sleep <marker>`: the token command's child, found by its arguments
    waiting = subprocess.Popen([MIXVFS, "mount", str(session), str(mountpoint), "--cache-dir", str(tmp_path / "c"),
                                "--log-file", str(tmp_path / "m.log"), "--no-prefetch",
                                "--token-command", f"sleep {marker} & touch {started}; cat {gate}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not started.exists():
            assert waiting.poll() is None, waiting.communicate()
            time.sleep(0.02)
        waiting.send_signal(signal.SIGTERM)
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 130 and "mount cancelled" in err, (out, err)
        assert not os.path.ismount(mountpoint)
        while run(["pgrep", "-f", f"^sleep {marker}$"]).returncode == 0:  # SIGKILLed: gone once reaped
            time.sleep(0.02)
    finally:
        if waiting.poll() is None:
            waiting.kill()
        run(["pkill", "-f", f"^sleep {marker}$"])


def test_a_foreground_mount_with_stderr_closed_serves(tmp_path):
    """`--foreground 2>&-` (a service manager that gives no stderr): the daemon has no stream for its fault
    handler, and mounted nothing at all, silently."""
    source = tmp_path / "a.wav"
    write_sized(source, 5000, seed=1)
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "T", "file_path": str(source)}])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    daemon = subprocess.Popen(["bash", "-c", f"exec {MIXVFS} mount {session} {mountpoint} --cache-dir "
                                             f"{tmp_path / 'c'} --no-prefetch --foreground 2>&-"])
    try:
        while not os.path.ismount(mountpoint):
            assert daemon.poll() is None, f"the daemon ended with {daemon.returncode}"
            time.sleep(0.02)
        assert (mountpoint / "A - T.wav").read_bytes() == source.read_bytes()
        assert run([MIXVFS, "unmount", str(mountpoint)]).returncode == 0
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        if os.path.ismount(mountpoint):
            run(["umount", "-l", str(mountpoint)])
