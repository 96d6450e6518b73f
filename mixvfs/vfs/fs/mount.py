"""Mount lifecycle: checking the mountpoint (and clearing a stale one), starting the daemon and waiting
until the folder is live, serving, and unmounting (waiting for the daemon's final report)."""

from __future__ import annotations

import contextlib
import errno
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from mixvfs import host
from mixvfs.cache.errors import ConfigError, MixvfsError
from mixvfs.cache.location import make_private_dir
from mixvfs.vfs.fs import history
from mixvfs.vfs.fs.deadlines import RequestBounds, outlives, request_bounds
from mixvfs.vfs.fs.report import Report, default_report_path
from mixvfs.vfs.fs.sessionfs import SessionFS
from mixvfs.vfs.runtime import RuntimeConfig, open_runtime
from mixvfs.vfs.session.live import ManifestWatcher
from mixvfs.vfs.session.manifest import Session, load_manifest
from mixvfs.vfs.session.tracks import Kind, Track, build_tracks

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


def clear_stale(mountpoint: Path) -> None:
    """A daemon killed with -9 leaves "Transport endpoint is not connected" behind: lazily unmount it."""
    command = host.unmount_command(str(mountpoint), lazy=True)
    subprocess.run(command, capture_output=True, check=False)
    if is_stale(mountpoint):
        raise ConfigError(f"{mountpoint}: a dead mount is left there and could not be cleared ({' '.join(command)})")
    log.warning("cleared a stale mount at %s", mountpoint)


def check_mountpoint(mountpoint: Path, *, allow_non_empty: bool = False) -> None:
    if is_stale(mountpoint):
        clear_stale(mountpoint)
    if not mountpoint.exists():
        raise ConfigError(f"mountpoint {mountpoint} does not exist (create the folder first)")
    if not mountpoint.is_dir():
        raise ConfigError(f"mountpoint {mountpoint} is not a folder")
    if os.path.ismount(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} is already mounted (mixvfs unmount {mountpoint})")
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


def libfuse_problem() -> str | None:
    """None when a libfuse mfusepy can mount with loads; else one line: why not, and what to install or
    allow (macFUSE refused by the system shows here too: its library loads only once allowed)."""
    host.prefer_libfuse3()
    try:
        import mixvfs.vfs.adapter.fuse_ops  # noqa: F401  (loads libfuse through mfusepy)
    except (OSError, AttributeError) as exc:
        return f"no usable libfuse ({exc}): {host.libfuse_hint()}"
    return None


def check_libfuse() -> None:
    problem = libfuse_problem()
    if problem is not None:
        raise ConfigError(problem)


# -- starting -------------------------------------------------------------------------------------------


def start_daemon(argv: list[str], log_file: Path) -> dict[str, object]:
    """Run ``mixvfs mount ... --foreground`` detached and wait until it says the folder is live."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    try:
        with open(log_file, "ab") as log_handle:
            child = subprocess.Popen(
                # Our packages are mixvfs.*: a `cache` or `vfs` folder in the working directory cannot shadow
                # them (the cwd must stay: argv may hold relative paths).
                [sys.executable, "-m", "mixvfs.vfs.commands.cli", *argv, "--foreground", "--ready-fd", str(write_end)],
                stdin=subprocess.DEVNULL, stdout=log_handle, stderr=log_handle,
                pass_fds=(write_end,), start_new_session=True,
            )
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


def _read_ready(fd: int, child: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
            if data.endswith(b"\n"):
                return dict(json.loads(data))
    child.poll()
    if child.returncode is None:
        child.terminate()
        return {"error": "the mount daemon did not come up in time"}
    return {"error": f"the mount daemon exited with status {child.returncode} before the folder was live"}


class ReadyChannel:
    """The pipe to the ``mixvfs mount`` waiting in the terminal: one message ("ok" or an error), then
    closed for good. Once closed, its number belongs to whatever the daemon opens next (the index
    database, a staging file, a socket), so the channel forgets it: a later ``send`` writes nothing."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.sent: dict[str, object] | None = None
        if fd is not None:
            # Not inherited by fusermount (forked by libfuse) or a token command: a child still holding the
            # write end would keep `mixvfs mount` waiting after this daemon died.
            with contextlib.suppress(OSError):  # a bad number shows when sending, as a logged warning
                os.set_inheritable(fd, False)

    @property
    def live(self) -> bool:
        """The folder was reported live: from here on, the end of the FUSE loop is an unmount."""
        return self.sent is not None and "ok" in self.sent

    def send(self, message: dict[str, object]) -> bool:
        """Write ``message`` and close, once; False (and nothing written) if it was already sent."""
        with self._lock:
            if self.sent is not None:
                return False
            self.sent = message
            fd, self._fd = self._fd, None
        if fd is None:
            return True  # --foreground without a waiting parent: nothing to tell
        data = (json.dumps(message) + "\n").encode()
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as exc:
            log.warning("could not tell the waiting mixvfs mount: %s", exc.strerror)
        finally:
            os.close(fd)
        return True


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived outside the FUSE loop (a BaseException, like KeyboardInterrupt): while the
    session opens, a clean "nothing was mounted"."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_now(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


