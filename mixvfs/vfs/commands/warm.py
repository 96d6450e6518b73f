"""``cachectl warm SESSION``: download every cloud track of a session into the cache ahead of the export.

The downloads are the mount's own (its :class:`mixvfs.vfs.fs.prefetch.Prefetcher` over a
:class:`mixvfs.cache.fetcher.Fetcher`, reported by its :class:`mixvfs.vfs.fs.recorder.Recorder`): ``jobs`` at a
time, retried, verified, committed by rename — so a warmed cache is exactly what a mount would have built.
Progress goes through rich on a terminal (per track and total: bytes, rate, ETA) and as one plain line per event
otherwise (logs, pipes, CI). Ctrl-C stops the downloads, removes their staging files and leaves only whole
blobs. The end is the report's per-track table.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from mixvfs.cache.download import Download
from mixvfs.cache.download import Event as DownloadEvent
from mixvfs.cache.errors import Cancelled
from mixvfs.cache.units import format_size
from mixvfs.vfs.commands.status import server_wait_text
from mixvfs.vfs.fs.live_status import downloading
from mixvfs.vfs.fs.prefetch import Prefetcher
from mixvfs.vfs.fs.recorder import Recorder
from mixvfs.vfs.fs.report import FAILED_STATUSES, Report, Status, default_report_path, format_report
from mixvfs.vfs.runtime import Runtime
from mixvfs.vfs.session.manifest import Session
from mixvfs.vfs.session.tracks import NameKeeper, SourceTracks, Track, build_tracks

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
FINAL = (Status.LOCAL, Status.CACHED, Status.FAILED, Status.MISSING)
TICK = 0.2  # how often the display refreshes bytes in flight when no event comes
STOP_WAIT = 2.0  # on Ctrl-C, how long to let downloads wind down before removing their staging files


@dataclass
class Line:
    kind: str  # start | wait | done | failed
    name: str
    text: str
    size: int = 0  # the bytes a "done" line adds to the total


@dataclass
class Announcer:
    """Turns the fetcher's download events into display lines: one ``start`` and one ``done`` or
    ``failed`` per track, however fast the download (built on events, not on polling the report)."""

    sources: SourceTracks  # whose bytes a download is
    started: dict[str, float] = field(default_factory=dict)
    said: set[str] = field(default_factory=set)  # names with their final line printed

    def lines(self, download: Download, event: DownloadEvent, at: float) -> list[Line]:
        out = []
        for name in [t.name for t in self.sources.of(download.source)]:
            if event is DownloadEvent.ATTEMPT and name not in self.started:
                self.started[name] = at
                out.append(Line("start", name, f"start  {name} ({size_text(download.total)})"))
            elif event is DownloadEvent.SERVER_WAIT:
                asked = math.ceil(download.server_wait_asked)
                out.append(Line("wait", name, f"wait   {name}: server asked to wait {asked} s"))
            elif event is DownloadEvent.DONE and name not in self.said:
                self.said.add(name)
                took = at - self.started.get(name, at)
                rate = f" in {took:.1f}s, {format_size(int((download.total or 0) / took))}/s" if took > 0 else ""
                out.append(Line("done", name, f"done   {name} {size_text(download.total)}{rate}", download.total or 0))
            elif event is DownloadEvent.FAILED and download.error is not None and not isinstance(
                    download.error, Cancelled) and name not in self.said:
                self.said.add(name)
                out.append(Line("failed", name, f"failed {name}: {download.error.reason}"))
        return out

    def leftovers(self, records: list[dict[str, Any]]) -> list[Line]:
        """Failures that were no download's (e.g. no room for a staging file): from the report."""
        out = []
        for r in records:
            if r["status"] == Status.FAILED and r["name"] not in self.said:
                self.said.add(r["name"])
                out.append(Line("failed", r["name"], f"failed {r['name']}: {r.get('error')}"))
        return out


def size_text(size: int | None) -> str:
    return format_size(size) if isinstance(size, int) else "size unknown"


