"""``mixvfs check-export SESSION_OR_REPORT EXPORT_DIR``: does the export folder hold the whole session,
byte for byte?

The exporter may meet an EIO, log it, skip the track and finish "successfully"; this closes the loop.
Every track's expected file name comes from the same rules as the mount (:func:`build_tracks`, collision
numbering included) or, given a report, from the names the mount served; its expected content from:

* cloud tracks: the blob digest (xxh3-128) in the report, else in the cache index (the source identity
  the mount used), else in the session's default report in the cache;
* local tracks: the source file, hashed as well (found through the manifest; a report names it).

Each exported file is read once, hashed while read. States: ``ok``, ``missing``, ``wrong_size``,
``wrong_content``, ``not_verifiable`` (no digest known: say how to make it verifiable), and ``extra`` files
that belong to no track (informational). Exit 0 only when every track is ``ok``; 1 otherwise; 2 bad input.
Nothing is downloaded and the server is not asked: the check works offline.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from mixvfs import host
from mixvfs.cache.digest import hash_path, ignore_lease_breaks
from mixvfs.cache.errors import ConfigError
from mixvfs.cache.units import format_size
from mixvfs.vfs.commands import config, output
from mixvfs.vfs.commands.export_plan import Expected, Plan, make_plan
from mixvfs.vfs.session.naming import collision_key

EXIT_OK, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 130

# Track states (JSON values); the lines show them with spaces.
OK, MISSING, WRONG_SIZE, WRONG_CONTENT, NOT_VERIFIABLE = (
    "ok", "missing", "wrong_size", "wrong_content", "not_verifiable")
STATES = (OK, MISSING, WRONG_SIZE, WRONG_CONTENT, NOT_VERIFIABLE)


@dataclass
class TrackCheck:
    id: str
    name: str
    source: str
    state: str
    size: int | None  # of the exported file
    expected_size: int | None
    detail: str | None = None


# -- checking --------------------------------------------------------------------------------------------


def export_entries(folder: Path) -> dict[str, os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return {e.name: e for e in entries}
    except FileNotFoundError:
        raise ConfigError(f"export folder {folder} does not exist") from None
    except NotADirectoryError:
        raise ConfigError(f"export folder {folder} is not a folder") from None
    except OSError as exc:
        raise ConfigError(f"export folder {folder}: cannot list it: {exc.strerror}") from None


def match_files(expected: list[Expected], entries: dict[str, os.DirEntry[str]]) -> dict[str, str | None]:
    """Track id -> the exported file's name. Exact names first; then the same name up to case and Unicode
    normalisation (a case-insensitive or NFD-storing disk, e.g. macOS, changes them)."""
    found: dict[str, str | None] = {}
    free = dict(entries)
    for exp in expected:
        if exp.name in free:
            found[exp.id] = exp.name
            del free[exp.name]
    loose = {collision_key(name): name for name in free}
    for exp in expected:
        if exp.id not in found:
            name = loose.pop(collision_key(exp.name), None)
            found[exp.id] = name
            if name is not None:
                del free[name]
    return found


@dataclass
class Job:
    """One track whose content is to be hashed: its exported file, and what to compare it with."""

    exp: Expected
    check: TrackCheck
    path: Path


class Interrupted(Exception):
    """Raised in a hashing thread after Ctrl-C."""


class Checker:
    """Runs the checks; tells ``say`` each problem as it is found and ``hashed`` each chunk read."""

    def __init__(self, plan: Plan, folder: Path, *, say: Callable[[TrackCheck], None],
                 hashed: Callable[[int], None]) -> None:
        self.plan = plan
        self.folder = folder
        self.say = say
        self.hashed = hashed
        self.bytes_hashed = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.matched: set[str] = set()  # the exported files that belong to a track

    def first_pass(self, entries: dict[str, os.DirEntry[str]]) -> tuple[list[TrackCheck], list[Job]]:
        """Presence and sizes (stat only); what is left to hash."""
        found = match_files(self.plan.expected, entries)
        self.matched = {name for name in found.values() if name is not None}
        checks, jobs = [], []
        for exp in self.plan.expected:
            name = found[exp.id]
            check = TrackCheck(exp.id, exp.name, exp.source, MISSING, None, exp.size)
            checks.append(check)
            if name is None:
                check.detail = self.why_missing(exp)
                continue
            path = self.folder / name
            if name != exp.name:
                check.detail = f"exported as {name!r}"
            if entries[name].is_symlink():  # a link into the mount or the source: gone with it, not a copy
                check.detail = "a symbolic link, not a copy"
                continue
            try:
                st = entries[name].stat()
            except OSError as exc:
                check.detail = f"cannot be read ({exc.strerror})"
                continue
            if not stat.S_ISREG(st.st_mode):
                check.detail = "not a regular file"
                continue
            check.size = st.st_size
            if exp.local_path is not None:
                with contextlib.suppress(OSError):
                    check.expected_size = exp.size = exp.local_path.stat().st_size
            if check.size == 0 and check.expected_size != 0:
                # What `cp` leaves when the first read fails (EIO): the track is not there.
                check.detail = self.why_missing(exp, empty=True)
                continue
            if check.expected_size is not None and check.size != check.expected_size:
                check.state = WRONG_SIZE
                check.detail = f"{format_bytes(check.size)}, expected {format_bytes(check.expected_size)}"
                continue
            if exp.digest is None and exp.local_path is None:
                check.state, check.detail = NOT_VERIFIABLE, self.why_unverifiable(exp)
                continue
            jobs.append(Job(exp, check, path))
        return checks, jobs

    def why_missing(self, exp: Expected, *, empty: bool = False) -> str:
        said = "an empty file: the copy failed" if empty else "no such file in the export"
        if exp.failure:
            return f"{said} (the mount could not serve it: {exp.failure})"
        if exp.why_unknown and exp.source == "missing":
            return f"{said} ({exp.why_unknown})"
        return said

    def why_unverifiable(self, exp: Expected) -> str:
        if exp.source == "missing":
            return f"the session gives it no source ({exp.why_unknown})" if exp.why_unknown else \
                "the session gives it no source"
        if exp.source == "local":
            reason = exp.why_unknown or "its source file is not known"
            return f"{reason}; give the session manifest (with the source files in place) to compare"
        manifest = shlex.quote(str(self.plan.manifest)) if self.plan.manifest else "SESSION"
        return (f"no digest known (not in the report, not in the cache): `cachectl warm {manifest}` "
                "downloads it into the cache; then check again")

    def hash_file(self, path: Path) -> str:
        return hash_path(path, progress=self.progress)

    def progress(self, length: int) -> None:
        if self.stopping.is_set():  # Ctrl-C: the file being hashed is given up at the next chunk
            raise Interrupted
        with self.lock:  # hashing threads
            self.bytes_hashed += length
        self.hashed(length)

    def run_job(self, job: Job) -> Job:
        self.check_content(job)
        return job

    def check_content(self, job: Job) -> None:
        exp, check = job.exp, job.check
        try:
            got = self.hash_file(job.path)
        except OSError as exc:
            # Unread is unknown, not wrong: the copy may be right and only closed to us (mode 600, another
            # user's); the exit status (1) is the same.
            check.state, check.detail = NOT_VERIFIABLE, f"cannot be read: {exc.strerror}"
            return
        if exp.digest is not None:
            want, against = exp.digest, f"the digest in {exp.digest_from}"
        else:
            assert exp.local_path is not None
            try:
                want, against = self.hash_file(exp.local_path), f"the local file {exp.local_path}"
            except OSError as exc:
                check.state = NOT_VERIFIABLE
                check.detail = f"its source file {exp.local_path} cannot be read now: {exc.strerror}"
                return
        if got == want:
            check.state = OK
        else:
            check.state, check.detail = WRONG_CONTENT, f"the bytes differ from {against}"

    def run(self) -> tuple[list[TrackCheck], list[dict[str, Any]], float]:
        started = time.monotonic()
        entries = export_entries(self.folder)
        checks, jobs = self.first_pass(entries)
        for check in checks:
            if check.state != OK and all(job.check is not check for job in jobs):
                self.say(check)
        # Files hashed side by side (xxhash lets go of the GIL), problems said in the session's order.
        pool = ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1, 4)))
        try:
            for job in pool.map(self.run_job, jobs):
                if job.check.state != OK:
                    self.say(job.check)
        except KeyboardInterrupt:
            self.stopping.set()  # the files being hashed stop at their next chunk; the queued ones never start
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        extra = [{"name": name, "size": safe_size(entry)} for name, entry in sorted(entries.items())
                 if name not in self.matched]
        return checks, extra, time.monotonic() - started


def safe_size(entry: os.DirEntry[str]) -> int | None:
    try:
        return entry.stat().st_size if entry.is_file() else None
    except OSError:
        return None


def format_bytes(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size} bytes" if size < 10_000 else f"{format_size(size)} ({size} bytes)"


# -- the result --------------------------------------------------------------------------------------------


def result_doc(plan: Plan, folder: Path, checks: list[TrackCheck], extra: list[dict[str, Any]],
               bytes_hashed: int, seconds: float) -> dict[str, Any]:
    counts = {state: sum(c.state == state for c in checks) for state in STATES}
    complete = counts[OK] == len(checks)
    return {
        "session": plan.session,
        "checked_against": plan.against,
        "manifest": str(plan.manifest) if plan.manifest else None,
        "report": str(plan.report) if plan.report else None,
        "export_dir": str(folder),
        "tracks": [asdict(c) for c in checks],
        "extra": extra,
        "counts": counts,
        "bytes_hashed": bytes_hashed,
        "seconds": round(seconds, 3),
        "notes": plan.notes,
        "complete": complete,
        "exit_code": EXIT_OK if complete else EXIT_INCOMPLETE,
    }


def problem_line(check: TrackCheck) -> str:
    return f"{check.state.replace('_', ' '):<14} {check.name}" + (f": {check.detail}" if check.detail else "")


def summary_lines(doc: dict[str, Any]) -> list[str]:
    counts, total = doc["counts"], len(doc["tracks"])
    # Matched by a name that differs in case or Unicode form only (one file on macOS, two on Linux): said.
    lines = [f"renamed        {t['name']}: {t['detail']}" for t in doc["tracks"]
             if t["state"] == OK and str(t.get("detail") or "").startswith("exported as")]
    lines += [f"extra          {e['name']} (belongs to no track)" for e in doc["extra"]]
    lines += [f"note: {note}" for note in doc["notes"]]
    problems = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in counts.items() if n and state != OK)
    rate = doc["bytes_hashed"] / doc["seconds"] if doc["seconds"] > 0 else 0
    hashed = f"{format_size(doc['bytes_hashed'])} hashed in {doc['seconds']:.1f}s ({format_size(int(rate))}/s)"
    extra = f"; {len(doc['extra'])} extra file(s)" if doc["extra"] else ""
    if doc["complete"]:
        lines.append(f"ok: all {total} tracks of {doc['session']!r} are in {doc['export_dir']}, byte for byte "
                     f"({hashed}){extra}")
    else:
        lines.append(f"INCOMPLETE: {counts[OK]} of {total} tracks ok; {problems} ({hashed}){extra}")
    return lines


# -- display ----------------------------------------------------------------------------------------------


Display = tuple[Callable[[TrackCheck], None], Callable[[int], None]]


@contextlib.contextmanager
def plain_display(out: TextIO) -> Iterator[Display]:
    """One line per problem, as found (logs, pipes, CI)."""
    yield (lambda check: print(problem_line(check), file=out, flush=True)), (lambda _length: None)


@contextlib.contextmanager
def rich_display(out: TextIO, total: int) -> Iterator[Display]:
    """A progress bar of the bytes hashed, with the rate; problems printed above it."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, Task, TextColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{format_size(int(speed))}/s", style="progress.data.speed")

    columns = (TextColumn("hashing"), BarColumn(), DownloadColumn(binary_units=True), Rate())
    with Progress(*columns, console=Console(file=out), transient=True) as progress:
        task = progress.add_task("hashing", total=total or None)
        yield ((lambda check: progress.console.print(problem_line(check), markup=False, highlight=False)),
               (lambda length: progress.advance(task, length)))


