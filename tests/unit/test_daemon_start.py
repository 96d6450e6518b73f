"""How ``mixvfs mount`` starts its daemon (mixvfs/vfs/fs/mount.py's ``start_daemon``): on Linux this process
forked (a session of its own, stdin from /dev/null, stdout and stderr into the log, the child never back in the
command), elsewhere, or asked with ``MIXVFS_DAEMON_START=spawn``, or with a second thread running, a new
interpreter. Each case runs in a fresh interpreter of its own: a pytest worker has threads, and a fork copies
only the one that calls it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mixvfs import host

PRELUDE = """
import json, os, sys, threading, time
from pathlib import Path
from mixvfs.cache.errors import ConfigError
from mixvfs.vfs.fs import mount
log = Path(sys.argv[1])
spawned = []
class Spawned:  # what a new interpreter's daemon that ended at once would look like
    returncode = 7
    def poll(self): return 7
    def wait(self, timeout=None): return 7
    def terminate(self): pass
    def kill(self): pass
mount._spawn = lambda argv, write_end, log_file: spawned.append(argv) or Spawned()
def say(fd, message):
    os.write(fd, (json.dumps(message) + "\\n").encode())
def result(**fields):
    print("RESULT " + json.dumps({"spawned": len(spawned), **fields}), flush=True)