def warm(session: Session, runtime: Runtime, *, out: TextIO, tty: bool) -> int:
    fetcher, store = runtime.fetcher, runtime.store
    report_path = default_report_path(store.root, session.name).with_suffix(".warm.json")  # not the mount's
    report = Report(report_path, session=session.name, mountpoint="", records=[])
    recorder = Recorder(report, fetcher, failed_for=0.0)
    prefetcher: Prefetcher | None = None
    interrupted = False
    # Each failure is said once, as a "failed" line: the recorder's own log line for it would reach stderr
    # too (no log handler is set up for cachectl).
    # The downloads' retry lines likewise: the tries are counted in the report.
    quiet = [logging.getLogger("mixvfs.vfs.fs.recorder"), logging.getLogger("mixvfs.cache.download.retries")]
    for logger in quiet:
        logger.disabled = True
    events: queue.SimpleQueue[tuple[Download, DownloadEvent, float]] = queue.SimpleQueue()
    tracks: list[Track] = []
    sources = SourceTracks()

    def on_event(download: Download, event: DownloadEvent) -> None:
        # The line's event first, then the report: once the loop sees a track final in the report, the event
        # that made it so is already queued, and the loop's last drain prints it.
        events.put((download, event, time.monotonic()))
        for track in sources.of(download.source):
            recorder.download_event(track, download, event)

    unsubscribe = fetcher.subscribe(on_event)
    names = NameKeeper(runtime.index)
    try:
        tracks += build_tracks(session, http=runtime.http, index=runtime.index)
        names.keep(session.name, tracks)  # beside the downloads: 100 000 names first written take seconds
        sources.add(tracks)
        report.replace_records(recorder.initial_records(tracks))
        records = report.snapshot()["tracks"]
        todo = [r for r in records if r["status"] == Status.PENDING]
        print(f"{session.name}: {len(records)} tracks; {sum(r['status'] == Status.CACHED for r in records)} "
              f"cached, {sum(r['status'] == Status.LOCAL for r in records)} local, {len(todo)} to download "
              f"({format_size(sum(r['bytes'] or 0 for r in todo))})", file=out, flush=True)
        prefetcher = Prefetcher(fetcher, recorder)
        prefetcher.start(tracks)
        announcer = Announcer(sources)
        display = rich_display if tty else plain_display
        with display(out, lambda: downloading(tracks, fetcher), todo) as update:
            while True:
                lines = []
                with contextlib.suppress(queue.Empty):
                    lines += announcer.lines(*events.get(timeout=TICK))
                    while True:
                        lines += announcer.lines(*events.get_nowait())
                snapshot = report.snapshot()["tracks"]
                finished = all(r["status"] in FINAL for r in snapshot)
                if finished:  # the events queued since the drain above (each before its report change)
                    with contextlib.suppress(queue.Empty):
                        while True:
                            lines += announcer.lines(*events.get_nowait())
                lines += announcer.leftovers(snapshot)
                update(lines)
                if finished:
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if prefetcher is not None:
            prefetcher.stop()
        # Cancel the downloads; workers unlink their unfinished bodies. One blocked in a silent read (a
        # stalled server) would notice only after the stall timeout: do not wait for it past STOP_WAIT.
        fetcher.close(wait=STOP_WAIT)
        recorder.close()
        names.close(finish=not interrupted)
        unsubscribe()
        store.clean_own_staging()  # queued-but-never-started downloads' files, and any worker still blocked
        report.close(finished=not interrupted)
        for logger in quiet:  # only now: a worker may still be logging the failure it just reported
            logger.disabled = False
    data = report.snapshot()
    print(format_report(data), file=out, flush=True)
    if interrupted:
        print("interrupted: downloads stopped; only whole files are in the cache", file=out, flush=True)
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(t["status"] in FAILED_STATUSES for t in data["tracks"]) else EXIT_OK


Update = Callable[[list[Line]], None]
InFlight = Callable[[], list[dict[str, Any]]]  # the downloads running now, as ``mixvfs status`` shows them


@contextlib.contextmanager
def plain_display(out: TextIO, in_flight: InFlight, todo: list[dict[str, Any]]) -> Iterator[Update]:
    def update(events: list[Line]) -> None:
        for event in events:
            print(event.text, file=out, flush=True)

    yield update


@contextlib.contextmanager
def rich_display(out: TextIO, in_flight: InFlight, todo: list[dict[str, Any]]) -> Iterator[Update]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class BinarySpeed(ProgressColumn):
        """Rate in the project's units (KiB/s, MiB/s): rich's own column counts in kB/s and MB/s."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{format_size(int(speed))}/s", style="progress.data.speed")

    columns = (TextColumn("{task.description}", justify="left"), BarColumn(), DownloadColumn(binary_units=True),
               BinarySpeed(), TimeRemainingColumn())
    total_bytes = sum(r["bytes"] or 0 for r in todo) or None
    done_bytes = 0
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=Console(file=out), transient=False) as progress:
        total = progress.add_task("[bold]total", total=total_bytes)

        def update(events: list[Line]) -> None:
            nonlocal done_bytes
            for event in events:
                if event.kind != "start":
                    progress.console.print(event.text)
                if event.kind in ("done", "failed") and event.name in tasks:
                    progress.remove_task(tasks.pop(event.name))
            held = 0
            for d in in_flight():
                name = str(d["name"])
                if name not in tasks:
                    tasks[name] = progress.add_task(name[:40], total=d["total"])
                progress.update(tasks[name], completed=d["available"], total=d["total"],
                                description=name[:40] + server_wait_text(d))
                held += int(str(d["available"]))
            done_bytes += sum(e.size for e in events if e.kind == "done")
            progress.update(total, completed=done_bytes + held)

        yield update

