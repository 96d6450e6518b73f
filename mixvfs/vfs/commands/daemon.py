"""The mount daemon (``mixvfs mount --foreground``, or the detached child ``mixvfs mount`` starts): open the
cache and the session, mount through the FUSE adapter, serve until unmounted or stopped, write the final
report. Above the adapter, which it drives; the mountpoint checks and the launcher stay in
:mod:`mixvfs.vfs.fs.mount`, which knows nothing of FUSE."""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from mixvfs import host
from mixvfs.cache.errors import ConfigError, MixvfsError
from mixvfs.vfs.adapter.loading import libfuse_problem
from mixvfs.vfs.fs import history
from mixvfs.vfs.fs.deadlines import outlives
from mixvfs.vfs.fs.mount import MountOptions, check_mountpoint, check_paths
from mixvfs.vfs.fs.report import Report, default_report_path
from mixvfs.vfs.fs.sessionfs import SessionFS
from mixvfs.vfs.runtime import open_runtime
from mixvfs.vfs.session.late_answers import LateAnswers
from mixvfs.vfs.session.live import ManifestWatcher
from mixvfs.vfs.session.manifest import Session, load_manifest
from mixvfs.vfs.session.tracks import Kind, NameKeeper, Track, build_tracks

log = logging.getLogger(__name__)


def check_libfuse() -> None:
    problem = libfuse_problem()
    if problem is not None:
        raise ConfigError(problem)