def bytes_to_hash(plan: Plan, folder: Path) -> int:
    """An estimate for the progress bar: the exported sizes of tracks whose content can be compared."""
    total = 0
    for exp in plan.expected:
        if exp.digest is not None or exp.local_path is not None:
            with contextlib.suppress(OSError):
                total += (folder / exp.name).stat().st_size * (2 if exp.digest is None else 1)
    return total


def check_export(plan: Plan, folder: Path, *, out: TextIO, tty: bool, quiet: bool) -> dict[str, Any]:
    if quiet:
        display: contextlib.AbstractContextManager[Display] = contextlib.nullcontext(
            ((lambda _check: None), (lambda _length: None)))
    elif tty:
        display = rich_display(out, bytes_to_hash(plan, folder))
    else:
        display = plain_display(out)
    with display as (say, hashed):
        checker = Checker(plan, folder, say=say, hashed=hashed)
        checks, extra, seconds = checker.run()
    return result_doc(plan, folder, checks, extra, checker.bytes_hashed, seconds)


def check_folder(folder: Path) -> None:
    """Before anything is read: a mistyped folder is bad input, not "all missing"; the mount itself (or a
    folder inside it) is not an export — its files vanish with the unmount."""
    try:
        st = folder.stat()
    except FileNotFoundError:
        raise ConfigError(f"export folder {folder} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"export folder {folder}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"export folder {folder} is not a folder")
    with contextlib.suppress(OSError):
        if is_mixvfs(folder):
            raise ConfigError(f"export folder {folder} is a mixvfs mount, not an export: copy it out first")


