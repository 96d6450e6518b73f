"""The ``cachectl`` command: look after the mixvfs cache (see :data:`DESCRIPTION`).

Safe while a mount uses the same cache: diskcache's metadata is transactional across processes, and a
blob removed under an open reader keeps reading through its descriptor.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mixvfs.cache.errors import ConfigError
from mixvfs.cache.index import SourceIndex
from mixvfs.cache.store import BlobInfo, BlobStore
from mixvfs.cache.units import format_size
from mixvfs.vfs.commands import config, output
from mixvfs.vfs.runtime import open_cache, open_runtime
from mixvfs.vfs.session.manifest import load_manifest

DESCRIPTION = """cachectl: look after the mixvfs cache (stats, ls, verify, prune) and fill it ahead of an export (warm).
Safe while a mount uses the same cache. Each command's help (cachectl COMMAND --help) describes it, with
examples.
The cache options (--cache-dir, --max-size, --max-age) go before or after the command.

Exit codes: 0 ok; 1 verify found corrupt blobs, or warm could not download a track; 2 bad flags,
config or manifest, no cache at the folder (stats, ls, verify, prune), or an unusable cache folder;
130 warm interrupted (Ctrl-C).
"""
EXAMPLES = """examples:
  cachectl stats
  cachectl ls --json
  cachectl prune --max-age 7d --max-size 5G --dry-run
  cachectl verify
  cachectl warm ~/Sessions/friday.json --jobs 4     # download every cloud track before the export
  cachectl warm friday.json > warm.log              # not a terminal: one line per event
"""
JSON_HELP = "print JSON instead of a table"
# name: (one-line summary, description, examples)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "stats": ("blob count, bytes and limits",
              "The cache folder, its blobs and bytes against the size limit, the age limit, downloads in\n"
              "progress or left over by a dead process, and the index's entries.",
              "  cachectl stats\n  cachectl --cache-dir /Volumes/Scratch/mixvfs stats --json"),
    "ls": ("every blob and the sources that map to it",
           "Every blob (by content digest) with its size, last use and the sources (cloud URLs) that map to it.",
           "  cachectl ls\n  cachectl ls --json | jq '.[] | select(.size > 100000000)'"),
    "verify": ("re-hash every blob; remove corrupt ones",
               "Re-hash every blob and remove the ones whose bytes changed on disk (a mount downloads them again\n"
               "when read). Exit 1 if a blob was corrupt.",
               "  cachectl verify\n  cachectl verify --json"),
    "prune": ("expire unused blobs, then least recently used down to the size",
              "Remove blobs unused for --max-age, then the least recently used ones until the rest fits in\n"
              "--max-size (both default to the cache's settings), and the staging files of dead downloads.",
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
    warm = commands["warm"]
    warm.add_argument("session", type=Path, help="the session manifest (JSON)")
    config.add_flags(warm, config.WARM_SETTINGS)
    return parser


@output.quiet_on_closed_pipe
def main(argv: Sequence[str] | None = None) -> int:
    return output.command_line("cachectl", argv, run, lambda _exc: 2, config.refuse_token_flag)


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "warm":
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
    if args.command == "ls":
        return emit(args, listing(store, index), format_listing)
    if args.command == "prune":
        # --max-age/--max-size are the store's limits (flag, env, config file or default): prune to them.
        victims = store.prune(dry_run=args.dry_run)
        # Dead downloads' staging files go too (those no process holds: see BlobStore.clean_stale_staging).
        staging = store.clean_stale_staging(dry_run=args.dry_run)
        result = {"dry_run": args.dry_run, "freed_blobs": len(victims), "freed_bytes": sum(v.size for v in victims),
                  "blobs": [blob_json(v) for v in victims], "staging_files": len(staging)}
        return emit(args, result, format_prune)
    if args.command == "verify":
        checked, corrupt = store.verify()
        result = {"checked": checked, "corrupt": [blob_json(c) for c in corrupt]}
        emit(args, result, format_verify)
        return 1 if corrupt else 0
    raise ConfigError(f"unknown command {args.command}")


def cmd_warm(args: argparse.Namespace) -> int:
    from mixvfs.vfs.commands import warm

    settings = config.resolve(args, config.CACHE_SETTINGS + config.WARM_SETTINGS)
    session = load_manifest(args.session.expanduser(), default_server=settings.server)
    runtime = open_runtime(settings.runtime(), origins=[session.server, *(t.cloud_url for t in session.tracks)])
    try:
        return warm.warm(session, runtime, out=sys.stdout, tty=sys.stdout.isatty())
    finally:
        runtime.close()


def stats(store: BlobStore) -> dict[str, Any]:
    infos = store.infos()
    return {"cache_dir": str(store.root), "blobs": len(infos), "bytes": sum(i.size for i in infos),
            "max_size": store.max_size, "max_age": store.max_age,
            "staging_files": len(list(store.staging.glob("*.part"))),
            "staging_left_over": len(store.clean_stale_staging(dry_run=True)), "index": store.index.counts()}


def listing(store: BlobStore, index: SourceIndex) -> list[dict[str, Any]]:
    sources = index.sources_by_digest()
    return [{**blob_json(info), "sources": sources.get(info.digest, [])} for info in store.infos()]


def blob_json(info: BlobInfo) -> dict[str, Any]:
    return {"digest": info.digest, "size": info.size, "last_used": iso(info.last_used),
            "expires": iso(info.expires) if info.expires else None}


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def emit(args: argparse.Namespace, result: Any, formatter: Any) -> int:
    output.emit(result, args.json, formatter)
    return 0


def format_stats(s: dict[str, Any]) -> str:
    return (f"cache:   {s['cache_dir']}\nblobs:   {s['blobs']}\nbytes:   {format_size(s['bytes'])} of "
            f"{format_size(s['max_size'])}\nmax age: {s['max_age'] / 86400:g} days\n"
            f"staging: {s['staging_files']} download(s) in progress or left over "
            f"({s['staging_left_over']} left over by a dead process)\n"
            f"index:   {s['index']['sources']} source(s), {s['index']['heads']} server answer(s)")


def format_listing(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'DIGEST':<32}  {'SIZE':>10}  {'LAST USE':<20}  SOURCES"]
    for row in rows:
        sources = ", ".join(row["sources"]) or "-"
        lines.append(f"{row['digest']:<32}  {format_size(row['size']):>10}  {row['last_used']:<20}  {sources}")
    return "\n".join(lines)


def format_prune(r: dict[str, Any]) -> str:
    verb = "would free" if r["dry_run"] else "freed"
    lines = [f"{blob['digest']}  {format_size(blob['size'])}  last used {blob['last_used']}" for blob in r["blobs"]]
    lines.append(f"{verb} {r['freed_blobs']} blob(s), {format_size(r['freed_bytes'])}")
    if r["staging_files"]:
        lines.append(f"{verb} {r['staging_files']} staging file(s) of dead downloads")
    return "\n".join(lines)


def format_verify(r: dict[str, Any]) -> str:
    lines = [f"corrupt, removed: {c['digest']} ({format_size(c['size'])})" for c in r["corrupt"]]
    lines.append(f"checked {r['checked']} blob(s): {len(r['corrupt'])} corrupt")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
