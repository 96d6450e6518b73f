"""Mount lifecycle, the FUSE-free half: checking the mountpoint (and clearing a stale one), starting the daemon
and waiting until the folder is live, and unmounting (waiting for the daemon's final report). The daemon itself,
which drives the FUSE adapter, is :mod:`mixvfs.vfs.commands.daemon`."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mixvfs import host
from mixvfs.cache.errors import ConfigError, MixvfsError
from mixvfs.cache.location import make_private_dir
from mixvfs.cache.policy import RuntimeConfig
from mixvfs.vfs.fs import history
from mixvfs.vfs.fs.deadlines import RequestBounds, request_bounds

log = logging.getLogger(__name__)

READY_TIMEOUT = 300.0  # probing thousands of tracks' sizes can take a while on a slow server
PID_XATTR = "user.mixvfs.pid"
REPORT_XATTR = "user.mixvfs.report"


@dataclass
class MountOptions:
    session_path: Path
    mountpoint: Path
    runtime: RuntimeConfig  # the cache, downloads, retries and token, from the settings layers
    report_path: Path | None
    log_file: Path | None
    failed_for: float
    prefetch: bool
    threads: int = 16
    attr_timeout: float = 1.0  # keep <= 1 s: live reloads must show within 2 s through the kernel's caches
    default_server: str | None = None  # for manifests that name no server (from the config)
    allow_non_empty: bool = False  # mount over a folder that holds files (they are hidden while mounted)
    passthrough: str = "auto"  # FUSE passthrough for cached tracks where the kernel allows it; "off": never
    request_timeout: str | float = "auto"  # the longest one request waits for a download (vfs/fs/deadlines.py)
    token_timeout: float = 30.0  # a token command's limit: part of the longest request (a refresh at a 401)

    def bounds(self) -> RequestBounds:
        return request_bounds(self.request_timeout, stall_timeout=self.runtime.stall_timeout,
                              token_timeout=self.token_timeout)


# -- the mountpoint -------------------------------------------------------------------------------------


def is_stale(mountpoint: Path) -> bool:
    try:
        os.stat(mountpoint)
        if os.path.ismount(mountpoint):
            # The kernel may answer stat from its attribute cache for a second after the daemon died;
            # opening the folder always asks the daemon.
            os.close(os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY))
    except OSError as exc:
        # ENOTCONN ("Transport endpoint is not connected"); ECONNABORTED when the kernel saw the daemon
        # die with requests in flight (measured on 6.18 after kill -9 mid-download).
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


MOUNT_TYPE = "fuse.mixvfs"  # what the mount table says of ours (the adapter mounts with subtype "mixvfs")


def foreign_mount(mountpoint: Path, pid: int | None = None) -> str | None:
    """Why ``mountpoint``'s mount is not for mixvfs to unmount: the mount table names another file system (a
    tmpfs, someone's sshfs: unmounting a tmpfs loses its files). Where the table cannot be read (macOS), a live
    daemon of ours (``pid``, from the state folder or the root's attributes) answers for it."""
    fstype = host.mount_type(str(mountpoint))
    if fstype == MOUNT_TYPE or (fstype is None and pid is not None):
        return None
    kind = f" (it is {fstype})" if fstype is not None else ""
    return (f"{mountpoint} is mounted, but not by mixvfs{kind}: mixvfs unmounts only its own mounts; use umount "
            "if that is what you want")


def clear_stale(mountpoint: Path) -> None:
    """A daemon killed with -9 leaves "Transport endpoint is not connected" behind: lazily unmount it (ours only:
    another file system's dead mount is its owner's to clear)."""
    fstype = host.mount_type(str(mountpoint))
    if fstype is not None and fstype != MOUNT_TYPE:
        raise ConfigError(f"{mountpoint}: a dead {fstype} mount is there, not a mixvfs one; clear it with umount -l")
    command = host.unmount_command(str(mountpoint), lazy=True)
    subprocess.run(command, capture_output=True, check=False)
    if is_stale(mountpoint):
        raise ConfigError(f"{mountpoint}: a dead mount is left there and could not be cleared ({' '.join(command)})")
    log.warning("cleared a stale mount at %s", mountpoint)


def resolved_mountpoint(typed: Path) -> Path:
    """``typed`` as the kernel resolves it, symbolic links and ``..`` included. ``realpath`` alone reads
    ``nope/../mnt`` as ``mnt`` even where ``nope`` is missing, where the shell, ``cp`` and the kernel find no
    such path: the mount would go to a folder the user did not name."""
    resolved = Path(os.path.realpath(typed))
    # os.path's answers, not Path.exists(): a dead mount there raises ENOTCONN, which check_mountpoint clears.
    if not os.path.lexists(typed) and os.path.exists(resolved):
        missing = next((prefix for prefix in (typed, *typed.parents) if not os.path.lexists(prefix)
                        and os.path.lexists(prefix.parent)), typed)
        raise ConfigError(f"mountpoint {typed} does not exist: {missing} is missing")
    return resolved


def check_mountpoint(mountpoint: Path, *, allow_non_empty: bool = False) -> None:
    if is_stale(mountpoint):
        clear_stale(mountpoint)
    if not mountpoint.exists():
        raise ConfigError(f"mountpoint {mountpoint} does not exist (create the folder first)")
    if not mountpoint.is_dir():
        raise ConfigError(f"mountpoint {mountpoint} is not a folder")
    if os.path.ismount(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} is already mounted (mixvfs unmount {mountpoint})")
    if (problem := host.mountpoint_access_problem(mountpoint)) is not None:
        raise ConfigError(f"cannot mount {mountpoint}: {problem}")
    if not allow_non_empty and holds_files(mountpoint):
        # libfuse 3 mounts over files without a word: they would vanish from view until the unmount.
        raise ConfigError(f"mountpoint {mountpoint} is not empty: mounting would hide its files "
                          "(use an empty folder, or --allow-non-empty)")


def holds_files(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is not None
    except OSError as exc:
        raise ConfigError(f"mountpoint {folder}: cannot list it: {exc.strerror}") from None


# -- the folders we write to ------------------------------------------------------------------------------


def check_paths(options: MountOptions, *, log_file: bool) -> None:
    """Prove, before anything is mounted, that the cache folder, the report's folder and (for a background
    mount) the log file are usable: one line naming the path and the cause, not a traceback in the daemon."""
    cache_dir = options.runtime.cache.root
    usable_folder(cache_dir, f"cache folder {cache_dir}", private=True)
    report = options.report_path
    if report is not None:
        if report.is_dir():
            raise ConfigError(f"report {report}: it is a folder, not a file")
        usable_folder(report.parent, f"report {report}")
        other = live_mount_writing(report, besides=options.mountpoint)
        if other is not None:  # two mounts rewriting one file: each would show the other's tracks
            raise ConfigError(f"report {report}: the live mount at {other} writes it; give this mount a "
                              "--report of its own (or none: each mount then has its own)")
    if log_file and options.log_file is not None:
        usable_folder(options.log_file.parent, f"log file {options.log_file}")
        try:
            with open(options.log_file, "ab"):
                pass
        except OSError as exc:
            raise ConfigError(f"log file {options.log_file}: cannot write it: {exc.strerror}") from None


def usable_folder(folder: Path, what: str, *, private: bool = False) -> None:
    """Create ``folder`` if needed and create (and remove) a file in it: permissions, a read-only file
    system or a file in the way all show here, as ``what: cause``."""
    try:
        if private:
            make_private_dir(folder)
        else:
            folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mixvfs-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{what}: {why_unusable(folder, exc, named=what.endswith(str(folder)))}") from None


def why_unusable(folder: Path, exc: OSError, *, named: bool) -> str:
    """The cause, naming ``folder`` unless the message already does."""
    if isinstance(exc, FileExistsError) or (folder.exists() and not folder.is_dir()):
        return "it is a file, not a folder" if named else f"{folder} is a file, not a folder"
    if isinstance(exc, NotADirectoryError):
        for parent in folder.parents:
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a file, not a folder"
    where = "it" if named else str(folder)
    if not folder.is_dir():
        return f"cannot create {where}: {exc.strerror or exc}"
    return f"cannot create files in {where}: {exc.strerror or exc}"


# -- starting -------------------------------------------------------------------------------------------


def start_daemon(argv: list[str], log_file: Path, serve: Callable[[int], int]) -> dict[str, object]:
    """Start the daemon detached and wait until it says the folder is live. Where the platform seam allows
    (:func:`mixvfs.host.fork_daemon`), the daemon is this very process, forked: its interpreter, its imports
    and its checks are not paid a second time (~80 ms of a mount's start), and it runs ``serve(ready_fd)``;
    elsewhere a new interpreter runs ``mixvfs mount ... --foreground``."""
    try:
        forking = host.fork_daemon()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    log_file.parent.mkdir(parents=True, exist_ok=True)
    # Above 0-2 whatever this command was given: with its stdin, stdout or stderr closed (`>&-`), a pipe or the log
    # would otherwise take one of those numbers, and the daemon's own stdio would land on top of it.
    read_end, write_end = (_above_stdio(fd) for fd in os.pipe())
    try:
        # A fork copies one thread: with another running (a program that calls this), a lock it held would
        # stay locked in the child for ever.
        alone = threading.active_count() == 1
        child: Daemon = (_fork(serve, read_end, write_end, log_file) if forking and alone
                         else _spawn(argv, write_end, log_file))
    finally:
        os.close(write_end)  # the daemon has its copy: ours must go, or the pipe never reports its death
    try:
        with _stop_signals_cancel():
            message = _read_ready(read_end, child)
    except MountCancelled:
        # Ctrl-C, or the terminal or session going away, while the daemon was still starting (probing a
        # slow server, say): it is in a session of its own, so nothing else would stop it.
        child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
        if child.poll() is None:
            child.kill()
        raise
    finally:
        os.close(read_end)
    if "error" in message:
        raise ConfigError(str(message["error"]))
    return message


class Daemon(Protocol):
    """The starting daemon as the waiting command sees it: :class:`subprocess.Popen`'s part of it."""

    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


def _spawn(argv: list[str], write_end: int, log_file: Path) -> Daemon:
    with open(log_file, "ab") as log_handle:
        return subprocess.Popen(
            # -P: the working directory is not put first on the daemon's path, so a `mixvfs` folder there
            # (a checkout of ours, another version) cannot stand in for the package that runs this command
            # (the cwd must stay: argv may hold relative paths).
            [sys.executable, "-P", "-m", "mixvfs.vfs.commands.cli", *argv, "--foreground",
             "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL, stdout=log_handle, stderr=log_handle,
            pass_fds=(write_end,), start_new_session=True,
        )


def _fork(serve: Callable[[int], int], read_end: int, write_end: int, log_file: Path) -> Daemon:
    """This process forked, as ``subprocess.Popen(start_new_session=True)`` would start the daemon: a session
    of its own, stdin from /dev/null, stdout and stderr into the log; the child never returns from here."""
    log_fd = _above_stdio(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644))
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: the command was started with it closed
            stream.flush()  # or what is buffered would be written twice, once by each process
    pid = os.fork()
    if pid:
        os.close(log_fd)
        return Forked(pid)
    status = 1
    try:
        os.setsid()
        os.close(read_end)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        if null > 2:
            os.close(null)
        os.close(log_fd)
        _close_inherited(keep=write_end)
        # A command started with stdout or stderr closed has no Python stream for it; the daemon's go to the log
        # now, as a new interpreter's would (its fault handler and its last words need stderr).
        sys.stdout = sys.stdout or open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        sys.stderr = sys.stderr or open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        status = serve(write_end)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the child ends here whatever happens: never back in the command
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


def _above_stdio(fd: int) -> int:
    """``fd``, or a close-on-exec copy of it numbered 3 or more when it took the place of a closed stdin, stdout
    or stderr."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


def _close_inherited(*, keep: int) -> None:
    """Close what this process was given by the program that started it (descriptors beyond 0-2 without
    close-on-exec), as ``subprocess.Popen(close_fds=True)`` does for a new interpreter: a pipe a script or a
    CI runner left open would otherwise stay open in the daemon for as long as it serves, and whatever reads
    that pipe to its end would wait as long. Our own descriptors (close-on-exec, as Python opens them) stay."""
    for fd in host.open_fds():
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):  # the listing's own descriptor, already closed
                if os.get_inheritable(fd):
                    os.close(fd)


class Forked:
    """A forked daemon by its pid, with :class:`subprocess.Popen`'s calls the waiting command uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


class MountCancelled(MixvfsError):
    """The waiting ``mixvfs mount`` was told to stop before the folder was live."""

    exit_status = 130  # as a shell reports Ctrl-C


@contextlib.contextmanager
def _stop_signals_cancel() -> Iterator[None]:
    """While ``mixvfs mount`` waits for its daemon: SIGINT, SIGTERM and SIGHUP cancel the mount (Python's
    default for the last two would end this process at once and leave the daemon starting)."""
    def cancel(signum: int, _frame: object) -> None:
        raise MountCancelled(f"mount cancelled ({signal.Signals(signum).name}): the daemon was stopped")

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, cancel) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _read_ready(fd: int, child: Daemon) -> dict[str, object]:
    """The daemon's word: "ok" or an error, the last line; lines before it are notes for the user (what the
    mount waits for, what the server said), shown as they come."""
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
            while b"\n" in data:
                line, data = data.split(b"\n", 1)
                message = dict(json.loads(line))
                if "note" not in message:
                    return message
                print(f"mixvfs: {message['note']}", file=sys.stderr, flush=True)
    else:
        child.terminate()
        return {"error": "the mount daemon did not come up in time"}
    # The pipe closed without a word: the daemon is ending (its files are closed a moment before its status
    # can be had), or it closed the pipe and lives on.
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=5)
    if child.returncode is None:
        child.terminate()
        return {"error": "the mount daemon closed its pipe to this command without a word and was stopped"}
    if child.returncode < 0:
        return {"error": f"the mount daemon was killed by {signal_name(-child.returncode)} before the folder was live"}
    return {"error": f"the mount daemon exited with status {child.returncode} before the folder was live"}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# -- stopping -------------------------------------------------------------------------------------------


