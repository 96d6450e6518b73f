"""The ``cachectl`` command: look after the mixvfs cache (see :data:`DESCRIPTION`).

Safe while a mount uses the same cache: diskcache's metadata is transactional across processes, and a
blob removed under an open reader keeps reading through its descriptor.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mixvfs.cache.defaults import UNINDEXED_GRACE
from mixvfs.cache.errors import ConfigError
from mixvfs.cache.index import SourceIndex
from mixvfs.cache.remote import Seen
from mixvfs.cache.store import BlobInfo, BlobStore, Unindexed
from mixvfs.cache.units import format_size
from mixvfs.vfs.commands import config, output
from mixvfs.vfs.runtime import open_cache, open_runtime
from mixvfs.vfs.session.manifest import load_manifest

DESCRIPTION = """cachectl: look after the mixvfs cache (stats, ls, verify, prune), fill it ahead of an export (warm),
and keep a session's tracks whatever the limits (pin, unpin). Safe while a mount uses the same cache. Blobs are
shown by the track name and session they were last seen under, then by digest and URL. Each command's help
(cachectl COMMAND --help) describes it, with examples.
The cache options (--cache-dir, --max-size, --max-age) go before or after the command.

Exit codes: 0 ok; 1 verify found corrupt blobs, or warm or pin could not download a track; 2 bad flags,
config or manifest, no cache at the folder (stats, ls, verify, prune, unpin), a session that is not pinned
(unpin), or an unusable cache folder; 130 warm or pin interrupted (Ctrl-C).
"""
EXAMPLES = """examples:
  cachectl stats
  cachectl ls --json
  cachectl prune --max-age 7d --max-size 5G --dry-run
  cachectl verify
  cachectl warm ~/Sessions/friday.json --jobs 4     # download every cloud track before the export
  cachectl warm friday.json > warm.log              # not a terminal: one line per event
  cachectl pin ~/Sessions/friday.json               # download what is missing and keep it, whatever the limits
  cachectl unpin ~/Sessions/friday.json             # or by the session's name, as stats and ls show it
