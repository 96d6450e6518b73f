"""``cachectl warm SESSION``: download every cloud track of a session into the cache ahead of the export.

The downloads are the mount's own (:class:`mixvfs.vfs.fs.sessionfs.SessionFS` prefetch over a
:class:`mixvfs.cache.fetch.Fetcher`): ``jobs`` at a time, retried, verified, committed by rename — so a
warmed cache is exactly what a mount would have built. Progress goes through rich on a terminal (per
track and total: bytes, rate, ETA) and as one plain line per event otherwise (logs, pipes, CI). Ctrl-C
stops the downloads, removes their staging files and leaves only whole blobs. The end is the report's
per-track table.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from mixvfs.cache.units import format_size
from mixvfs.vfs.fs.mount import default_report_path
from mixvfs.vfs.fs.report import Report, format_report
from mixvfs.vfs.fs.sessionfs import SessionFS
from mixvfs.vfs.runtime import Runtime
from mixvfs.vfs.session.manifest import Session
from mixvfs.vfs.session.tracks import build_tracks

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
FINAL = ("local", "cached", "failed", "missing")
POLL = 0.1
STOP_WAIT = 2.0  # on Ctrl-C, how long to let downloads wind down before removing their staging files


@dataclass
class Event:
    kind: str  # start | done | failed
    name: str
    text: str


@dataclass
class Tracker:
    """Turns successive report snapshots into events (a status change is an event)."""

    seen: dict[str, str] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)

    def events(self, records: list[dict[str, Any]], now: float) -> list[Event]:
        out = []
        for r in records:
            before, after = self.seen.get(r["id"]), r["status"]
            self.seen[r["id"]] = after
            if before is None or before == after:
                continue
            if after == "fetching":
                self.started.setdefault(r["id"], now)
                out.append(Event("start", r["name"], f"start  {r['name']} ({size_text(r.get('bytes'))})"))
            if after == "cached":
                took = now - self.started[r["id"]] if r["id"] in self.started else 0.0
                rate = f" in {took:.1f}s, {format_size(r['bytes'] / took)}/s" if took > 0 and r.get("bytes") else ""
                out.append(Event("done", r["name"], f"done   {r['name']} {size_text(r.get('bytes'))}{rate}"))
            elif after == "failed":
                out.append(Event("failed", r["name"], f"failed {r['name']}: {r.get('error')}"))
        return out


def size_text(size: int | None) -> str:
    return format_size(size) if isinstance(size, int) else "size unknown"


def warm(session: Session, runtime: Runtime, *, out: TextIO, tty: bool) -> int:
    fetcher, store = runtime.fetcher, runtime.store
    report_path = default_report_path(store.root, session).with_suffix(".warm.json")  # not the mount's
    report = Report(report_path, session=session.name, mountpoint="", records=[])
    core: SessionFS | None = None
    interrupted = False
    try:
        tracks = build_tracks(session, http=runtime.http, index=runtime.index, jobs=runtime.jobs)
        core = SessionFS(tracks, fetcher, report, retry_after=0.0, prefetch=True)
        report.replace_records(core.initial_records())
        records = report.snapshot()["tracks"]
        todo = [r for r in records if r["status"] == "pending"]
        print(f"{session.name}: {len(records)} tracks; {sum(r['status'] == 'cached' for r in records)} cached, "
              f"{sum(r['status'] == 'local' for r in records)} local, {len(todo)} to download "
              f"({format_size(sum(r['bytes'] or 0 for r in todo))})", file=out, flush=True)
        core.start_prefetch()
        display = rich_display if tty else plain_display
        with display(out, core, todo) as update:
            tracker = Tracker()
            tracker.events(records, time.monotonic())
            while True:
                snapshot = report.snapshot()["tracks"]
                update(tracker.events(snapshot, time.monotonic()))
                if all(r["status"] in FINAL for r in snapshot):
                    break
                time.sleep(POLL)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Cancel the downloads; workers unlink their unfinished bodies. One blocked in a silent read (a
        # stalled server) would notice only after the stall timeout: do not wait for it past STOP_WAIT.
        if core is not None:
            core.close(wait=STOP_WAIT)
        else:
            fetcher.close(wait=STOP_WAIT)
        store.clean_own_staging()  # queued-but-never-started downloads' files, and any worker still blocked
        report.close(finished=not interrupted)
    data = report.snapshot()
    print(format_report(data), file=out, flush=True)
    if interrupted:
        print("interrupted: downloads stopped; only whole files are in the cache", file=out, flush=True)
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(t["status"] in ("failed", "missing") for t in data["tracks"]) else EXIT_OK


Update = Callable[[list[Event]], None]


@contextlib.contextmanager
def plain_display(out: TextIO, core: SessionFS, todo: list[dict[str, Any]]) -> Iterator[Update]:
    def update(events: list[Event]) -> None:
        for event in events:
            print(event.text, file=out, flush=True)

    yield update


@contextlib.contextmanager
def rich_display(out: TextIO, core: SessionFS, todo: list[dict[str, Any]]) -> Iterator[Update]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}", justify="left"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    total_bytes = sum(r["bytes"] or 0 for r in todo) or None
    done_bytes = 0
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=Console(file=out), transient=False) as progress:
        total = progress.add_task("[bold]total", total=total_bytes)

        def update(events: list[Event]) -> None:
            nonlocal done_bytes
            for event in events:
                if event.kind != "start":
                    progress.console.print(event.text)
                if event.kind in ("done", "failed") and event.name in tasks:
                    progress.remove_task(tasks.pop(event.name))
            live = core.live_status()["downloading"]
            assert isinstance(live, list)
            in_flight = 0
            for d in live:
                name = str(d["name"])
                if name not in tasks:
                    tasks[name] = progress.add_task(name[:40], total=d["total"])
                progress.update(tasks[name], completed=d["available"], total=d["total"])
                in_flight += int(d["available"])
            done_bytes += sum(core_bytes(core, e.name) for e in events if e.kind == "done")
            progress.update(total, completed=done_bytes + in_flight)

        yield update


def core_bytes(core: SessionFS, name: str) -> int:
    track = core.lookup(name)
    return track.size or 0 if track is not None else 0