def mount_info(mountpoint: Path) -> tuple[int | None, Path | None]:
    """The daemon's pid and report path (None, None when not a live mixvfs mount): from the state folder,
    where the daemon noted them as the folder went live, while that daemon still runs; else from the root's
    extended attributes (a mount made by an older mixvfs)."""
    if not os.path.ismount(mountpoint):
        return None, None
    last = history.recall(mountpoint)
    if last is not None and last.pid is not None and _alive(last.pid):
        return last.pid, last.report
    try:
        pid = int(host.getxattr(mountpoint, PID_XATTR))
        report = Path(host.getxattr(mountpoint, REPORT_XATTR).decode())
    except (OSError, ValueError):
        return None, None
    return pid, report


def live_mount_writing(report: Path, *, besides: Path) -> str | None:
    """The mountpoint of another live mixvfs mount whose report is ``report``, if the history knows one."""
    mine = history.key(besides)
    for where in history.mountpoints_with_report(report):
        if where != mine and mount_info(Path(where))[1] == report:
            return where
    return None


class UnmountRefused(MixvfsError):
    """The folder is mounted but could not be unmounted (exit 1: the command ran, the unmount failed)."""


class DaemonDied(MixvfsError):
    """The folder is a dead mount: its daemon was killed (exit 1, as ``report`` of it: what it had not finished
    was never had)."""