def is_mixvfs(folder: Path) -> bool:
    """On a mixvfs mount (the mount's own folder or below): its file system type says so (Linux); elsewhere
    the mount above it answers for mixvfs's own root attribute (the daemon's pid)."""
    real = folder.resolve()
    fstype = host.mount_type(str(real))
    if fstype is not None:
        return fstype.endswith("mixvfs")
    for place in (real, *real.parents):
        if os.path.ismount(place):
            try:
                host.getxattr(place, "user.mixvfs.pid")
            except OSError:
                return False
            return True
    return False


def main(args: argparse.Namespace) -> int:
    ignore_lease_breaks()  # exported files are hashed from a mapping under a read lease (cache/digest.py)
    settings = config.resolve(args, config.CHECK_EXPORT_SETTINGS)
    target: Path = args.session_or_report.expanduser()
    folder: Path = args.export_dir.expanduser()
    check_folder(folder)
    plan = make_plan(target, settings)
    try:
        doc = check_export(plan, folder, out=sys.stdout, tty=sys.stdout.isatty() and not args.json,
                           quiet=args.json)
    except KeyboardInterrupt:
        print("mixvfs: check-export interrupted (Ctrl-C): the export was not checked to the end", file=sys.stderr)
        return EXIT_INTERRUPTED
    output.emit(doc, args.json, lambda d: "\n".join(summary_lines(d)))
    return int(doc["exit_code"])
