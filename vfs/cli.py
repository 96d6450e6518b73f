"""``mixvfs``: mount a MixBoard session as a read-only folder, unmount it, show its report.

Exit codes: 0 ok; 1 the command ran and something failed (e.g. unmount refused); 2 bad input
(manifest, flags, mountpoint); 3 "will fail" and 4 "could not check" are used by ``preflight``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cache.errors import ConfigError, MixvfsError
from cache.fetch import RetryPolicy
from cache.location import DEFAULT_MAX_AGE, DEFAULT_MAX_SIZE, resolve_cache_dir
from cache.units import format_size, parse_duration, parse_size
from vfs import mount
from vfs.manifest import ManifestError, load_manifest
from vfs.report import load_report

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

MOUNT_EXAMPLES = """examples:
  mixvfs mount ~/Sessions/friday.json ~/MixBoardTracks
  MIXVFS_TOKEN=... mixvfs mount friday.json ~/MixBoardTracks --max-size 20G
  mixvfs mount friday.json ~/MixBoardTracks --token-command 'security find-generic-password -w -s chad'
  cp -r ~/MixBoardTracks/. ~/Export/ && mixvfs unmount ~/MixBoardTracks
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixvfs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount a session read-only", epilog=MOUNT_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("session", type=Path, help="the session manifest (JSON) MixBoard wrote")
    m.add_argument("mountpoint", type=Path, help="an existing, empty folder, e.g. ~/MixBoardTracks")
    add_cache_flags(m)
    m.add_argument("--report", type=Path, help="where to write the per-track report (default: in the cache folder)")
    m.add_argument("--token-file", type=Path, help="file holding the bearer token (re-read on 401)")
    m.add_argument("--token-command", help="command printing the bearer token (run again on 401)")
    m.add_argument("--token", help=argparse.SUPPRESS)  # only to refuse it with a useful message
    m.add_argument("--jobs", type=int, default=3, help="parallel downloads (default 3)")
    m.add_argument("--no-prefetch", action="store_true", help="download only what is read")
    m.add_argument("--stall-timeout", default="30s", help="fail a download without progress this long (30s)")
    m.add_argument("--retry-after", default="60s", help="after a failure, answer EIO at once this long (60s)")
    m.add_argument("--retries", type=int, default=5, help="attempts per download for transient errors (5)")
    m.add_argument("--retry-wait", default="0.5s", help="first backoff wait, doubling with jitter (0.5s)")
    m.add_argument("--log-file", type=Path, help="daemon log (default: <cache>/logs/mixvfs.log)")
    m.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    m.add_argument("--foreground", action="store_true", help="stay attached instead of running in the background")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    u = sub.add_parser("unmount", help="unmount; waits for the daemon's final report")
    u.add_argument("mountpoint", type=Path)

    r = sub.add_parser("report", help="show a report file or a live mount's report")
    r.add_argument("target", type=Path, help="report file or mountpoint")
    r.add_argument("--json", action="store_true")
    return parser