"""
JSON_HELP = "print JSON instead of a table"
# name: (one-line summary, description, examples)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "stats": ("blob count, bytes and limits",
              "The cache folder, its blobs and bytes against the size limit, the age limit, downloads in\n"
              "progress or left over by a dead process, the index's entries, and the files in the blob folder\n"
              "that no index row names (left by commits the cache database refused; prune removes them).",
              "  cachectl stats\n  cachectl --cache-dir /Volumes/Scratch/mixvfs stats --json"),
    "ls": ("every blob: its track name, session, pins, then digest and sources",
           "Every blob, least recently used first: the track name (\"Artist - Title.ext\") and session it was\n"
           "last seen under (by a mount, warm or pin; \"-\" for a blob cached before names were kept), its\n"
           "size, last use, the pinned sessions that keep it, then its content digest and the sources (cloud\n"
           "URLs) that map to it.",
           "  cachectl ls\n  cachectl ls --json | jq '.[] | select(.size > 100000000)'"),
    "verify": ("re-hash every blob; remove corrupt ones",
               "Re-hash every blob and remove the ones whose bytes changed on disk (a mount downloads them again\n"
               "when read). Exit 1 if a blob was corrupt.",
               "  cachectl verify\n  cachectl verify --json"),
    "prune": ("expire unused blobs, then least recently used down to the size",
              "Remove blobs unused for --max-age, then the least recently used ones until the rest fits in\n"
              "--max-size (both default to the cache's settings), the staging files of dead downloads, and\n"
              f"the files in the blob folder that no index row names once {UNINDEXED_GRACE / 60:g} minutes old (left\n"
              "by commits the cache database refused: a full disk, a read-only or failing database).\n"
              "Blobs of a pinned session (cachectl pin) are kept whatever the limits.",
              "  cachectl prune --max-age 7d --max-size 5G --dry-run    # only say what would go\n"
              "  cachectl prune --max-size 0                            # empty the cache"),
    "warm": ("download every cloud track of a session now (progress; Ctrl-C stops)",
             "Download every cloud track of SESSION into the cache ahead of the export: the same downloads a\n"
             "mount makes (--jobs at a time, retried, verified), so a warmed cache is what a mount would have\n"
             "built. Progress per track and in total on a terminal; one plain line per event otherwise (logs,\n"
             "pipes, CI). Ctrl-C stops the downloads and leaves only whole blobs. It ends with the report's\n"
             "per-track table. Exit 1 if a track could not be downloaded, 130 if interrupted.",
             "  cachectl warm ~/Sessions/friday.json --jobs 4\n"
             "  cachectl warm friday.json --cache-dir /Volumes/Scratch/mixvfs > warm.log"),
    "pin": ("download what a session lacks (as warm does) and keep its tracks whatever the limits",
            "Pin SESSION, then download its missing cloud tracks as warm does (same output, same exit codes). The\n"
            "blobs of a pinned session are never removed by prune or by eviction, whatever --max-size and\n"
            "--max-age say; they still count toward the size limit, and stats warns when pins alone exceed it.\n"
            "A track whose server copy changes stays pinned (the pin is by URL). Safe beside a live mount: its\n"
            "next eviction sees the pin. Pinning again updates the pin to the manifest's tracks now.",
            "  cachectl pin ~/Sessions/friday.json\n  cachectl pin friday.json --jobs 4 > pin.log"),
    "unpin": ("release a pinned session's tracks to the ordinary limits",
              "Remove the pin of SESSION (its manifest, or its name as stats and ls show it). Its blobs stay in\n"
              "the cache as ordinary ones: the next prune or eviction may remove them.",
              "  cachectl unpin ~/Sessions/friday.json\n  cachectl unpin 'Friday Night'"),
}


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: `--tok` must not quietly mean `--token-file`, nor `--token` be "ambiguous".
    parser = argparse.ArgumentParser(prog="cachectl", description=DESCRIPTION, epilog=EXAMPLES, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=output.VersionAction)
    config.add_flags(parser, config.CACHE_SETTINGS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name, (summary, text, examples) in COMMANDS.items():
        cmd = sub.add_parser(name, help=summary, description=text, epilog="examples:\n" + examples + "\n",
                             allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
        # The cache options after the command too (`cachectl stats --cache-dir X`); SUPPRESS: not given here,
        # they leave the value given before the command alone.
        config.add_flags(cmd, config.CACHE_SETTINGS, default=argparse.SUPPRESS)
        commands[name] = cmd
    for name in ("stats", "ls", "verify", "prune"):
        commands[name].add_argument("--json", action="store_true", help=JSON_HELP)
    commands["prune"].add_argument("--dry-run", action="store_true", help="only say what would be freed")
    for name in ("warm", "pin"):
        commands[name].add_argument("session", type=Path, help="the session manifest (JSON)")
        config.add_flags(commands[name], config.WARM_SETTINGS)
    commands["unpin"].add_argument("session", help="the session manifest, or the pinned session's name")
    return parser


@output.quiet_on_closed_pipe
def main(argv: Sequence[str] | None = None) -> int:
    return output.command_line("cachectl", argv, run, lambda _exc: 2, config.refuse_token_flag)


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("warm", "pin"):
        return cmd_warm(args)  # opens the whole runtime (store, index, HTTP, fetcher) itself
    # Only warm may create the cache: the others only look, and a mistyped --cache-dir is "no cache".
    store, index = open_cache(config.resolve(args, config.CACHE_SETTINGS).cache_limits(), create=False)
    try:
        return run_command(args, store, index)
    finally:
        index.close()
        store.close()


def run_command(args: argparse.Namespace, store: BlobStore, index: SourceIndex) -> int:
    if args.command == "stats":
        return emit(args, stats(store), format_stats)
    if args.command == "unpin":
        return cmd_unpin(args.session, index)
    names = Names.of(index)  # read before prune and verify remove the rows of what they remove
    if args.command == "ls":
        return emit(args, listing(store, index, names), format_listing)
    if args.command == "prune":
        # --max-age/--max-size are the store's limits (flag, env, config file or default): prune to them.
        victims = store.prune(dry_run=args.dry_run, warn=False)  # the output says it (format_prune)
        # Blobs whose index row was refused (a full disk): no track can find them, once UNINDEXED_GRACE old.
        gone = {v.digest for v in victims}
        victims += [u for u in store.remove_unnamed(dry_run=args.dry_run) if u.digest not in gone]
        # Dead downloads' staging files go too (those no process holds: see BlobStore.clean_stale_staging).
        staging = store.clean_stale_staging(dry_run=args.dry_run)
        # Files of commits the database refused (no row names them), once UNINDEXED_GRACE old.
        unindexed = store.sweep_unindexed(dry_run=args.dry_run)
        swept = {u.filename for u in unindexed}
        young = [u for u in store.unindexed() if u.filename not in swept]  # a commit may still name them
        kept = store.pinned()
        kept_infos = [i for i in store.infos() if i.digest in kept]
        result = {"dry_run": args.dry_run, "freed_blobs": len(victims), "freed_bytes": sum(v.size for v in victims),
                  "blobs": [names.blob_json(v) for v in victims], "staging_files": len(staging),
                  "unindexed_files": [unindexed_json(store, u) for u in unindexed],
                  "unindexed_bytes": sum(u.size for u in unindexed),
                  "unindexed_kept": len(young), "unindexed_kept_bytes": sum(u.size for u in young),
                  "unindexed_grace": UNINDEXED_GRACE,
                  "pinned_kept": len(kept_infos), "pinned_bytes": sum(i.size for i in kept_infos),
                  "max_size": store.max_size}
        return emit(args, result, format_prune)
    if args.command == "verify":
        checked, corrupt = store.verify()
        result = {"checked": checked, "corrupt": [names.blob_json(c) for c in corrupt]}
        emit(args, result, format_verify)
        return 1 if corrupt else 0
    raise ConfigError(f"unknown command {args.command}")


def cmd_warm(args: argparse.Namespace) -> int:
    from mixvfs.vfs.commands import pin, warm

    settings = config.resolve(args, config.CACHE_SETTINGS + config.WARM_SETTINGS)
    path = args.session.expanduser()
    session = load_manifest(path, default_server=settings.server)
    runtime = open_runtime(settings.runtime(), origins=[session.server, *(t.cloud_url for t in session.tracks)])
    try:
        if args.command == "pin":
            return pin.pin(path, session, runtime, out=sys.stdout, tty=sys.stdout.isatty())
        return warm.warm(session, runtime, out=sys.stdout, tty=sys.stdout.isatty())
    finally:
        runtime.close()


def cmd_unpin(which: str, index: SourceIndex) -> int:
    from mixvfs.vfs.commands import pin

    released = pin.unpin(which, index)
    print(f"unpinned {released.session!r} ({released.key}): its {len(released.urls)} cloud track(s) are ordinary "
          "cache entries again (prune and eviction may remove them)")
    return 0


@dataclass(frozen=True)
class Names:
    """What the index knows to name blobs by: the sources of each digest, the name and session each source was
    last seen under, and the pinned sessions holding each digest."""

    sources: dict[str, list[str]]
    seen: dict[str, Seen]
    pinned: dict[str, list[str]]

    @classmethod
    def of(cls, index: SourceIndex) -> Names:
        return cls(index.sources_by_digest(), index.seen(), index.pinned_digests())

    def tracks(self, digest: str) -> list[dict[str, str]]:
        found = []
        for ident in self.sources.get(digest, []):
            seen = self.seen.get(ident)
            if seen is not None:
                found.append({"name": seen.name, "session": seen.session, "source": ident})
        return found

    def blob_json(self, info: BlobInfo) -> dict[str, Any]:
        tracks = self.tracks(info.digest)
        return {"name": tracks[0]["name"] if tracks else None, "session": tracks[0]["session"] if tracks else None,
                "tracks": tracks, "pinned_by": self.pinned.get(info.digest, []), **blob_json(info)}


def stats(store: BlobStore) -> dict[str, Any]:
    infos = store.infos()
    pins = store.index.pins()
    pinned = store.index.pinned_digests(pins)
    sizes = {i.digest: i.size for i in infos}
    pinned_bytes = sum(size for digest, size in sizes.items() if digest in pinned)
    sessions = []
    for one in pins:
        held = [d for d in store.index.pinned_digests([one]) if d in sizes]  # by the pin, not its name (may repeat)
        sessions.append({"session": one.session, "manifest": one.key, "tracks": len(one.urls), "blobs": len(held),
                         "bytes": sum(sizes[d] for d in held)})
    total = sum(sizes.values())
    unindexed = store.unindexed()
    young = [u for u in unindexed if time.time() - u.changed < UNINDEXED_GRACE]
    unnamed = store.unnamed(infos, grace=0)  # all of them: prune says which are old enough to go
    return {"cache_dir": str(store.root), "blobs": len(infos), "bytes": total,
            "max_size": store.max_size, "max_age": store.max_age,
            "pinned": {"blobs": sum(d in pinned for d in sizes), "bytes": pinned_bytes, "sessions": sessions},
            "unpinned": {"blobs": sum(d not in pinned for d in sizes), "bytes": total - pinned_bytes},
            "pins_exceed_limit": pinned_bytes > store.max_size,
            "staging_files": len(list(store.staging.glob("*.part"))),
            "staging_left_over": len(store.clean_stale_staging(dry_run=True)), "index": store.index.counts(),
            "unindexed": {"files": len(unindexed), "bytes": sum(u.size for u in unindexed),
                          "younger_than_grace": len(young), "grace": UNINDEXED_GRACE},
            "unnamed": {"blobs": len(unnamed), "bytes": sum(i.size for i in unnamed)}}


def unindexed_json(store: BlobStore, left: Unindexed) -> dict[str, Any]:
    return {"path": str(store.root / "blobs" / left.filename), "size": left.size, "changed": iso(left.changed)}


def listing(store: BlobStore, index: SourceIndex, names: Names) -> list[dict[str, Any]]:
    return [{**names.blob_json(info), "sources": names.sources.get(info.digest, [])} for info in store.infos()]


def blob_json(info: BlobInfo) -> dict[str, Any]:
    return {"digest": info.digest, "size": info.size, "last_used": iso(info.last_used),
            "expires": iso(info.expires) if info.expires else None}


def named(blob: dict[str, Any]) -> str:
    """A blob as people know it: "Artist - Title.ext (session)", then how many other names share its bytes."""
    if not blob["tracks"]:
        return "- (no name known)"
    more = len({t["name"] for t in blob["tracks"]}) - 1
    return f"{blob['name']} ({blob['session']})" + (f" +{more} more" if more > 0 else "")


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def emit(args: argparse.Namespace, result: Any, formatter: Any) -> int:
    output.emit(result, args.json, formatter)
    return 0


def format_stats(s: dict[str, Any]) -> str:
    pinned, unpinned = s["pinned"], s["unpinned"]
    lines = [f"cache:    {s['cache_dir']}", f"blobs:    {s['blobs']}",
             f"bytes:    {format_size(s['bytes'])} of {format_size(s['max_size'])}",
             f"pinned:   {pinned['blobs']} blob(s), {format_size(pinned['bytes'])}, kept whatever the limits",
             *[f"          {p['session']}: {p['blobs']} of {p['tracks']} cloud track(s) held, "
               f"{format_size(p['bytes'])} ({p['manifest']})" for p in pinned["sessions"]],
             f"unpinned: {unpinned['blobs']} blob(s), {format_size(unpinned['bytes'])}",
             f"max age:  {s['max_age'] / 86400:g} days",
             f"staging:  {s['staging_files']} download(s) in progress or left over "
             f"({s['staging_left_over']} left over by a dead process)",
             f"index:    {s['index']['sources']} source(s), {s['index']['names']} with a track name, "
             f"{s['index']['heads']} server answer(s)"]
    left = s["unindexed"]
    if left["files"]:
        young = (f" once {left['grace'] / 60:g} min old ({left['younger_than_grace']} younger: a commit may still "
                 "name them)" if left["younger_than_grace"] else "")
        lines.append(f"outside:  {left['files']} file(s) ({format_size(left['bytes'])}) in the blob folder outside "
                     f"the index, left by commits the cache database refused: cachectl prune removes them{young}")
    if s["unnamed"]["blobs"]:
        lines.append(f"unnamed:  {s['unnamed']['blobs']} blob(s) ({format_size(s['unnamed']['bytes'])}) no track's "
                     "source names (the index refused their row: a full disk): cachectl prune removes them once "
                     f"{UNINDEXED_GRACE / 60:g} min old")
    if s["pins_exceed_limit"]:
        from mixvfs.vfs.commands.pin import pins_warning

        lines.append(pins_warning(pinned["bytes"], s["max_size"]))
    return "\n".join(lines)


def format_listing(rows: list[dict[str, Any]]) -> str:
    width = max([len(named(row)) for row in rows] + [len("NAME (SESSION)")])
    lines = [f"{'NAME (SESSION)':<{width}}  {'SIZE':>10}  {'LAST USE':<20}  {'PINNED BY':<12}  {'DIGEST':<32}  SOURCES"]
    for row in rows:
        sources = ", ".join(row["sources"]) or "-"
        pins = ", ".join(row["pinned_by"]) or "-"
        lines.append(f"{named(row):<{width}}  {format_size(row['size']):>10}  {row['last_used']:<20}  {pins:<12}  "
                     f"{row['digest']:<32}  {sources}")
    return "\n".join(lines)


def format_prune(r: dict[str, Any]) -> str:
    verb = "would free" if r["dry_run"] else "freed"
    lines = [f"{named(blob)}  {format_size(blob['size'])}  last used {blob['last_used']}  {blob['digest']}"
             for blob in r["blobs"]]
    lines.append(f"{verb} {r['freed_blobs']} blob(s), {format_size(r['freed_bytes'])}")
    if r["pinned_kept"]:
        lines.append(f"kept {r['pinned_kept']} pinned blob(s), {format_size(r['pinned_bytes'])}, whatever the limits")
    if r["pinned_bytes"] > r["max_size"]:
        from mixvfs.vfs.commands.pin import pins_warning

        lines.append(pins_warning(r["pinned_bytes"], r["max_size"]))
    if r["staging_files"]:
        lines.append(f"{verb} {r['staging_files']} staging file(s) of dead downloads")
    if r["unindexed_files"]:
        lines.extend(f"{f['path']}  {format_size(f['size'])}  changed {f['changed']}  (outside the index)"
                     for f in r["unindexed_files"])
        lines.append(f"{verb} {len(r['unindexed_files'])} file(s) outside the index, "
                     f"{format_size(r['unindexed_bytes'])} (left by commits the cache database refused)")
    if r["unindexed_kept"]:
        lines.append(f"kept {r['unindexed_kept']} file(s) outside the index, {format_size(r['unindexed_kept_bytes'])}, "
                     f"less than {r['unindexed_grace'] / 60:g} min old: a commit may still name them (a prune "
                     "after that removes them)")
    return "\n".join(lines)


def format_verify(r: dict[str, Any]) -> str:
    lines = [f"corrupt, removed: {named(c)} ({format_size(c['size'])}) {c['digest']}" for c in r["corrupt"]]
    lines.append(f"checked {r['checked']} blob(s): {len(r['corrupt'])} corrupt")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
