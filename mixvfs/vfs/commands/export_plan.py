"""What an export folder should hold (:func:`make_plan`): each track's expected name, size and digest, learned
from the session manifest by the mount's own naming rules, or from the report of the mount the export was made
from, with the cache index and the session's last report filling in digests. Offline: no server is asked."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixvfs.cache.errors import ConfigError, MixvfsError
from mixvfs.cache.location import is_cache
from mixvfs.vfs.commands import config
from mixvfs.vfs.fs.report import load_report, reports_of_session
from mixvfs.vfs.session.manifest import Session, json_error_text, load_manifest
from mixvfs.vfs.session.tracks import Kind, Track, build_tracks

if TYPE_CHECKING:
    from mixvfs.cache.index import SourceIndex


@dataclass
class Expected:
    """What one track should have produced in the export folder."""

    id: str
    name: str
    source: str  # local | cloud | missing
    size: int | None = None
    digest: str | None = None  # xxh3-128 of the right bytes (cloud tracks)
    digest_from: str | None = None  # report | cache index | ...: said in a wrong_content detail
    local_path: Path | None = None  # the source to compare with (local tracks)
    why_unknown: str | None = None  # why the right bytes cannot be known (a missing track's reason, ...)
    failure: str | None = None  # what the mount said when it could not serve the track


@dataclass
class Plan:
    """The expected tracks, and where they were learned."""

    session: str
    against: str  # "manifest" or "report"
    expected: list[Expected]
    manifest: Path | None = None
    report: Path | None = None
    notes: list[str] = field(default_factory=list)


def read_json(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not a session manifest or a mixvfs report: {json_error_text(exc)}") from None
    except ValueError as exc:  # not UTF-8
        raise ConfigError(f"{path}: not a session manifest or a mixvfs report (not valid JSON: {exc})") from None


def is_report(doc: Any) -> bool:
    """A report has a header (``started``) and tracks with a status; a manifest has neither."""
    if not isinstance(doc, dict) or not isinstance(doc.get("tracks"), list):
        return False
    return "started" in doc or any(isinstance(t, dict) and "status" in t for t in doc["tracks"])


def open_index(settings: config.Settings) -> SourceIndex | None:
    """The cache's source index, if there is a cache (read only: a check never creates one)."""
    root = settings.cache_dir
    if not is_cache(root):
        if settings.resolved["cache_dir"].origin != "default":  # named on purpose: maybe a typo, so say it
            print(f"mixvfs: note: no cache at {root}: cloud tracks are checked against a report only",
                  file=sys.stderr)
        return None
    import sqlite3  # here, with diskcache: only when there is a cache to read

    from mixvfs.cache.index import SourceIndex

    try:
        return SourceIndex(root)
    except (OSError, sqlite3.Error) as exc:  # a damaged index only costs digests: say so, check the rest
        print(f"mixvfs: cannot open the cache index in {root} ({exc}): cloud tracks are checked by size only",
              file=sys.stderr)
        return None


def session_tracks(session: Session, index: SourceIndex | None) -> list[Track]:
    """The mount's tracks, names included, without asking the server (its last answers are in the index)."""
    return build_tracks(session, http=None, index=index)


def expected_of(track: Track, index: SourceIndex | None) -> Expected:
    exp = Expected(track.id, track.name, track.kind.value, size=track.size)
    if track.kind is Kind.LOCAL:
        exp.local_path = track.local_path
    elif track.kind is Kind.MISSING:
        exp.size, exp.why_unknown = None, track.reason
    elif track.source is not None and index is not None:
        found = index.find(track.source.url, etag=track.source.etag, size=track.source.size)
        if found is not None:
            entry = found[1]
            exp.digest, exp.digest_from, exp.size = entry.digest, "the cache index", entry.size
    return exp


def records_by_id(doc: dict[str, Any], where: Path) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for i, record in enumerate(doc.get("tracks", [])):
        if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                and isinstance(record.get("name"), str) and record["name"]):
            raise ConfigError(f"{where}: track {i} of the report has no id or name")
        records[record["id"]] = record
    return records


