"""Mount lifecycle: checking the mountpoint (and clearing a stale one), starting the daemon and waiting
until the folder is live, serving, and unmounting (waiting for the daemon's final report)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cache.errors import ConfigError, MixvfsError
from cache.fetch import Fetcher, RetryPolicy
from cache.http import HttpClient, TokenSource, origin_of, warn_if_insecure
from cache.index import SourceIndex
from cache.store import BlobStore, make_private_dir
from vfs.core import SessionFS
from vfs.live import ManifestWatcher
from vfs.manifest import Session, load_manifest
from vfs.report import Report
from vfs.tracks import Kind, Track, build_tracks

log = logging.getLogger(__name__)

READY_TIMEOUT = 300.0  # probing thousands of tracks' sizes can take a while on a slow server
PID_XATTR = "user.mixvfs.pid"
REPORT_XATTR = "user.mixvfs.report"


@dataclass
class MountOptions:
    session_path: Path
    mountpoint: Path
    cache_dir: Path
    report_path: Path | None
    log_file: Path | None
    max_size: int
    max_age: float
    jobs: int
    policy: RetryPolicy
    retry_after: float
    prefetch: bool
    token_file: Path | None
    token_command: str | None
    threads: int = 16
    attr_timeout: float = 1.0  # keep <= 1 s: live reloads must show within 2 s through the kernel's caches
    tokens: Callable[[], TokenSource | None] | None = None  # from vfs.config; else token_file/command/env
    default_server: str | None = None  # for manifests that name no server (from the config)


# -- the mountpoint -------------------------------------------------------------------------------------


def fusermount() -> list[str]:
    for name in ("fusermount3", "fusermount"):
        path = shutil.which(name)
        if path:
            return [path]
    return ["umount"]


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
    tool = fusermount()
    command = [*tool, "-u", "-z", str(mountpoint)] if "umount" not in tool[0] else ["umount", "-l", str(mountpoint)]
    subprocess.run(command, capture_output=True, check=False)
    if is_stale(mountpoint):
        raise ConfigError(f"{mountpoint}: a dead mount is left there and could not be cleared ({' '.join(command)})")
    log.warning("cleared a stale mount at %s", mountpoint)


def check_mountpoint(mountpoint: Path) -> None:
    if is_stale(mountpoint):
        clear_stale(mountpoint)
    if not mountpoint.exists():
        raise ConfigError(f"mountpoint {mountpoint} does not exist (create the folder first)")
    if not mountpoint.is_dir():
        raise ConfigError(f"mountpoint {mountpoint} is not a folder")
    if os.path.ismount(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} is already mounted (mixvfs unmount {mountpoint})")


def check_libfuse() -> None:
    try:
        import vfs.fuse_ops  # noqa: F401  (loads libfuse through mfusepy)
    except (OSError, AttributeError) as exc:
        raise ConfigError(f"libfuse is not usable: {exc} (Debian/Ubuntu: apt install fuse3; macOS: macFUSE)") from None


# -- starting -------------------------------------------------------------------------------------------


def start_daemon(argv: list[str], log_file: Path) -> dict[str, object]:
    """Run ``mixvfs mount ... --foreground`` detached and wait until it says the folder is live."""
    read_end, write_end = os.pipe()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log_handle:
        child = subprocess.Popen(
            # -P: do not put the working directory on sys.path, where a folder named `cache` or `vfs` would
            # shadow our packages (the cwd must stay: argv may hold relative paths).
            [sys.executable, "-P", "-m", "vfs.cli", *argv, "--foreground", "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL, stdout=log_handle, stderr=log_handle,
            pass_fds=(write_end,), start_new_session=True,
        )
    os.close(write_end)
    try:
        message = _read_ready(read_end, child)
    finally:
        os.close(read_end)
    if "error" in message:
        raise ConfigError(str(message["error"]))
    return message


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


def serve(options: MountOptions, ready_fd: int | None) -> int:
    """The daemon: open the cache, learn the tracks, mount, serve until unmounted, write the final report."""

    def tell(message: dict[str, object]) -> None:
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, (json.dumps(message) + "\n").encode())
                os.close(ready_fd)

    try:
        session = load_manifest(options.session_path, default_server=options.default_server)
        check_mountpoint(options.mountpoint)
        check_libfuse()
        core, report, closers = open_session(session, options)
    except MixvfsError as exc:
        tell({"error": str(exc)})
        log.error("%s", exc)
        return 2

    from vfs import fuse_ops

    root_xattrs = {"pid": str(os.getpid()), "report": str(report.path), "session": session.name}

    def on_ready() -> None:
        tell({"ok": True, "report": str(report.path), "pid": os.getpid()})
        core.start_prefetch()

    ops = fuse_ops.MixOps(core, on_ready=on_ready, root_xattrs=root_xattrs)
    log.info("mounting %s (%d tracks) at %s", session.name, len(core.tracks), options.mountpoint)
    status = 0
    try:
        fuse_ops.run(ops, str(options.mountpoint), threads=options.threads, attr_timeout=options.attr_timeout)
    except RuntimeError as exc:
        tell({"error": f"libfuse could not mount {options.mountpoint} ({exc}); see {options.log_file}"})
        status = 1
    finally:
        core.close()
        report.close(finished=True)
        for close in closers:
            close()
        log.info("unmounted %s; report %s", options.mountpoint, report.path)
    return status


def open_session(
    session: Session, options: MountOptions
) -> tuple[SessionFS, Report, list[Callable[[], None]]]:
    make_private_dir(options.cache_dir)
    store = BlobStore(options.cache_dir, max_size=options.max_size, max_age=options.max_age)
    index = SourceIndex(options.cache_dir)
    for path in store.clean_stale_staging():
        log.info("removed a dead download's leftover %s", path.name)
    store.prune()
    tokens = options.tokens() if options.tokens else token_source(options.token_file, options.token_command)
    # Every origin the token may travel to: the server and any absolute cloud URL of a track.
    urls = [session.server, *(t.cloud_url for t in session.tracks)]
    for origin in sorted({origin_of(url) for url in urls if url}):
        warn_if_insecure(origin, tokens)
    http = HttpClient(tokens=tokens, stall_timeout=options.policy.stall_timeout)
    fetcher = Fetcher(store, index, http, jobs=options.jobs, policy=options.policy)
    tracks = build_tracks(session, http=http, index=index, jobs=options.jobs)
    report_path = options.report_path or default_report_path(options.cache_dir, session)
    report = Report(report_path, session=session.name, mountpoint=str(options.mountpoint), records=[])
    core = SessionFS(tracks, fetcher, report, retry_after=options.retry_after, prefetch=options.prefetch,
                     mtime=session.mtime)
    report.replace_records(core.initial_records())
    log_missing(tracks)

    def apply(changed: Session) -> None:
        fresh = build_tracks(changed, http=http, index=index, jobs=options.jobs)
        core.reload(fresh, mtime=changed.mtime)
        log_missing(fresh)

    watcher = ManifestWatcher(options.session_path, apply, default_server=options.default_server)
    watcher.start()
    return core, report, [watcher.stop, http.close, index.close, store.close]


def log_missing(tracks: list[Track]) -> None:
    for track in tracks:
        if track.kind is Kind.MISSING:
            log.error("%s: %s", track.name, track.reason)


def token_source(token_file: Path | None, token_command: str | None) -> TokenSource | None:
    if token_command:
        return TokenSource(command=token_command)
    if token_file:
        return TokenSource(file=token_file)
    value = os.environ.get("MIXVFS_TOKEN")
    return TokenSource(value=value) if value else None


def default_report_path(cache_dir: Path, session: Session) -> Path:
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in session.name)[:60].strip("-") or "session"
    return cache_dir / "reports" / f"{slug}.json"


# -- stopping -------------------------------------------------------------------------------------------


def mount_info(mountpoint: Path) -> tuple[int | None, Path | None]:
    """The daemon's pid and report path, read from the mount's root xattrs (None when not a live mixvfs)."""
    try:
        pid = int(os.getxattr(mountpoint, PID_XATTR))
        report = Path(os.getxattr(mountpoint, REPORT_XATTR).decode())
    except (OSError, ValueError):
        return None, None
    return pid, report


def unmount(mountpoint: Path, *, wait: float = 30.0) -> None:
    if is_stale(mountpoint):
        clear_stale(mountpoint)
        return
    if not os.path.ismount(mountpoint):
        raise ConfigError(f"{mountpoint} is not mounted")
    pid, _ = mount_info(mountpoint)
    tool = fusermount()
    command = [*tool, "-u", str(mountpoint)] if "umount" not in tool[0] else ["umount", str(mountpoint)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ConfigError(f"cannot unmount {mountpoint}: {done.stderr.strip() or done.returncode}")
    deadline = time.monotonic() + wait
    while pid is not None and time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True
