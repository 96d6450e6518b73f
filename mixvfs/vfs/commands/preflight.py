"""``mixvfs preflight SESSION``: before an export, can every track be had?

Every track with its source, size and state; the bytes to download; the cache folder's free space
against what the download needs; whether the server accepts the token. Nothing is downloaded: the
tracks are built exactly as the mount builds them (:func:`mixvfs.vfs.session.tracks.build_tracks`, which asks the
server about tracks whose size or format the manifest does not give), and every other cloud track that
is not in the cache gets one HEAD. Exit codes: 0 the export can succeed, 3 it will fail, 4 could not
check (the server could not be reached or was busy), 2 bad manifest or settings.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mixvfs import host
from mixvfs.cache.defaults import QUESTIONS
from mixvfs.cache.errors import AuthRejected, CertificateNotTrusted, ConfigError, FetchError, TransientError
from mixvfs.cache.fetcher import Fetcher
from mixvfs.cache.http import NO_TOKEN_HINT, HttpClient
from mixvfs.cache.store import BlobStore
from mixvfs.cache.token import TokenSource
from mixvfs.cache.units import format_size
from mixvfs.vfs.commands import config, exit_codes, output
from mixvfs.vfs.runtime import open_runtime
from mixvfs.vfs.session.manifest import Session, load_manifest
from mixvfs.vfs.session.tracks import Kind, Track, build_tracks

EXIT_OK, EXIT_WILL_FAIL, EXIT_UNCHECKED = exit_codes.OK, exit_codes.WILL_FAIL, exit_codes.UNCHECKED

# Track states (JSON values); the table shows them with spaces.
LOCAL_OK, CACHED, TO_DOWNLOAD = "local_ok", "cached", "to_download"
UNREACHABLE, UNAUTHORIZED, MISSING = "unreachable", "unauthorized", "missing"
UNTRUSTED = "untrusted"  # the server's TLS certificate was refused: no retry changes that
FAILING = (UNAUTHORIZED, MISSING, UNTRUSTED)


@dataclass
class TrackCheck:
    id: str
    name: str
    source: str  # local | cloud | missing
    location: str | None  # the local path or the URL
    size: int | None
    state: str
    detail: str | None = None


@dataclass
class Disk:
    cache_dir: str
    free: int
    used: int  # by the cache now
    max_size: int
    needed: int  # at most, on the cache's disk, during the export
    enough: bool
    exceeds_max_size: bool


def check_track(track: Track, fetcher: Fetcher, http: HttpClient) -> TrackCheck:
    spec = track.spec
    base = TrackCheck(track.id, track.name, track.kind.value, None, track.size, MISSING)
    if track.kind is Kind.LOCAL:
        base.location, base.state = str(track.local_path), LOCAL_OK
        return base
    if track.kind is Kind.MISSING:
        base.location = str(spec.file_path) if spec.file_path else None
        base.size, base.detail = None, track.reason
        return base
    assert track.source is not None
    base.location = track.source.url
    entry = fetcher.cached(track.source)
    if entry is not None:
        base.size, base.state = entry.size, CACHED
        return base
    failure = track.probe_failure
    if failure is None and not track.answered:  # build_tracks did not need the server for this one
        try:
            info = http.probe(track.source.url)  # HEAD, or a ranged GET where HEAD is not supported
        except FetchError as exc:
            failure = exc
        else:
            if track.size is not None and info.size is not None and info.size != track.size:
                base.detail = (f"the manifest says {track.size} bytes, the server {info.size}: "
                               "the download will fail with a length mismatch")
                return base
            base.size = track.size if track.size is not None else info.size
    if failure is not None:
        base.state, base.detail = classify(failure), failure.reason
        return base
    base.state = TO_DOWNLOAD
    if base.size is None:
        base.detail = "size unknown: the server does not say; it is learned by downloading the track"
    return base


def classify(error: FetchError) -> str:
    if isinstance(error, AuthRejected):
        return UNAUTHORIZED
    if isinstance(error, CertificateNotTrusted):
        return UNTRUSTED
    if isinstance(error, TransientError):
        return UNREACHABLE  # down, busy or too slow now: we cannot tell whether the export would work
    return MISSING  # 404, 410, a refused range...: retrying will not help


def downloads_of(checks: list[TrackCheck]) -> list[TrackCheck]:
    """The tracks to download, one per URL: two tracks of one URL are one download and one blob."""
    return list({c.location: c for c in reversed(checks) if c.state == TO_DOWNLOAD}.values())[::-1]


def disk_check(cache_dir: Path, checks: list[TrackCheck], store: BlobStore, jobs: int) -> Disk:
    """What the export needs on the cache's disk: the bytes to download, bounded by the room left under
    ``max_size`` (older blobs are evicted beyond it) plus the downloads in flight (``jobs`` staging files)."""
    sizes = [c.size or 0 for c in downloads_of(checks)]
    to_download = sum(sizes)
    used = store.used_bytes()
    room = max(0, store.max_size - used)
    needed = min(to_download, room + jobs * max(sizes, default=0))
    free = shutil.disk_usage(existing_parent(cache_dir)).free
    return Disk(str(cache_dir), free, used, store.max_size, needed, free >= needed, to_download > room)


def existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def token_state(tokens: TokenSource | None, token_error: str | None, checks: list[TrackCheck]) -> str:
    if token_error is not None:
        return f"unusable: {token_error}"
    if any(c.state == UNAUTHORIZED for c in checks):
        return "rejected" if tokens is not None else f"required, but none is configured: {NO_TOKEN_HINT}"
    if tokens is None:
        return "none configured"
    asked = any(c.state == TO_DOWNLOAD for c in checks)
    return "accepted" if asked else "not checked (nothing to ask the server)"


def run_preflight(session: Session, settings: config.Settings) -> dict[str, Any]:
    runtime = open_runtime(settings.runtime(), origins=[session.server, *(t.cloud_url for t in session.tracks)],
                           housekeeping=False, tolerate_token_error=True)
    try:
        # The fetcher answers `cached` only: preflight starts no download.
        tracks = build_tracks(session, http=runtime.http, index=runtime.index, waiting=say_waiting)
        # One question per track, each a round trip: asked QUESTIONS at a time, not a few.
        with ThreadPoolExecutor(max_workers=QUESTIONS, thread_name_prefix="preflight") as pool:
            checks = list(pool.map(lambda t: check_track(t, runtime.fetcher, runtime.http), tracks))
        disk = disk_check(settings.cache_dir, checks, runtime.store, runtime.jobs)
        runtime.http.check_team_stores()
        team = runtime.http.team.state() if runtime.http.team is not None else None
    finally:
        runtime.close()
    from mixvfs.vfs.adapter.loading import libfuse_problem

    result = summarize(session, checks, disk, token_state(runtime.tokens, runtime.token_error, checks),
                       token_error=runtime.token_error, fuse_problem=libfuse_problem() or host.fuse_access_problem())
    if team is not None:
        result["team_cache"] = team
        # Never a failed export (the bytes still come, from the origin), but never silently slower either.
        result["notes"] += [f"team cache {c['url']}: {c['store_detail']}" for c in team if c["stores"] is False]
        result["notes"] += [f"team cache {c['url']} is down ({c['reason']}): the tracks come from the music "
                            "service directly" for c in team if c["state"] == "down"]
    return result


def say_waiting(text: str) -> None:
    """On stderr (stdout may be JSON for a script): what preflight is waiting for while the server is slow."""
    print(f"mixvfs: {text}", file=sys.stderr, flush=True)


def short_detail(detail: str) -> str:
    return detail.replace(f": {NO_TOKEN_HINT}", "")


def summarize(session: Session, checks: list[TrackCheck], disk: Disk, token: str,
              token_error: str | None = None, fuse_problem: str | None = None) -> dict[str, Any]:
    downloads = downloads_of(checks)
    # The way to set a token is said once, on the token line, not on every row.
    problems = [f"{c.name}: {c.state.replace('_', ' ')}" + (f" ({short_detail(c.detail)})" if c.detail else "")
                for c in checks if c.state in (*FAILING, UNREACHABLE)]
    if not disk.enough:
        problems.append(f"not enough disk space in {disk.cache_dir}: {format_size(disk.free)} free, "
                        f"{format_size(disk.needed)} needed")
    if token_error is not None:  # `mixvfs mount` refuses to start with it: the export cannot even begin
        problems.append(f"the token source is unusable ({token_error}): `mixvfs mount` will not start with it")
    if fuse_problem is not None:  # nothing can be mounted: MixBoard's exporter has no folder to copy from
        problems.append(f"`mixvfs mount` cannot mount: {fuse_problem}")
    if any(c.state in FAILING for c in checks) or not disk.enough or token_error is not None or fuse_problem:
        verdict, code = "will_fail", EXIT_WILL_FAIL
    elif any(c.state == UNREACHABLE for c in checks):
        verdict, code = "could_not_check", EXIT_UNCHECKED
    else:
        verdict, code = "ok", EXIT_OK
    notes = []
    if disk.exceeds_max_size:
        notes.append(f"the download does not fit under the cache limit ({format_size(disk.max_size)}, "
                     f"{format_size(disk.used)} used): older blobs will be evicted; the export still works, "
                     "but tracks evicted before being copied are downloaded again")
    unknown = sum(1 for c in downloads if c.size is None)
    if unknown:
        notes.append(f"{unknown} track(s) to download have no known size: the totals leave them out")
    return {
        "session": session.name,
        "tracks": [asdict(c) for c in checks],
        "to_download": {"tracks": len(downloads), "bytes": sum(c.size or 0 for c in downloads),
                        "unknown_sizes": unknown},
        "disk": asdict(disk),
        "token": token,
        "fuse": fuse_problem or "ok",
        "verdict": verdict,
        "exit_code": code,
        "problems": problems,
        "notes": notes,
    }


VERDICTS = {"ok": "the export can succeed", "will_fail": "the export will fail",
            "could_not_check": "could not check everything"}


def format_preflight(result: dict[str, Any]) -> str:
    tracks = result["tracks"]
    width = min(60, max([len(t["name"]) for t in tracks] + [4]))
    lines = [f"session {result['session']!r}: {len(tracks)} tracks",
             f"{'NAME':<{width}}  {'SOURCE':<7} {'SIZE':>10}  {'STATE':<12}  DETAIL"]
    for t in tracks:
        name = t["name"] if len(t["name"]) <= width else t["name"][: width - 1] + "…"
        size = format_size(t["size"]) if t["size"] is not None else "?"
        lines.append(f"{name:<{width}}  {t['source']:<7} {size:>10}  {t['state'].replace('_', ' '):<12}  "
                     f"{short_detail(t['detail'] or t['location'] or '')}")
    todo, disk = result["to_download"], result["disk"]
    lines.append(f"to download: {todo['tracks']} track(s), {format_size(todo['bytes'])}")
    lines.append(f"cache disk:  {format_size(disk['free'])} free in {disk['cache_dir']}, "
                 f"{format_size(disk['needed'])} needed — {'ok' if disk['enough'] else 'NOT ENOUGH'}")
    lines.append(f"token:       {result['token']}")
    lines.append(f"fuse:        {'ok' if result['fuse'] == 'ok' else 'NOT USABLE (see the problem below)'}")
    for cache in result.get("team_cache", []):
        stores = {True: "stores", False: "DOES NOT STORE", None: "stores: unknown"}[cache["stores"]]
        state = cache["state"] if cache["state"] == "up" else f"DOWN ({cache['reason']})"
        lines.append(f"team cache:  {cache['url']} {state}, {stores}")
    lines += [f"note: {note}" for note in result["notes"]]
    lines += [f"problem: {problem}" for problem in result["problems"]]
    lines.append(f"verdict: {VERDICTS[result['verdict']]} (exit {result['exit_code']})")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    settings = config.resolve(args, config.PREFLIGHT_SETTINGS)
    session = load_manifest(args.session.expanduser(), default_server=settings.server)
    try:
        result = run_preflight(session, settings)
    except OSError as exc:
        raise ConfigError(f"cannot open the cache at {settings.cache_dir}: {exc.strerror}") from None
    output.emit(result, args.json, format_preflight)
    return int(result["exit_code"])
