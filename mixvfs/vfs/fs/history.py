"""What each mountpoint's last mount was — its report and its daemon's pid — so that the commands find a live
mount's facts without extended attributes (macOS's Python has no ``os.getxattr``), and after the unmount
``mixvfs report MOUNTPOINT`` and ``mixvfs status MOUNTPOINT`` can still show the report or say where it is.

One small JSON file in the user's state folder (``~/.local/state/mixvfs/mounts.json`` on Linux, honouring
``$XDG_STATE_HOME``), written by the daemon as the folder goes live, bounded to the last :data:`LIMIT`
mountpoints. Losing it costs only this convenience: a failure to write it is a logged warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import platformdirs

from mixvfs.cache.errors import ConfigError
from mixvfs.cache.location import make_private_dir
from mixvfs.vfs.fs.mount_key import mount_key

log = logging.getLogger(__name__)

LIMIT = 200  # mountpoints remembered; the oldest go first


@dataclass(frozen=True)
class LastMount:
    mountpoint: str
    report: Path
    session: str
    mounted_at: float
    pid: int | None = None  # the daemon serving it (None: noted by an older mixvfs)
    unwritten: str | None = None  # why its daemon could not write the final report: the report is incomplete


def history_file() -> Path:
    return Path(platformdirs.user_state_dir("mixvfs")) / "mounts.json"


def key(mountpoint: Path) -> str:
    """The mountpoint as remembered (see :func:`mixvfs.vfs.fs.mount_key.mount_key`)."""
    return mount_key(mountpoint)


class MountClaimed(ConfigError):
    """Another mixvfs daemon is mounting, or serving, this mountpoint."""


def claim(mountpoint: Path) -> IO[str] | None:
    """This process's claim on ``mountpoint`` from its start until it exits: a lock file in the state folder,
    locked while the returned file stays open. A second mount of the same folder, started while the first is
    still probing its server, would otherwise pass the same checks and mount on top of it (and an export started
    on the first would copy the second's tracks). :class:`MountClaimed`, naming the other daemon, when it is
    held; None when the state folder cannot hold it (then nothing is claimed: as before)."""
    folder = history_file().parent / "claims"
    name = hashlib.sha256(key(mountpoint).encode()).hexdigest()[:24] + ".lock"
    try:
        make_private_dir(folder)
        handle = open(folder / name, "a+")  # noqa: SIM115  (held open: the lock lives as long as the file)
    except OSError as exc:
        log.warning("cannot claim %s in %s (%s): a second mount of it would not be refused", mountpoint, folder,
                    exc.strerror or exc)
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise MountClaimed(f"{mountpoint} is being mounted or served by another mixvfs{by}; "
                           f"unmount it first (mixvfs unmount {mountpoint})") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def remember(mountpoint_key: str, report: Path, session: str, pid: int | None = None) -> None:
    """Record ``report`` and the daemon's ``pid`` as the last mount at ``mountpoint_key``; never raises."""
    path = history_file()
    try:
        make_private_dir(path.parent)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two mounts starting at once must not drop each other's entry
            entries = _read(path)
            entries.pop(mountpoint_key, None)
            entries[mountpoint_key] = {"report": str(report), "session": session, "mounted_at": time.time(),
                                       "pid": pid}
            newest = sorted(entries.items(), key=lambda item: float(item[1].get("mounted_at", 0)))[-LIMIT:]
            _write(path, dict(newest))
    except OSError as exc:
        log.warning("could not note the report path in %s: %s", path, exc.strerror or exc)


def note_unwritten(mountpoint_key: str, report: Path, why: str) -> None:
    """The daemon that wrote ``report`` ended without its final report (``why``): noted beside its entry, so that
    ``unmount`` and ``report`` say so rather than show the report as last written as the mount's outcome. Never
    raises (the daemon's log says it too)."""
    path = history_file()
    try:
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = _read(path)
            entry = entries.get(mountpoint_key)
            if not isinstance(entry, dict) or entry.get("report") != str(report):
                return  # another mount there since: not ours to mark
            entry["unwritten"] = why
            _write(path, entries)
    except OSError as exc:
        log.warning("could not note in %s that the final report is missing: %s", path, exc.strerror or exc)


def mountpoints_with_report(report: Path) -> list[str]:
    """The remembered mountpoints whose (last) mount wrote ``report``."""
    return [where for where, entry in _read(history_file()).items()
            if isinstance(entry, dict) and entry.get("report") == str(report)]


def recall(mountpoint: Path) -> LastMount | None:
    """The last mount at ``mountpoint`` this user made, if it is remembered."""
    where = key(mountpoint)
    entry = _read(history_file()).get(where)
    if not isinstance(entry, dict) or not isinstance(entry.get("report"), str):
        return None
    pid, unwritten = entry.get("pid"), entry.get("unwritten")
    return LastMount(where, Path(entry["report"]), str(entry.get("session", "")), float(entry.get("mounted_at", 0)),
                     pid if isinstance(pid, int) and pid > 0 else None,
                     unwritten if isinstance(unwritten, str) else None)


def not_live(mountpoint: Path, cause: str | None = None) -> str:
    """One line for a folder that is not a live mixvfs mount: what it is, and where its last report is."""
    if os.path.ismount(mountpoint):
        return f"{mountpoint} is mounted, but not a live mixvfs mount" + (f" ({cause})" if cause else "")
    last = recall(mountpoint)
    if last is None:
        return f"nothing is mounted at {mountpoint} (and no earlier mixvfs mount there is known)"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last.mounted_at))
    if not last.report.is_file():
        return f"{mountpoint} is not mounted now; the report of its last mount ({when}), {last.report}, is gone"
    return (f"{mountpoint} is not mounted now; the report of its last mount ({when}) is {last.report} "
            f"(mixvfs report {last.report})")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: it only ever helps
    return data if isinstance(data, dict) else {}


def _write(path: Path, entries: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".mounts-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(entries, handle, indent=1, ensure_ascii=False)
        os.replace(tmp, path)  # readers never see half a file
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