"""


def run_case(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> tuple[dict[str, object], str]:
    log = tmp_path / "daemon.log"
    code = PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and len(lines) == 1, done
    return json.loads(lines[0].removeprefix("RESULT ")), log.read_text() if log.exists() else ""


def linux_only() -> None:
    if not host.LINUX:
        pytest.skip("the fork start is Linux's")


def test_the_daemon_is_this_process_forked_in_a_session_of_its_own_writing_into_the_log(tmp_path: Path) -> None:
    linux_only()
    seen, log = run_case(tmp_path, """
        def serve(fd):
            print("the child's stdout")
            print("the child's stderr", file=sys.stderr)
            say(fd, {"note": "waiting for the server"})
            say(fd, {"ok": True, "pid": os.getpid(), "sid": os.getsid(0), "stdin": os.read(0, 10).decode()})
            time.sleep(0.2)
            return 0
        message = mount.start_daemon(["unused"], log, serve)
        result(message=message, me=os.getpid())
    """, env={host.DAEMON_START_ENV: ""})
    message = seen["message"]
    assert isinstance(message, dict) and seen["spawned"] == 0
    assert message["ok"] is True and message["pid"] != seen["me"]
    assert message["sid"] == message["pid"], "the daemon leads a session of its own, as start_new_session"
    assert message["stdin"] == "", "stdin is /dev/null"
    assert "the child's stdout\n" in log and "the child's stderr\n" in log
    assert "RESULT" not in log, "nothing of the command's own output went to the log"


@pytest.mark.parametrize(("body", "words"), [
    ("os.kill(os.getpid(), 9)", "was killed by SIGKILL before the folder was live"),
    ("raise RuntimeError('boom in the daemon')", "exited with status 1 before the folder was live"),
    ("return 3", "exited with status 3 before the folder was live"),
    ("sys.exit(4)", "exited with status 4 before the folder was live"),
])
def test_a_forked_daemon_that_ends_without_a_word_is_an_error_with_its_status(tmp_path: Path, body: str,
                                                                               words: str) -> None:
    linux_only()
    seen, log = run_case(tmp_path, f"""
        def serve(fd):
            {body}
        try:
            mount.start_daemon(["unused"], log, serve)
            result(error=None)
        except ConfigError as exc:
            result(error=str(exc))
    """, env={host.DAEMON_START_ENV: ""})
    assert seen["spawned"] == 0
    assert words in str(seen["error"])
    if "boom" in body:
        assert "RuntimeError: boom in the daemon" in log, "the child's traceback is in the log"


def test_an_error_said_by_a_forked_daemon_reaches_the_command_word_for_word(tmp_path: Path) -> None:
    linux_only()
    seen, _ = run_case(tmp_path, """
        def serve(fd):
            say(fd, {"error": "s.json: track 1 (id 'b'): field 'size' must be a whole number"})
            return 2
        try:
            mount.start_daemon(["unused"], log, serve)
        except ConfigError as exc:
            result(error=str(exc))
    """, env={host.DAEMON_START_ENV: ""})
    assert seen["error"] == "s.json: track 1 (id 'b'): field 'size' must be a whole number"


@pytest.mark.parametrize("why", ["asked", "a second thread"])
def test_spawn_when_asked_or_when_another_thread_runs(tmp_path: Path, why: str) -> None:
    seen, _ = run_case(tmp_path, """
        if len(sys.argv) > 2:
            threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        def serve(fd):
            raise AssertionError("forked")
        try:
            mount.start_daemon(["mount", "s.json", "mnt"], log, serve)
        except ConfigError as exc:
            result(error=str(exc))
    """.replace("len(sys.argv) > 2", "True" if why == "a second thread" else "False"),
        env={host.DAEMON_START_ENV: "spawn" if why == "asked" else ""})
    assert seen["spawned"] == 1  # the stand-in for a new interpreter was asked to start it
    assert "exited with status 7" in str(seen["error"])


def test_forking_is_linux_s_and_spawn_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "LINUX", True)
    monkeypatch.delenv(host.DAEMON_START_ENV, raising=False)
    assert host.fork_daemon()
    monkeypatch.setenv(host.DAEMON_START_ENV, " Spawn ")
    assert not host.fork_daemon()
    monkeypatch.delenv(host.DAEMON_START_ENV)
    monkeypatch.setenv(host.DAEMON_START_ENV, "fork")
    assert host.fork_daemon()
    monkeypatch.setenv(host.DAEMON_START_ENV, "bogus")
    with pytest.raises(ValueError, match="MIXVFS_DAEMON_START is 'bogus': it takes fork or spawn"):
        host.fork_daemon()
    monkeypatch.delenv(host.DAEMON_START_ENV)
    monkeypatch.setattr(host, "LINUX", False)  # macOS: a process that loaded Apple's frameworks must exec
    assert not host.fork_daemon()


def test_the_forked_handle_answers_as_popen_does() -> None:
    linux_only()
    from mixvfs.vfs.fs.mount import Forked

    pid = os.fork()
    if pid == 0:  # the child only sleeps, then ends without touching anything of the parent's
        os.execv("/bin/sleep", ["sleep", "30"])
    child = Forked(pid)
    assert child.poll() is None and child.returncode is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.05)
    child.terminate()
    assert child.wait(timeout=10) == -15 and child.poll() == -15
    child.kill()  # ended: nothing to signal, no error


def test_a_forked_daemon_keeps_no_descriptor_the_command_was_given(tmp_path: Path) -> None:
    """A script's pipe left open to ``mixvfs mount`` (beyond stdin, stdout and stderr, without close-on-exec) is
    closed in the daemon, as a new interpreter's start closes it: a reader of that pipe sees its end once the
    command has ended, not when the daemon does. The command's own descriptors (close-on-exec) stay."""
    linux_only()
    seen, _ = run_case(tmp_path, """
        import select
        given_r, given_w = os.pipe()
        os.set_inheritable(given_w, True)
        ours = os.open(os.devnull, os.O_RDONLY)  # close-on-exec, as Python opens everything
        def same(fd, was):
            try:
                now = os.fstat(fd)
            except OSError:
                return False
            return (now.st_dev, now.st_ino) == was
        given_id, ours_id = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (given_w, ours)]
        def serve(fd):
            say(fd, {"ok": True, "given": same(given_w, given_id), "ours": same(ours, ours_id)})
            time.sleep(3)
            return 0
        message = mount.start_daemon(["unused"], log, serve)
        os.close(given_w)
        ended, _, _ = select.select([given_r], [], [], 2)
        eof = bool(ended) and os.read(given_r, 1) == b""
        result(given=message["given"], ours=message["ours"], eof=eof)
    """, env={host.DAEMON_START_ENV: ""})
    assert seen["given"] is False, "the pipe the command was given is closed in the daemon"
    assert seen["ours"] is True, "the command's own descriptor stays"
    assert seen["eof"] is True, "the pipe ended while the daemon still ran"
