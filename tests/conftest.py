"""Shared fixtures: a real dev server process, session manifests, and real FUSE mounts made with the
real `mixvfs` command. Under CI=true a machine that cannot mount fails the mount tests; it never skips."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from mixvfs import host
from tools.devserver import DevServer

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MIXVFS = str(BIN / "mixvfs")
CACHECTL = str(BIN / "cachectl")


# A run started in the background by a shell without job control (`make test &` in a script) inherits SIGINT
# ignored, and so would every command it starts: the tests of Ctrl-C would send it to deaf processes. A
# handler here (Python's own) is reset to the default in each child at its exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# `make test` runs the mount tier a second time with FUSE_LIBRARY_NAME=fuse: libfuse 2, the API macFUSE
# gives mfusepy on macOS. A lane that asks for a libfuse must run on it, in this process and in the daemon.
LANE_MAJORS: dict[str, int] = {"fuse": 2, "fuse3": 3}


def _linux_call(name: str) -> Any:
    """``os.<name>``; in the portable lane (tests/portable_lane), which takes it away from mixvfs, the
    original: the tests still observe what the mount publishes."""
    lane = sys.modules.get("portable_lane")
    call = getattr(os, name, None) or getattr(lane, "REMOVED", {}).get(name)
    if call is None:
        missing_part(f"os.{name} does not exist here", "CI runs on Linux, which has it")
    return call


def getxattr(path: str | os.PathLike[str], name: str) -> bytes:
    return bytes(_linux_call("getxattr")(path, name))


def listxattr(path: str | os.PathLike[str]) -> list[str]:
    return list(_linux_call("listxattr")(path))


def lane_libfuse_major() -> int | None:
    """The libfuse major version FUSE_LIBRARY_NAME asks for, if it names one."""
    return LANE_MAJORS.get(os.environ.get("FUSE_LIBRARY_NAME", ""))


def fuse_problem() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "fusermount is not installed (apt install fuse3)"
    host.prefer_libfuse3()  # as the mount's start does, before mfusepy loads a libfuse
    try:
        import mixvfs.vfs.adapter.fuse_ops  # noqa: F401
    except (OSError, AttributeError) as exc:
        wanted = lane_libfuse_major()
        return f"libfuse{'' if wanted is None else f' {wanted}'} is not loadable: {exc}"
    return None


def missing_part(what: str, ci_must: str) -> NoReturn:
    """A real part of the tests cannot run here: under CI=true that fails the test (CI must run every part;
    a skip would hide it), on a developer's machine it skips with the cause."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; {ci_must}")
    pytest.skip(what)


# Whether the running test carries the `fuse` marker (set per test by `_fuse_marker_of_the_test`): `make unit`
# selects `-m "not fuse"` and must never mount, so a test that reaches for a mount unmarked fails loudly.
_TEST_IS_MARKED_FUSE = False


# Folders whose tests share one costly thing per process (package- or module-scoped): under pytest-xdist
# (`make test`) each runs on one worker (--dist loadgroup), so it is built once, not once per worker.
ONE_WORKER = {
    "wan": "one emulated link (network namespaces, nginx) for the folder",
    "team": "a module's nginx, stopped and started again on its port by some tests",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the mount fixture is a mounting test: it gets the `fuse` marker without writing it."""
    for item in items:
        if "mounter" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fuse)
        folder = item.path.relative_to(REPO).parts[1] if item.path.is_relative_to(REPO / "tests") else ""
        if folder in ONE_WORKER:
            item.add_marker(pytest.mark.xdist_group(folder))


@pytest.fixture(autouse=True)
def _fuse_marker_of_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    global _TEST_IS_MARKED_FUSE
    _TEST_IS_MARKED_FUSE = request.node.get_closest_marker("fuse") is not None
    yield
    _TEST_IS_MARKED_FUSE = False


def require_fuse() -> None:
    if not _TEST_IS_MARKED_FUSE:
        pytest.fail("this test mounts: mark it @pytest.mark.fuse (or use the mounter fixture), "
                    "so that `make unit` (-m 'not fuse') leaves it out")
    problem = fuse_problem()
    if problem is not None:
        missing_part(f"FUSE mounts are impossible here ({problem})", "CI must be able to mount")
    from mixvfs.vfs.adapter.fuse_ops import LIBFUSE_MAJOR

    wanted = lane_libfuse_major()
    if wanted is not None and wanted != LIBFUSE_MAJOR:  # never a lane that silently tests the other libfuse
        pytest.fail(f"FUSE_LIBRARY_NAME={os.environ['FUSE_LIBRARY_NAME']} asks for libfuse {wanted}, "
                    f"but mfusepy loaded libfuse {LIBFUSE_MAJOR}")


def daemon_libfuse_major(pid: int) -> int | None:
    """The libfuse major version mapped into process ``pid`` (Linux /proc; None where it cannot be told)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    names = {Path(line.split()[-1]).name for line in maps.splitlines() if "libfuse" in line}
    majors = {3 if name.startswith("libfuse3.") else 2 for name in names if name.startswith("libfuse")}
    return majors.pop() if len(majors) == 1 else None


def without_root_override(cmd: list[str]) -> list[str]:
    """``cmd`` bound by files' permission bits as their owner is: root (who runs these tests in CI) reads and
    writes anything unless it runs without the capabilities that override them (its children inherit that)."""
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]