@contextlib.contextmanager
def no_collection_while_opening() -> Iterator[None]:
    """The session's objects are built with the cyclic garbage collector paused, then moved out of its passes
    for good (``gc.freeze``): they live as long as the mount, and hold no cycles for it to find. Each
    collection while building walked every object made so far: building a 100 000-track session took 1.9-2.1
    s of CPU with the collector and 1.25 s without. Later passes no longer walk the session either (the
    listing and the reads allocate too). Garbage already in cycles when it ends stays; a full pass to find
    it would walk the whole session once more. The C heap's free pages go back to the system at the end
    (``host.release_free_memory``): a 100 000-track daemon, once mounted, holds 7-10 MB less."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
        host.release_free_memory()


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

    def note(self, text: str) -> None:
        """One line for the user, shown by the waiting ``mixvfs mount`` before the folder is live (what the
        mount waits for, what the server said); also logged. Nothing is written once the channel is closed."""
        log.warning("%s", text)
        with self._lock:
            if self.sent is None and self._fd is not None:
                self._write(self._fd, {"note": text})

    def send(self, message: dict[str, object]) -> bool:
        """Write ``message`` and close, once; False (and nothing written) if it was already sent."""
        with self._lock:
            if self.sent is not None:
                return False
            self.sent = message
            fd, self._fd = self._fd, None
        if fd is None:
            return True  # --foreground without a waiting parent: nothing to tell
        try:
            self._write(fd, message)
        finally:
            os.close(fd)
        return True

    @staticmethod
    def _write(fd: int, message: dict[str, object]) -> None:
        data = (json.dumps(message) + "\n").encode()
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as exc:
            log.warning("could not tell the waiting mixvfs mount: %s", exc.strerror)


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
    # A fatal signal ends the daemon at once, with no Python exception to log: SIGBUS above all, which the
    # kernel sends for a write to a mapped page it refuses (SQLite's WAL index, which every database access
    # writes through a mapping, on a file made immutable or a disk gone read-only). Every thread's stack goes
    # to stderr, which is the log file when `mixvfs mount` started this daemon: the log says how it died
    # instead of ending at its start-up lines, and the readers' "Transport endpoint is not connected" has a cause.
    if sys.stderr is not None:  # None: started with stderr closed (`--foreground 2>&-`): no stack to show
        faulthandler.enable(all_threads=True)
    ready = ReadyChannel(ready_fd)
    _set_handlers(_stop_now)
    host.reuse_freed_memory()
    open_files = host.raise_open_file_limit()
    if open_files < host.FEW_OPEN_FILES:
        log.warning("this process may open only %d files (ulimit -n): a busy export may fail reads with no "
                    "report line; raise it (ulimit -n %d) before mounting", open_files, host.FEW_OPEN_FILES)
    try:
        claimed = history.claim(options.mountpoint)  # held until this process ends
        with no_collection_while_opening():
            session = load_manifest(options.session_path, default_server=options.default_server)
            host.release_free_memory()  # what the parse freed (23 MB of a 100 000-track manifest's)
            check_mountpoint(options.mountpoint, allow_non_empty=options.allow_non_empty)
            check_paths(options, log_file=False)
            check_libfuse()
            core, report, closers = open_session(session, options, say=ready.note)
        recheck_mountpoint(options, core, report, closers)
    except MixvfsError as exc:
        ready.send({"error": str(exc)})
        log.error("%s", exc)
        return 2
    except (Stopped, KeyboardInterrupt) as exc:
        stopped(ready, exc)
        return 0
    try:
        return serve_mounted(options, ready, session, core, report, closers)
    finally:
        if claimed is not None:
            claimed.close()


def recheck_mountpoint(options: MountOptions, core: SessionFS, report: Report,
                       closers: list[Callable[[], None]]) -> None:
    """The mountpoint checked again just before libfuse mounts it: opening the session may have taken seconds
    (a slow server's answers), and meanwhile another file system may have been mounted there, or files put in it
    that the mount would hide."""
    try:
        check_mountpoint(options.mountpoint, allow_non_empty=options.allow_non_empty)
    except MixvfsError:
        core.close()
        report.close(finished=True)  # never live: no report written
        for close in closers:
            close()
        raise


def serve_mounted(options: MountOptions, ready: ReadyChannel, session: Session, core: SessionFS, report: Report,
                  closers: list[Callable[[], None]]) -> int:
    from mixvfs.vfs.adapter import fuse_ops

    root_xattrs = {"pid": str(os.getpid()), "report": str(report.path), "session": session.name}
    where = history.key(options.mountpoint)  # now: once mounted, resolving the folder would ask this daemon

    def on_ready() -> None:
        # Before the "ok": once `mixvfs mount` returns, `mixvfs report MOUNTPOINT` finds the report after an unmount.
        report.publish()
        history.remember(where, report.path, session.name, os.getpid())
        ready.send({"ok": True, "report": str(report.path), "pid": os.getpid()})

    status = 0
    bounds = options.bounds()
    if (problem := outlives(bounds)) is not None:
        log.warning("%s", problem)
    platform_options = host.mount_options(volume_name=session.name, daemon_timeout=bounds.daemon_timeout or 0)
    said_from = log_size(options.log_file)
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
            cause = (host.fuse_access_problem() or host.mountpoint_access_problem(options.mountpoint)
                     or libfuse_said(options.log_file, said_from))
            ready.send({"error": f"cannot mount {options.mountpoint}: {cause}" if cause is not None else
                        f"libfuse could not mount {options.mountpoint} ({exc}); see {options.log_file}"})
            log.error("nothing was mounted at %s: %s", options.mountpoint, cause or f"libfuse status {exc}")
            status = 1
    except (Stopped, KeyboardInterrupt) as exc:  # a signal just before or just after the FUSE loop
        stopped(ready, exc)
    finally:
        _set_handlers(_finishing)  # from here a signal must not cut the final report short
        core.close()
        report.close(finished=True)  # a mount that never went live writes none
        for close in closers:
            close()
        if ready.live and report.unwritten is not None:
            # Said where `mixvfs unmount` and `mixvfs report` look, and in the exit status: the report on disk is
            # as last written while mounted, not the mount's outcome.
            history.note_unwritten(where, report.path, report.unwritten)
            log.error("unmounted %s without its final report: %s", options.mountpoint, report.unwritten)
            status = 1
        elif ready.live:
            log.info("unmounted %s; report %s", options.mountpoint, report.path)
    return status


# A line of our log (cli.setup_logging's format); any other line in the log file came through stderr.
OUR_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def log_size(log_file: Path | None) -> int | None:
    try:
        return None if log_file is None else log_file.stat().st_size
    except OSError:
        return None


def libfuse_said(log_file: Path | None, since: int | None) -> str | None:
    """What libfuse or fusermount3 wrote to stderr while mounting — the daemon's stderr is its log file when
    ``mixvfs mount`` started it —, e.g. "fusermount3: user has no write access to mountpoint …": the lines since
    ``since`` that are not ours."""
    if log_file is None or since is None:
        return None
    try:
        with log_file.open("rb") as handle:
            handle.seek(since)
            text = handle.read(16 << 10).decode(errors="replace")
    except OSError:
        return None
    said = [line.strip() for line in text.splitlines() if line.strip() and not OUR_LOG_LINE.match(line)]
    return "; ".join(said) or None


def stopped(ready: ReadyChannel, exc: BaseException) -> None:
    name = exc.args[0] if isinstance(exc, Stopped) else "SIGINT"
    if ready.send({"error": f"stopped by {name} before the folder was live; nothing was mounted"}):
        log.info("stopped by %s before the folder was live", name)


def open_session(
    session: Session, options: MountOptions, say: Callable[[str], None] | None = None
) -> tuple[SessionFS, Report, list[Callable[[], None]]]:
    """``say``: a line for the user while the folder is not live yet (the slow server waited for, the server
    refusing the token or out of reach)."""
    # Every origin the token may travel to: the server and any absolute cloud URL of a track.
    runtime = open_runtime(options.runtime, origins=[session.server, *(t.cloud_url for t in session.tracks)])
    late = LateAnswers()
    tracks = build_tracks(session, http=runtime.http, index=runtime.index, waiting=say, late=late)
    names = NameKeeper(runtime.index)
    names.keep(session.name, tracks)
    runtime.watch_team_stores(options.runtime.team_reset_after)
    report_path = options.report_path or default_report_path(runtime.store.root, session.name,
                                                                 history.key(options.mountpoint))
    try:
        report = Report(report_path, session=session.name, mountpoint=str(options.mountpoint), records=[],
                        manifest=str(options.session_path), publish_later=True)
    except OSError as exc:
        names.close()
        runtime.close()
        raise ConfigError(f"report {report_path}: cannot write it: {exc.strerror or exc}") from None
    core = SessionFS(tracks, runtime.fetcher, report, failed_for=options.failed_for, prefetch=options.prefetch,
                     confirm_ahead=options.prefetch, mtime=session.mtime, foreground=runtime.foreground,
                     attr_timeout=options.attr_timeout, request_wait=options.bounds().request_wait, late=late)
    report.replace_records(core.initial_records())
    log_missing(tracks)
    core.server.hear_listing(tracks)
    if say is not None and (word := core.server.text(tracks)) is not None:
        say(word)
    # While libfuse mounts: on a distant server each question and each download begins with a round trip (or a
    # handshake); started only once the folder is live, the first ones would follow the mount's start, not
    # overlap it. What a download stores before the folder is live (or if libfuse then fails) is cached all the same.
    core.start_prefetch()

    def apply(changed: Session) -> None:
        fresh = build_tracks(changed, http=runtime.http, index=runtime.index)
        names.keep(changed.name, fresh)
        core.reload(fresh, mtime=changed.mtime)
        log_missing(fresh)
        host.release_free_memory()  # the listing before, and what parsing and building the new one freed

    watcher = ManifestWatcher(options.session_path, apply, default_server=options.default_server)
    watcher.start()
    # The fetcher is closed by core.close() (serve's finally) first; runtime.close() then keeps the cache to
    # its limit and closes the rest.
    return core, report, [watcher.stop, names.close, runtime.close]


def log_missing(tracks: list[Track]) -> None:
    for track in tracks:
        if track.kind is Kind.MISSING:
            log.error("%s: %s", track.name, track.reason)