def _finishing(signum: int, _frame: FrameType | None) -> None:
    log.info("%s while finishing: the final report is being written", signal.Signals(signum).name)


def _set_handlers(handler: Callable[[int, FrameType | None], None] | int) -> None:
    for signum in STOP_SIGNALS:
        with contextlib.suppress(ValueError, OSError):  # not the main thread (tests calling serve directly)
            if signal.getsignal(signum) != signal.SIG_IGN:  # nohup's SIGHUP stays ignored
                signal.signal(signum, handler)


@contextlib.contextmanager
def stop_signals_for_libfuse() -> Iterator[None]:
    """While the FUSE loop runs, libfuse's own handlers take SIGTERM/SIGINT/SIGHUP (it installs them only
    over SIG_DFL): they end the loop and unmount. Python handlers could not run then, the main thread
    being inside fuse_main. libfuse's handler only sets the session's exit flag; the adapter's ExitWatch
    sees it and fails the reads waiting on downloads, which the loop would otherwise wait for. Afterwards
    a further signal must not cut the final report short."""
    _set_handlers(signal.SIG_DFL)
    try:
        yield
    finally:
        _set_handlers(_finishing)


def serve(options: MountOptions, ready_fd: int | None) -> int:
    """The daemon: open the cache, learn the tracks, mount, serve until unmounted (or stopped by
    SIGTERM/SIGINT/SIGHUP, which is an unmount too), write the final report."""
    ready = ReadyChannel(ready_fd)
    _set_handlers(_stop_now)
    open_files = host.raise_open_file_limit()
    if open_files < host.FEW_OPEN_FILES:
        log.warning("this process may open only %d files (ulimit -n): a busy export may fail reads with no "
                    "report line; raise it (ulimit -n %d) before mounting", open_files, host.FEW_OPEN_FILES)
    try:
        session = load_manifest(options.session_path, default_server=options.default_server)
        check_mountpoint(options.mountpoint, allow_non_empty=options.allow_non_empty)
        check_paths(options, log_file=False)
        check_libfuse()
        core, report, closers = open_session(session, options)
    except MixvfsError as exc:
        ready.send({"error": str(exc)})
        log.error("%s", exc)
        return 2
    except (Stopped, KeyboardInterrupt) as exc:
        stopped(ready, exc)
        return 0
    return serve_mounted(options, ready, session, core, report, closers)