@contextlib.contextmanager
def database_refusing_writes(folder: Path) -> Iterator[None]:
    """While inside: the SQLite database diskcache keeps in ``folder`` refuses every write, its file and its
    write-ahead log immutable (``chattr +i``: root, on a file system that has the flag, as CI's ext4 does).

    Never the ``-shm`` beside them (the WAL index): SQLite maps it and writes through the mapping, even to
    read after a commit, and on ext4 a write fault on a mapped page of an immutable file is SIGBUS. A commit,
    then ``chattr +i`` of the three files, then a read kills the process every time, with no error for SQLite
    to return; without the ``-shm`` the read succeeds and a write fails with "disk I/O error"."""
    if shutil.which("chattr") is None:
        missing_part("chattr is not installed (e2fsprogs)", "CI installs it")
    refused = [folder / "cache.db", folder / "cache.db-wal"]
    done = run(["chattr", "+i", *map(str, refused)])
    if done.returncode != 0:
        missing_part(f"chattr +i is refused here: {done.stderr.strip()}", "CI runs as root on ext4")
    try:
        yield
    finally:
        run(["chattr", "-i", *map(str, refused)], check=True)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll for a state change the test cannot be told about (a file another process removes, a line a server
    logs after its answer). ``timeout`` guards against a hang and is never a time window: True as soon as
    ``predicate`` holds, False if it still does not after ``timeout`` s. ``interval=0`` spins, for a test
    that must act while another thread is still inside the change it waits to see begin."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def run(cmd: list[str], *, check: bool = False, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(autouse=True, scope="session")
def private_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's state, cache and config folders, for this test process and every command and daemon it
    starts (they inherit the environment), are folders of its own: mounts note their report path in the state
    folder (mixvfs.vfs.fs.history) and a command without --cache-dir uses the default cache, which must be
    neither the developer's nor another xdist worker's; and the developer's config file changes no test."""
    folders = {name: tmp_path_factory.mktemp(name.lower()) for name in ("XDG_STATE_HOME", "XDG_CACHE_HOME",
                                                                       "XDG_CONFIG_HOME")}
    old = {name: os.environ.get(name) for name in folders}
    os.environ.update({name: str(folder) for name, folder in folders.items()})
    yield folders["XDG_STATE_HOME"]
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def server_root(tmp_path: Path) -> Path:
    root = tmp_path / "server"
    root.mkdir()
    return root


@pytest.fixture
def devserver(server_root: Path) -> Iterator[DevServer]:
    with DevServer(server_root) as server:
        yield server


def write_session(path: Path, tracks: list[dict[str, Any]], *, server: str | None = None,
                  name: str = "Test Session") -> Path:
    doc: dict[str, Any] = {"name": name, "tracks": tracks}
    if server is not None:
        doc["server"] = server
    path.write_text(json.dumps(doc))
    return path


@dataclass
class Mount:
    path: Path
    cache_dir: Path
    report_path: Path
    session: Path
    log_file: Path
    mounted: bool = True
    extra: list[str] = field(default_factory=list)
    pid: int | None = None  # the daemon's, once mounted
    crash_expected: bool = False  # a test that kills the daemon by a fatal signal: its log holds the stacks

    def report(self) -> dict[str, Any]:
        return dict(json.loads(self.report_path.read_text()))

    def track(self, track_id: str) -> dict[str, Any]:
        for record in self.report()["tracks"]:
            if record["id"] == track_id:
                return dict(record)
        raise KeyError(track_id)

    def wait_track(self, track_id: str, predicate: Callable[[dict[str, Any]], bool],
                   timeout: float = 10.0) -> dict[str, Any]:
        """The report is rewritten in batches (failures at once); poll until it says what we expect."""
        wait_until(lambda: predicate(self.track(track_id)), timeout)
        return self.track(track_id)

    def unmount(self) -> None:
        if self.mounted:
            run([MIXVFS, "unmount", str(self.path)], check=True)
            self.mounted = False

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def daemon_state(self) -> str:
        """Whether the daemon still runs: a test that meets ENOTCONN or a report that stopped changing says so."""
        if self.pid is None:
            return "daemon pid unknown"
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return f"daemon {self.pid} is gone"
        return f"daemon {self.pid} is {'dead (a zombie)' if state == 'Z' else 'alive'}"

    def diagnosis(self, lines: int = 40) -> str:
        """What a failing mount test prints beside its own facts: the daemon alive or not, its log's tail."""
        tail = "\n".join(self.log().splitlines()[-lines:])
        return f"{self.daemon_state()}; its log ends:\n{tail}"