def add_cache_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="cache folder (default: $MIXVFS_CACHE_DIR or the user cache folder)")
    parser.add_argument("--max-size", default=None, help="cache size limit (default 10G)")
    parser.add_argument("--max-age", default=None, help="drop blobs unused this long (default 30d)")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(args_list)
    try:
        if args.command == "mount":
            return cmd_mount(args, args_list)
        if args.command == "unmount":
            mount.unmount(args.mountpoint.expanduser())
            return EXIT_OK
        if args.command == "report":
            return cmd_report(args)
    except MixvfsError as exc:
        print(f"mixvfs: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError | ManifestError) else EXIT_FAILED
    return EXIT_USAGE


def mount_options(args: argparse.Namespace) -> mount.MountOptions:
    if args.token is not None:
        raise ConfigError("refusing --token: a token on the command line shows in `ps`; "
                          "use MIXVFS_TOKEN, --token-file or --token-command")
    if args.token_file is not None and not args.token_file.expanduser().is_file():
        raise ConfigError(f"--token-file {args.token_file}: no such file")
    if args.jobs < 1 or args.jobs > 64:
        raise ConfigError("--jobs must be between 1 and 64")
    cache_dir = resolve_cache_dir(args.cache_dir)
    stall = parse_duration(args.stall_timeout)
    wait = parse_duration(args.retry_wait)
    # Jitter in proportion to the first wait: a fixed 0.5 s would dwarf a short --retry-wait.
    policy = RetryPolicy(attempts=max(1, args.retries), wait_initial=wait, wait_jitter=wait,
                         stall_timeout=stall, total_timeout=max(120.0, stall * 4))
    return mount.MountOptions(
        session_path=args.session.expanduser().resolve(),
        mountpoint=args.mountpoint.expanduser().absolute(),
        cache_dir=cache_dir,
        report_path=args.report.expanduser().absolute() if args.report else None,
        log_file=(args.log_file or cache_dir / "logs" / "mixvfs.log").expanduser().absolute(),
        max_size=parse_size(args.max_size) if args.max_size else DEFAULT_MAX_SIZE,
        max_age=parse_duration(args.max_age) if args.max_age else DEFAULT_MAX_AGE,
        jobs=args.jobs,
        policy=policy,
        retry_after=parse_duration(args.retry_after),
        prefetch=not args.no_prefetch,
        token_file=args.token_file.expanduser().absolute() if args.token_file else None,
        token_command=args.token_command,
    )


def cmd_mount(args: argparse.Namespace, argv: list[str]) -> int:
    options = mount_options(args)
    if args.foreground:
        setup_logging(options.log_file if args.ready_fd is not None else None, args.log_level)
        return mount.serve(options, args.ready_fd)
    load_manifest(options.session_path)  # fail fast, in the user's terminal, on a bad manifest
    mount.check_mountpoint(options.mountpoint)
    mount.check_libfuse()
    assert options.log_file is not None
    message = mount.start_daemon(argv, options.log_file)
    print(f"mounted {options.mountpoint}")
    print(f"report: {message.get('report')}")
    print(f"log:    {options.log_file}")
    return EXIT_OK


def setup_logging(log_file: Path | None, level: str) -> None:
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry every URL


def cmd_report(args: argparse.Namespace) -> int:
    target: Path = args.target.expanduser()
    if target.is_dir():
        _, path = mount.mount_info(target)
        if path is None:
            raise ConfigError(f"{target} is not a live mixvfs mount")
        target = path
    try:
        data = load_report(target)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read report {target}: {exc}") from None
    if args.json:
        json.dump(data, sys.stdout, indent=1, ensure_ascii=False)
        print()
    else:
        print(format_report(data))
    failed = [t for t in data.get("tracks", []) if t.get("status") in ("failed", "missing")]
    return EXIT_FAILED if failed else EXIT_OK


def format_report(data: dict[str, Any]) -> str:
    tracks = data.get("tracks", [])
    lines = [f"session {data.get('session')!r} at {data.get('mountpoint')} (started {data.get('started')})"]
    width = min(60, max([len(str(t.get("name", ""))) for t in tracks] + [4]))
    lines.append(f"{'NAME':<{width}}  {'SOURCE':<7} {'STATUS':<8} {'BYTES':>10} {'TRIES':>5}  ERROR")
    for t in tracks:
        name = str(t.get("name", ""))
        name = name if len(name) <= width else name[: width - 1] + "…"
        size = format_size(t["bytes"]) if isinstance(t.get("bytes"), int) else "-"
        lines.append(f"{name:<{width}}  {t.get('source', ''):<7} {t.get('status', ''):<8} {size:>10} "
                     f"{t.get('attempts', 0):>5}  {t.get('error') or ''}")
    counts: dict[str, int] = {}
    for t in tracks:
        counts[t.get("status", "?")] = counts.get(t.get("status", "?"), 0) + 1
    lines.append(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no tracks")
    return "\n".join(lines)


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
