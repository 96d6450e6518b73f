"""What ``mixvfs status`` shows of a live mount (the root's ``user.mixvfs.status``): the downloads in flight,
from the fetcher, and the report's counts and failures. Beside the report, whose records it summarises."""

from __future__ import annotations

import math
import time

from mixvfs.cache.download import Download, State
from mixvfs.cache.fetcher import Fetcher
from mixvfs.vfs.fs.report import FAILED_STATUSES, Report, Status
from mixvfs.vfs.session.tracks import Track

DOWNLOADING = "downloading"  # a count of status's header: the tracks its downloading rows list
MAX_STATUS_FAILURES = 100  # an xattr value is at most 64 KiB on Linux: list this many failures, count the rest


def live_status(tracks: list[Track], fetcher: Fetcher, report: Report, *,
                server: str | None = None) -> dict[str, object]:
    rows = downloading(tracks, fetcher)
    status: dict[str, object] = {"session": report.session,
                                 **report_summary(report, downloading_ids={str(r["id"]) for r in rows}),
                                 "downloading": rows}
    if server is not None:  # the music service refuses the token, or cannot be reached (vfs/fs/server_word.py)
        status["server"] = server
    waits = fetcher.http.waits.active()
    if waits:  # an origin that answered 429/503 with Retry-After: nothing is asked of it until then
        status["server_waits"] = waits
    silent = fetcher.http.silences.silent()
    if silent:  # an origin that let a request go unanswered: asked nothing but a check now and then
        status["server_silent"] = silent
    if fetcher.store.use_refused is not None:  # cached tracks served, their use (LRU, the TTL) not recorded
        status["cache"] = f"cached tracks are served, but their use is not recorded: {fetcher.store.use_refused}"
    if report.behind is not None:  # the report file is as last written: this status is the current word
        status["report"] = report.behind
    team = fetcher.http.team
    if team is not None:  # per cache: up or down; per track downloaded: team cache (hit/miss) or origin
        status["team_cache"] = team.state()
        status["via"] = [{"name": r.name, "via": r.via} for r in report.records() if r.via]
    return status


def downloading(tracks: list[Track], fetcher: Fetcher) -> list[dict[str, object]]:
    """One row per track whose download is queued or running (tracks sharing a source share its numbers), in
    session order: the header's "downloading" count is these rows."""
    active = {d.source.ident: d for d in fetcher.active() if d.state in (State.PENDING, State.FETCHING)}
    if not active:
        return []
    now = time.monotonic()
    return [download_status(active[t.source.ident], t, now) for t in tracks
            if t.source is not None and t.source.ident in active]


def download_status(d: Download, track: Track, now: float) -> dict[str, object]:
    return {"id": track.id, "name": track.name, "available": d.available, "total": d.total,
            "attempts": d.attempts, "state": d.state.value, **({"via": d.via} if d.via else {}),
            **({"server_wait": math.ceil(wait)} if (wait := d.server_wait_left()) is not None else {}),
            "rate": d.available / (now - d.started) if d.started and now > d.started else None}


def report_summary(report: Report, downloading_ids: set[str] | frozenset[str] = frozenset()) -> dict[str, object]:
    """The tracks counted by status — a track whose download is queued or running counted as "downloading",
    as many as the rows that list them — and the failures (the first MAX_STATUS_FAILURES of them named): the
    tracks counted as failed or missing, so that no track is shown twice (one that failed and is downloaded
    again is a downloading row; if it fails again, it is a failure again). A track whose reader was given EIO is
    a failure too, whatever its state now (downloading again, or had later), as the report counts it."""
    records = report.records()
    counts: dict[str, int] = {}
    failed = []
    for record in records:
        shown = DOWNLOADING if record.id in downloading_ids else str(record.status)
        if shown == Status.FETCHING:  # the report says so a moment before or after the fetcher: neither lists it
            shown = str(Status.PENDING)
        counts[shown] = counts.get(shown, 0) + 1
        if shown in FAILED_STATUSES:
            failed.append({"name": record.name, "error": record.error})
        elif record.reader_error:  # as the report counts it: the export may lack the track, whatever it is now
            failed.append({"name": record.name, "error": f"a reader got an input/output error: {record.reader_error}"})
    return {"tracks": len(records), "counts": counts, "failed": failed[:MAX_STATUS_FAILURES],
            "failed_total": len(failed)}