def eio_without_a_report_line(report: dict[str, Any]) -> list[str]:
    """Every EIO the daemon answered (``eio_answers``, per track id) must have its reason in the report: the
    track failed or is missing, or a reader's error is kept, or a note says why (a previewer served stored
    bytes only: no copier's failure). What breaks that promise, as sentences."""
    tracks = {t.get("id"): t for t in report.get("tracks", [])}
    broken = []
    for track_id, count in report.get("eio_answers", {}).items():
        track = tracks.get(track_id)
        if track_id == "":
            broken.append(f"{count} EIO answer(s) about no track")
        elif track is not None and not (track.get("status") in ("failed", "missing") or track.get("error")
                                        or track.get("reader_error") or track.get("note")):
            broken.append(f"{count} EIO answer(s) for {track.get('name')!r}, whose report line says nothing: {track}")
    return broken


# What only a crash writes to the daemon's log: an exception nobody caught (a thread's, the interpreter's, one
# in a finalizer, logging's own), or a traceback logged above debug (our one-line causes carry none).
CRASH_SIGNS = ("Traceback (most recent call last)", "Exception in thread", "Exception ignored in",
               "Fatal Python error", "--- Logging error ---", "Segmentation fault")
TRACEBACK = "Traceback (most recent call last)"
# The daemon's log format (mixvfs/vfs/commands/cli.py): time, level, logger, message.
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) ")
CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def crash_in_log(log: str) -> str | None:
    """The first crash the daemon's log holds, with the lines around it; None if there is none.

    A traceback right under a DEBUG record (and the chained ones it holds) is not one: at --log-level debug the
    errno guard logs each answer's cause chain with its traceback (mixvfs/vfs/adapter/errno_map.py), which is
    what debug asks for."""
    lines = log.splitlines()
    debug_record = False  # the lines since the last record belong to a DEBUG record
    for at, line in enumerate(lines):
        record = RECORD.match(line)
        if record is not None:
            debug_record = record.group(1) == "DEBUG"
        if not any(sign in line for sign in CRASH_SIGNS):
            continue
        before = lines[at - 1] if at > 0 else ""
        under_debug = RECORD.match(before) is not None or any(lines[at - 2].startswith(c) for c in CHAINED)
        if line.startswith(TRACEBACK) and debug_record and under_debug:
            continue
        return "\n".join(lines[max(0, at - 2):at + 20])
    return None


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Mount with the real `mixvfs mount` (daemon in the background); always unmounted at teardown."""
    require_fuse()
    mounts: list[Mount] = []

    def mount(session: Path, *extra: str, cache_dir: Path | None = None, mountpoint: Path | None = None,
              env: dict[str, str] | None = None, expect_ok: bool = True, wrap: list[str] | None = None,
              default_report: bool = False) -> Mount:
        index = len(mounts)
        mp = mountpoint or tmp_path / f"mnt{index}"
        with contextlib.suppress(FileExistsError):  # not exist_ok: its is_dir() check fails on a dead mount
            mp.mkdir()
        cache = cache_dir or tmp_path / "cache"
        report = tmp_path / f"report{index}.json"
        log = tmp_path / f"mixvfs{index}.log"
        reporting = [] if default_report else ["--report", str(report)]  # default: where the mount puts it
        cmd = [*(wrap or []), MIXVFS, "mount", str(session), str(mp), "--cache-dir", str(cache), *reporting,
               "--log-file", str(log), *extra]
        done = run(cmd, env={**os.environ, **(env or {})})
        if expect_ok and done.returncode != 0:
            log_text = log.read_text() if log.exists() else ""
            raise AssertionError(f"mount failed ({done.returncode}): {done.stderr}\n{log_text}")
        if default_report and done.returncode == 0:
            report = Path(getxattr(mp, "user.mixvfs.report").decode())
        m = Mount(mp, cache, report, session, log, mounted=done.returncode == 0)
        m.extra = [done.stdout, done.stderr, str(done.returncode)]  # for tests of failing mounts
        mounts.append(m)  # before any check below: teardown unmounts it whatever happens
        if m.mounted:
            with contextlib.suppress(OSError):  # a mount another user made answers root nothing (no allow_other)
                m.pid = int(getxattr(mp, "user.mixvfs.pid"))
        wanted = lane_libfuse_major()
        if m.mounted and wanted is not None and sys.platform == "linux":
            assert m.pid is not None and daemon_libfuse_major(m.pid) == wanted, \
                f"the daemon does not run on libfuse {wanted}"
        return m

    yield mount
    for m in mounts:
        if m.mounted:
            with contextlib.suppress(Exception):
                run([MIXVFS, "unmount", str(m.path)])
        # Whatever happened (a killed daemon, a failed assertion): leave no mount, live or dead, behind.
        if str(m.path) in Path("/proc/mounts").read_text():
            run(["umount", "-l", str(m.path)])
    # The promise, for every test that mounted: never an EIO without a line in the report saying why.
    for m in mounts:
        with contextlib.suppress(OSError, ValueError):
            report = m.report()
            broken = eio_without_a_report_line(report)
            assert not broken, f"{m.path}: " + "; ".join(broken)
    # A daemon that crashed answers EIO too: a fault test expecting EIO could not tell the crash from the fault.
    for m in mounts:
        crash = None if m.crash_expected else crash_in_log(m.log())
        assert crash is None, f"{m.path}: the daemon's log holds a crash:\n{crash}"