def apply_record(exp: Expected, record: dict[str, Any], *, served: bool) -> None:
    """What a report adds. ``served``: the report of the mount the export was made from, so its names, sizes
    and digests are the reference; else the session's last report in the cache, which only fills a digest
    the index lost (an evicted blob) when the size agrees, and says why a track failed."""
    size = record["bytes"] if isinstance(record.get("bytes"), int) else None
    digest = record["digest"] if isinstance(record.get("digest"), str) and record["digest"] else None
    if served:
        exp.name, exp.source = str(record["name"]), str(record.get("source") or exp.source)
        if exp.source == "cloud" and size is not None:
            exp.size = size
        if exp.source == "cloud" and digest is not None:
            exp.digest, exp.digest_from = digest, "the report"
    elif exp.source == "cloud" and digest is not None and exp.digest is None and exp.size in (None, size):
        exp.digest, exp.digest_from, exp.size = digest, "the session's last report", size
    if record.get("status") in ("failed", "missing") and record.get("error"):
        exp.failure = str(record["error"])


def expected_from_manifest(session: Session, settings: config.Settings) -> list[Expected]:
    # The index holds cloud tracks' digests and server answers: a session of local files needs no cache.
    index = open_index(settings) if any(spec.cloud_url for spec in session.tracks) else None
    try:
        return [expected_of(t, index) for t in session_tracks(session, index)]
    finally:
        if index is not None:
            index.close()


def same_manifest(recorded: object, path: Path) -> bool:
    """The report was written by a mount of this manifest file, unchanged since (same path, not newer)."""
    if not isinstance(recorded, str):
        return False
    try:
        return Path(recorded).resolve() == path.resolve()
    except OSError:
        return False


def plan_from_manifest(path: Path, settings: config.Settings) -> Plan:
    session = load_manifest(path, default_server=settings.server)
    expected = expected_from_manifest(session, settings)
    plan = Plan(session.name, "manifest", expected, manifest=path)
    for report in reports_of_session(settings.cache_dir, session.name):  # newest first: one per mountpoint
        with contextlib.suppress(OSError, ValueError):
            last = load_report(report)
            # Another manifest of the same name (or a report without one): its digests are not this session's.
            if same_manifest(last.get("manifest"), path):
                break
    else:
        return plan
    with contextlib.suppress(OSError, ValueError):
        records = records_by_id(last, report)
        plan.report = report
        for exp in expected:
            if exp.id in records:
                apply_record(exp, records[exp.id], served=False)
    return plan


def plan_from_report(path: Path, doc: dict[str, Any], settings: config.Settings) -> Plan:
    """The report of the mount the export was made from: its names and digests; the local tracks' sources
    (and the cache index's digests) through the manifest it names, if that is still there."""
    records = records_by_id(doc, path)
    plan = Plan(str(doc.get("session") or path.stem), "report", [], report=path)
    known: dict[str, Expected] = {}
    manifest = doc.get("manifest")
    if isinstance(manifest, str) and manifest:
        plan.manifest = Path(manifest)
        try:
            known = {e.id: e for e in expected_from_manifest(load_manifest(plan.manifest,
                                                                           default_server=settings.server),
                                                             settings)}
        except MixvfsError as exc:
            plan.notes.append(f"the session manifest the report names cannot be used ({exc}): local tracks "
                              "are checked by size only")
    else:
        plan.notes.append("the report names no session manifest (an older mixvfs wrote it): local tracks are "
                          "checked by size only; give the manifest instead for a full check")
    for track_id, record in records.items():
        exp = known.get(track_id) or Expected(track_id, str(record["name"]), str(record.get("source") or "missing"))
        if track_id not in known and exp.source == "local":
            exp.why_unknown = "its source file is not known"
            exp.size = record["bytes"] if isinstance(record.get("bytes"), int) else None
        apply_record(exp, record, served=True)
        plan.expected.append(exp)
    return plan


def make_plan(target: Path, settings: config.Settings) -> Plan:
    doc = read_json(target)
    if is_report(doc):
        return plan_from_report(target, doc, settings)
    return plan_from_manifest(target, settings)