def serve_mounted(options: MountOptions, ready: ReadyChannel, session: Session, core: SessionFS, report: Report,
                  closers: list[Callable[[], None]]) -> int:
    from mixvfs.vfs.adapter import fuse_ops

    root_xattrs = {"pid": str(os.getpid()), "report": str(report.path), "session": session.name}
    where = history.key(options.mountpoint)  # now: once mounted, resolving the folder would ask this daemon

    def on_ready() -> None:
        # Before the "ok": once `mixvfs mount` returns, `mixvfs report MOUNTPOINT` finds the report after an unmount.
        history.remember(where, report.path, session.name, os.getpid())
        ready.send({"ok": True, "report": str(report.path), "pid": os.getpid()})
        core.start_prefetch()

    status = 0
    bounds = options.bounds()
    if (problem := outlives(bounds)) is not None:
        log.warning("%s", problem)
    platform_options = host.mount_options(volume_name=session.name, daemon_timeout=bounds.daemon_timeout or 0)
    try:
        ops = fuse_ops.MixOps(core, on_ready=on_ready, root_xattrs=root_xattrs)
        log.info("mounting %s (%d tracks) at %s", session.name, len(core.tracks), options.mountpoint)
        with stop_signals_for_libfuse():
            fuse_ops.run(ops, str(options.mountpoint), threads=options.threads, attr_timeout=options.attr_timeout,
                         nonempty=options.allow_non_empty, passthrough=options.passthrough,
                         platform_options=platform_options)
    except RuntimeError as exc:
        if ready.live:
            # libfuse 3 answers a loop ended by SIGTERM/SIGINT/SIGHUP with a non-zero status (mfusepy raises
            # it): it has unmounted the folder, which is what the signal asked for.
            log.info("stop signal: the FUSE loop ended (libfuse status %s) and the folder is unmounted", exc)
        else:
            ready.send({"error": f"libfuse could not mount {options.mountpoint} ({exc}); see {options.log_file}"})
            status = 1
    except (Stopped, KeyboardInterrupt) as exc:  # a signal just before or just after the FUSE loop
        stopped(ready, exc)
    finally:
        _set_handlers(_finishing)  # from here a signal must not cut the final report short
        core.close()
        report.close(finished=True)
        for close in closers:
            close()
        log.info("unmounted %s; report %s", options.mountpoint, report.path)
    return status


def stopped(ready: ReadyChannel, exc: BaseException) -> None:
    name = exc.args[0] if isinstance(exc, Stopped) else "SIGINT"
    if ready.send({"error": f"stopped by {name} before the folder was live; nothing was mounted"}):
        log.info("stopped by %s before the folder was live", name)


def open_session(
    session: Session, options: MountOptions
) -> tuple[SessionFS, Report, list[Callable[[], None]]]:
    # Every origin the token may travel to: the server and any absolute cloud URL of a track.
    runtime = open_runtime(options.runtime, origins=[session.server, *(t.cloud_url for t in session.tracks)])
    tracks = build_tracks(session, http=runtime.http, index=runtime.index)
    runtime.watch_team_stores(options.runtime.team_reset_after)
    report_path = options.report_path or default_report_path(runtime.store.root, session.name,
                                                                 history.key(options.mountpoint))
    try:
        report = Report(report_path, session=session.name, mountpoint=str(options.mountpoint), records=[],
                        manifest=str(options.session_path))
    except OSError as exc:
        runtime.close()
        raise ConfigError(f"report {report_path}: cannot write it: {exc.strerror or exc}") from None
    core = SessionFS(tracks, runtime.fetcher, report, failed_for=options.failed_for, prefetch=options.prefetch,
                     confirm_ahead=options.prefetch, mtime=session.mtime, foreground=runtime.foreground,
                     attr_timeout=options.attr_timeout, request_wait=options.bounds().request_wait)
    report.replace_records(core.initial_records())
    log_missing(tracks)
    core.start_revalidating()  # while libfuse mounts: on a distant server, each round of questions is a round trip

    def apply(changed: Session) -> None:
        fresh = build_tracks(changed, http=runtime.http, index=runtime.index)
        core.reload(fresh, mtime=changed.mtime)
        log_missing(fresh)

    watcher = ManifestWatcher(options.session_path, apply, default_server=options.default_server)
    watcher.start()
    # The fetcher is closed by core.close() (serve's finally) first; runtime.close() then keeps the cache to
    # its limit and closes the rest.
    return core, report, [watcher.stop, runtime.close]


def log_missing(tracks: list[Track]) -> None:
    for track in tracks:
        if track.kind is Kind.MISSING:
            log.error("%s: %s", track.name, track.reason)


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


def unmount(mountpoint: Path, *, wait: float = 30.0) -> Path | None:
    """Unmount and wait for the daemon to finish its final report; returns the report's path (None when
    neither the mount nor the history knows it)."""
    if is_stale(mountpoint):
        clear_stale(mountpoint)
        last = history.recall(mountpoint)
        return last.report if last else None
    if not os.path.ismount(mountpoint):
        raise ConfigError(history.not_live(mountpoint))
    pid, report = mount_info(mountpoint)
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
    return report


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