def died_text(mountpoint: Path) -> str:
    return (f"the mount at {mountpoint} is dead: its daemon died (see its log; `mixvfs report {mountpoint}` shows "
            f"the report as last written, `mixvfs unmount {mountpoint}` clears the dead mount)")


@dataclass(frozen=True)
class Unmounted:
    report: Path | None  # the final report (or the last written, for a daemon that died); None when unknown
    daemon_died: bool  # a dead mount was cleared: its daemon had died (killed) before
    ended: bool = True  # the daemon has ended (its final report written, or its failure noted); False: still at it


def unmount(mountpoint: Path, *, wait: float = 30.0) -> Unmounted:
    """Unmount and wait for the daemon to finish its final report; returns the report's path (None when
    neither the mount nor the history knows it), and whether the daemon had died (a dead mount cleared)."""
    if is_stale(mountpoint):
        clear_stale(mountpoint)
        last = history.recall(mountpoint)
        return Unmounted(last.report if last else None, daemon_died=True)
    if not os.path.ismount(mountpoint):
        raise ConfigError(history.not_live(mountpoint))
    pid, report = mount_info(mountpoint)
    if (foreign := foreign_mount(mountpoint, pid)) is not None:
        raise ConfigError(foreign)
    if report is None:
        last = history.recall(mountpoint)
        report = last.report if last else None
    command = host.unmount_command(str(mountpoint))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UnmountRefused(refusal(mountpoint, done.stderr.strip(), f"{command[0]} exited {done.returncode}"))
    deadline = time.monotonic() + wait
    while pid is not None and time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    return Unmounted(report, daemon_died=False, ended=pid is not None and not _alive(pid))


def refusal(mountpoint: Path, stderr: str, fallback: str) -> str:
    """Why the unmount failed, and for the usual cause (a program holds a file or the folder open: EBUSY,
    "Device or resource busy" on Linux, "Resource busy" on macOS) what to do about it."""
    if "busy" not in stderr.lower():
        return f"cannot unmount {mountpoint}: {stderr or fallback}"
    quoted = shlex.quote(str(mountpoint))
    return (f"cannot unmount {mountpoint}: it is in use. Close the program reading it (or leave the folder in "
            f"your shell); `fuser -vm {quoted}` or `lsof +f -- {quoted}` shows which")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    return host.is_zombie(pid) is not True  # unknown (no /proc): alive, as kill(pid, 0) said
