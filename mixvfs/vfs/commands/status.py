"""``mixvfs status MOUNTPOINT``: a live view of a running mount — which tracks are downloading, bytes done
of total, failures. The daemon publishes it as JSON in the root's ``user.mixvfs.status`` extended
attribute (built on each read from the fetcher's downloads in flight and the report), so no socket or
extra protocol is needed and ``getfattr -n user.mixvfs.status MOUNTPOINT`` (``xattr -p`` on macOS) shows the
same. Read through the platform seam: macOS's Python has no ``os.getxattr``."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mixvfs import host
from mixvfs.cache.errors import ConfigError, MixvfsError
from mixvfs.cache.units import format_size
from mixvfs.vfs.commands import exit_codes

STATUS_XATTR = "user.mixvfs.status"


def read_status(mountpoint: Path) -> dict[str, Any]:
    from mixvfs.vfs.fs.history import not_live  # says where the last report is, after an unmount
    from mixvfs.vfs.fs.mount import DaemonDied, died_text, is_stale

    # Only a mount point's attributes are a live mount's word: `cp -a` or `rsync -aAX` of a mount's folder
    # copies the root's attributes too, and a status read from such a copy claimed a session that was not there
    # (a link to the mount is followed first: ismount says no to links).
    live = os.path.ismount(os.path.realpath(mountpoint))
    try:
        if not live:
            raise FileNotFoundError(errno.ENOENT, "not a mount point")
        raw = host.getxattr(mountpoint, STATUS_XATTR)
    except OSError as exc:
        if is_stale(mountpoint):  # killed, not unmounted: a failure (exit 1), as `mixvfs report` of it
            raise DaemonDied(died_text(mountpoint)) from None
        raise ConfigError(not_live(mountpoint, exc.strerror)) from None
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ConfigError(f"{mountpoint}: unreadable status")
    return data


def server_wait_text(download: dict[str, Any]) -> str:
    """``, server asked to wait 30 s`` for a download held back by the server's Retry-After, else empty."""
    seconds = download.get("server_wait")
    return f", server asked to wait {seconds} s" if seconds is not None else ""


def format_status(data: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(data.get("counts", {}).items()))
    lines = [f"session {data.get('session')!r}: {data.get('tracks')} tracks ({counts or 'none'})"]
    if data.get("server"):
        lines.append(f"server: {data['server']}")
    if data.get("cache"):
        lines.append(f"cache: {data['cache']}")
    if data.get("report"):
        lines.append(f"report: behind this status: {data['report']}")
    downloading = data.get("downloading", [])
    rate = sum(d.get("rate") or 0 for d in downloading)
    left = [d["total"] - d["available"] for d in downloading if d.get("total") is not None]
    overall = f", {format_size(int(rate))}/s{eta_text(sum(left), rate)}" if rate else ""
    lines.append(f"downloading: {len(downloading)}{overall}")
    for d in downloading:
        total = d.get("total")
        if d.get("state") == "pending" and not d.get("available"):  # queued: no bytes, maybe no size yet
            of = f" ({format_size(total)})" if total else ""
            lines.append(f"  {d.get('name')}: queued{of}{server_wait_text(d)}")
            continue
        done = format_size(d.get("available", 0))
        share = f" of {format_size(total)} ({100 * d['available'] / total:.0f}%)" if total else ""
        speed = f", {format_size(int(d['rate']))}/s" if d.get("rate") else ""
        eta = eta_text(total - d["available"], d["rate"]) if total and d.get("rate") else ""
        retry = f", attempt {d['attempts']}" if d.get("attempts", 0) > 1 else ""
        via = f", from the {d['via']}" if d.get("via") else ""
        lines.append(f"  {d.get('name')}: {done}{share}{speed}{eta}{retry}{via}{server_wait_text(d)}")
    lines += [f"{w.get('origin')}: server asked to wait {w.get('seconds')} s" for w in data.get("server_waits", [])]
    lines += [f"{w.get('origin')}: has not answered for {w.get('seconds')} s; asked again now and then"
              for w in data.get("server_silent", [])]
    failed = data.get("failed", [])
    lines.append(f"failed: {data.get('failed_total', len(failed))}")
    lines += [f"  {f.get('name')}: {f.get('error')}" for f in failed]
    hidden = data.get("failed_total", len(failed)) - len(failed)
    if hidden > 0:
        lines.append(f"  … and {hidden} more (mixvfs report MOUNTPOINT)")
    lines += team_lines(data)
    return "\n".join(lines)


def team_lines(data: dict[str, Any]) -> list[str]:
    """With a team cache: each cache up or down, and where each downloaded track's bytes came from."""
    if "team_cache" not in data:
        return []
    lines = []
    for cache in data["team_cache"]:
        state = "up" if cache.get("state") == "up" else (
            f"down ({cache.get('reason')}), tried again in {cache.get('retry_in')}s")
        if cache.get("stores") is False:
            state += f", {cache.get('store_detail')}"
        elif cache.get("stores") is None and cache.get("store_detail"):
            state += f"; whether it stores is unknown: {cache.get('store_detail')}"
        lines.append(f"team cache {cache.get('url')}: {state}")
    lines += [f"  {t.get('name')}: from the {t.get('via')}" for t in data.get("via", [])]
    return lines


def eta_text(remaining: int, rate: float) -> str:
    """ ", 1m05s left" at this rate ("" when it cannot be told)."""
    if rate <= 0 or remaining <= 0:
        return ""
    seconds = int(remaining / rate + 0.5)
    if seconds < 1:
        return ", under 1s left"
    return f", {seconds // 60}m{seconds % 60:02d}s left" if seconds >= 60 else f", {seconds}s left"


def main(args: argparse.Namespace) -> int:
    mountpoint: Path = args.mountpoint.expanduser()
    if args.watch is None:
        data = read_status(mountpoint)
        show(data, as_json=args.json)
        return outcome(data)
    return watch(mountpoint, max(0.1, args.watch), as_json=args.json)


def outcome(data: dict[str, Any]) -> int:
    """What a status says of the session: 1 once a track failed, else 0."""
    return exit_codes.FAILED if data.get("failed_total") else exit_codes.OK


def show(data: dict[str, Any], *, as_json: bool) -> None:
    print(json.dumps(data, ensure_ascii=False) if as_json else format_status(data), flush=True)


class Watched:
    """The last status a watch showed: what its exit code says when the watch ends."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.last: dict[str, Any] | None = None

    def read(self) -> dict[str, Any] | None:
        """The status now; None once the mount has gone away after the watch saw it live."""
        try:
            self.last = read_status(self.mountpoint)
        except MixvfsError:
            if self.last is None:
                raise  # never live: the usual "not mounted" (exit 2), naming the last report; a dead one (1)
            return None
        return self.last

    def ended(self) -> int:
        """The mount went away (an unmount, a logout): say so, with the final report's word where it is known."""
        assert self.last is not None
        from mixvfs.vfs.fs.mount import is_stale

        if is_stale(self.mountpoint):  # killed, not unmounted: what it had not finished was never had
            print(f"mixvfs: the mount at {self.mountpoint} ended: its daemon died (see its log; `mixvfs report "
                  f"{self.mountpoint}` shows the report as last written)", file=sys.stderr, flush=True)
            return exit_codes.FAILED
        failed = self.last.get("failed_total", 0)
        final = final_report(self.mountpoint)
        if final is not None:
            path, failed = final
            print(f"mixvfs: the mount at {self.mountpoint} ended; {failed} track(s) failed (report: {path})",
                  file=sys.stderr, flush=True)
        else:
            print(f"mixvfs: the mount at {self.mountpoint} ended", file=sys.stderr, flush=True)
        return exit_codes.FAILED if failed else exit_codes.OK

    def interrupted(self) -> int:
        """Ctrl-C: the watch stops, the session's outcome so far stays its exit code (a script that watches
        until Ctrl-C learns whether a track failed, as from `mixvfs status`)."""
        return outcome(self.last) if self.last is not None else exit_codes.OK


def final_report(mountpoint: Path) -> tuple[Path, int] | None:
    """The report the ended mount left (found through the state folder) and how many tracks it says failed."""
    from mixvfs.vfs.fs.history import recall
    from mixvfs.vfs.fs.report import FAILED_STATUSES, load_report

    last = recall(mountpoint)
    if last is None:
        return None
    try:
        tracks = load_report(last.report).get("tracks", [])
    except (OSError, ValueError):
        return None
    return last.report, sum(1 for t in tracks if isinstance(t, dict) and t.get("status") in FAILED_STATUSES)


def watch(mountpoint: Path, interval: float, *, as_json: bool) -> int:
    """Refresh until Ctrl-C or the mount goes away: in place on a terminal, one block (or JSON line) per
    refresh otherwise (a log or a pipe). Either way the exit code is the session's: 1 if a track failed."""
    watched = Watched(mountpoint)
    if as_json or not sys.stdout.isatty():
        try:
            while (data := watched.read()) is not None:
                show(data, as_json=as_json)
                time.sleep(interval)
        except KeyboardInterrupt:
            return watched.interrupted()
        return watched.ended()
    from rich.live import Live
    from rich.text import Text

    first = watched.read()
    assert first is not None
    try:
        with Live(Text(format_status(first)), refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                data = watched.read()
                if data is None:
                    break
                live.update(Text(format_status(data)))
    except KeyboardInterrupt:
        return watched.interrupted()
    return watched.ended()
