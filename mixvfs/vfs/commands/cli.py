"""The ``mixvfs`` command: mount, unmount, report, preflight, status, check-export, config (see
:data:`DESCRIPTION`)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mixvfs.cache.errors import ConfigError, MixvfsError
from mixvfs.vfs.commands import config, exit_codes, output
from mixvfs.vfs.fs.report import FAILED_STATUSES, Status, format_report, has_problem, load_report
from mixvfs.vfs.session.manifest import ManifestError

if TYPE_CHECKING:  # imported where a command needs it: check-export, config, status start without httpx
    from mixvfs.vfs.fs import mount

EXIT_OK, EXIT_FAILED, EXIT_USAGE = exit_codes.OK, exit_codes.FAILED, exit_codes.USAGE

DESCRIPTION = f"""mixvfs: mount a MixBoard session as a read-only folder, check it before an export, watch it,
unmount it. Each command's help (mixvfs COMMAND --help) describes it, with examples.

Exit codes (every command, and cachectl's):
{exit_codes.help_text()}
"""
MOUNT_TEXT = """Mount SESSION (the manifest MixBoard wrote) read-only at MOUNTPOINT, in the background. Local tracks
pass through; cloud tracks are downloaded into the cache when read (and ahead of time, unless
--no-prefetch). A copying program gets the right bytes or an input/output error, never a short file;
every track's outcome goes into the report (`mixvfs report MOUNTPOINT`)."""
MOUNT_EXAMPLES = """examples:
  mixvfs mount ~/Sessions/friday.json ~/MixBoardTracks
  MIXVFS_TOKEN=... mixvfs mount friday.json ~/MixBoardTracks --max-size 20G
  mixvfs mount friday.json ~/MixBoardTracks --token-command 'security find-generic-password -w -s chad'
  cp -r ~/MixBoardTracks/. ~/Export/ && mixvfs unmount ~/MixBoardTracks
  mixvfs mount friday.json ~/MixBoardTracks --foreground     # for launchd / systemd (logs to stderr)
"""
UNMOUNT_TEXT = """Unmount MOUNTPOINT and wait until the daemon has written its final report; says where the report is.
Refused (exit 1) while a program has a file in it, or the folder itself, open."""
UNMOUNT_EXAMPLES = """examples:
  mixvfs unmount ~/MixBoardTracks
  mixvfs unmount ~/MixBoardTracks && mixvfs report ~/MixBoardTracks    # the report of the mount just ended
"""
REPORT_TEXT = """Show a report: every track with its name, source, state (local, cached, failed, missing, ...), bytes
and error. TARGET is a report file or a mountpoint: a live mount's report, or after the unmount the
report of the last mount there. Exit 1 if a track failed or is missing."""
REPORT_EXAMPLES = """examples:
  mixvfs report ~/MixBoardTracks            # a live mount's report (or the last one, once unmounted)
  mixvfs report ~/.cache/mixvfs/reports/Friday-Mix--MixBoardTracks-3f9c2a41d0.json --json
"""
PREFLIGHT_TEXT = """Before an export: every track with its source, size and state (local ok, cached, to download,
unreachable, unauthorized, missing), the bytes to download, the free disk space of the cache folder
against what is needed (with --max-size: a download larger than the limit still works by evicting
older blobs, and preflight says so), and whether the server accepts the token. Nothing is downloaded:
one HEAD per cloud track that is not cached.

Exit codes: 0 the export can succeed; 3 it will fail (a track missing, unauthorized or refused, or
not enough disk space); 4 could not check (server unreachable or busy); 2 bad manifest or flags."""
PREFLIGHT_EXAMPLES = """examples:
  mixvfs preflight ~/Sessions/friday.json
  mixvfs preflight friday.json --json | jq '.tracks[] | select(.state != "cached")'
  mixvfs preflight friday.json && mixvfs mount friday.json ~/MixBoardTracks
"""
STATUS_TEXT = """While a mount runs: which tracks are downloading (bytes done of total) and which failed. After the
unmount it says where the last report is. Exit 1 if a track failed."""
STATUS_EXAMPLES = """examples:
  mixvfs status ~/MixBoardTracks            # which tracks are downloading, bytes done/total, failures
  mixvfs status ~/MixBoardTracks --watch    # refresh every second until Ctrl-C
  mixvfs status ~/MixBoardTracks --json     # the same as: getfattr -n user.mixvfs.status ~/MixBoardTracks
"""
CHECK_EXPORT_TEXT = """After an export: does EXPORT_DIR hold every track of the session, byte for byte? For each track,
the file the mount showed (same names, same collision numbering) is looked for and its content hashed
(xxh3-128, each file read once): cloud tracks against the digest in the report or the cache index,
local tracks against their source file. Each track is ok, missing, wrong size, wrong content or not
verifiable (no digest known: `cachectl warm SESSION` makes it verifiable); files of no track are
listed as extra. SESSION_OR_REPORT is the session manifest or a mount's report (it holds the names
the mount served and the digests). Nothing is downloaded. A progress display on a terminal, one line
per problem otherwise.

Exit codes: 0 every track is ok; 1 a track is not; 2 bad input (manifest, report, folder); 130 Ctrl-C."""
CHECK_EXPORT_EXAMPLES = """examples:
  mixvfs check-export ~/Sessions/friday.json ~/Export/Friday
  # the report `mixvfs unmount` named:
  mixvfs check-export ~/.cache/mixvfs/reports/Friday-Mix--MixBoardTracks-3f9c2a41d0.json ~/Export/Friday
  mixvfs check-export friday.json ~/Export/Friday --json | jq '.tracks[] | select(.state != "ok")'
"""
CONFIG_EXAMPLES = """examples:
  mixvfs config
  MIXVFS_CONFIG=./test.toml MIXVFS_JOBS=4 mixvfs config --jobs 2 --json
"""
JSON_HELP = "print JSON instead of a table"


def build_parser(wanted: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the command about to run (``wanted``), other commands that are costly to
    describe are left out (``mixvfs --help`` and a mistyped command get them all)."""
    # allow_abbrev=False everywhere: `--tok` must not quietly mean `--token-file`, nor `--token` be "ambiguous".
    parser = argparse.ArgumentParser(prog="mixvfs", description=DESCRIPTION, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=output.VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, text: str, examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=text, epilog=examples, allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    m = command("mount", "mount a session read-only", MOUNT_TEXT, MOUNT_EXAMPLES)
    m.add_argument("session", type=Path, help="the session manifest (JSON) MixBoard wrote")
    m.add_argument("mountpoint", type=Path, help="an existing, empty folder, e.g. ~/MixBoardTracks")
    config.add_flags(m, config.MOUNT_SETTINGS)
    m.add_argument("--report", type=Path, help="where to write the per-track report (default: in the cache folder)")
    m.add_argument("--no-prefetch", action="store_true", help="download only what is read")
    m.add_argument("--log-file", type=Path, help="daemon log (default: <cache>/logs/mixvfs.log)")
    m.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="what goes into the log (default: info)")
    m.add_argument("--foreground", action="store_true", help="stay attached instead of running in the background")
    m.add_argument("--allow-non-empty", action="store_true",
                   help="mount over a folder that holds files (hidden until the unmount); refused otherwise")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    u = command("unmount", "unmount; waits for the daemon's final report", UNMOUNT_TEXT, UNMOUNT_EXAMPLES)
    u.add_argument("mountpoint", type=Path, help="the folder a session is mounted at")

    r = command("report", "show a report file, or a mount's report", REPORT_TEXT, REPORT_EXAMPLES)
    r.add_argument("target", type=Path, help="report file or mountpoint")
    r.add_argument("--json", action="store_true", help=JSON_HELP)

    p = command("preflight", "before an export: can every track be had?", PREFLIGHT_TEXT, PREFLIGHT_EXAMPLES)
    p.add_argument("session", type=Path, help="the session manifest (JSON)")
    config.add_flags(p, config.PREFLIGHT_SETTINGS)
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    st = command("status", "live view of a running mount: downloads, failures", STATUS_TEXT, STATUS_EXAMPLES)
    st.add_argument("mountpoint", type=Path, help="the folder a session is mounted at")
    st.add_argument("--json", action="store_true", help="print the status as JSON (one line per refresh with --watch)")
    st.add_argument("--watch", nargs="?", type=float, const=1.0, metavar="SECONDS",
                    help="refresh every SECONDS (1) until Ctrl-C")

    ce = command("check-export", "after an export: is every track there, byte for byte?", CHECK_EXPORT_TEXT,
                 CHECK_EXPORT_EXAMPLES)
    ce.add_argument("session_or_report", type=Path, metavar="SESSION_OR_REPORT",
                    help="the session manifest, or the report of the mount the export was made from")
    ce.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="the folder the tracks were exported to")
    config.add_flags(ce, config.CHECK_EXPORT_SETTINGS)
    ce.add_argument("--json", action="store_true", help=JSON_HELP)

    if wanted not in sub.choices:  # its module (nginx, addresses) is loaded only to run it or list them all
        from mixvfs.vfs.commands import team_cache

        team_cache.add_parser(sub)

    c = command("config", "each effective setting and where it came from", config.HELP, CONFIG_EXAMPLES)
    config.add_flags(c, config.MOUNT_SETTINGS)
    c.add_argument("--json", action="store_true", help=JSON_HELP)
    return parser


@output.quiet_on_closed_pipe
def main(argv: Sequence[str] | None = None) -> int:
    return output.command_line("mixvfs", argv, run, exit_code, config.refuse_token_flag)


def exit_code(exc: MixvfsError) -> int:
    status = getattr(exc, "exit_status", None)  # an error with a status of its own (a cancelled mount: 130)
    if isinstance(status, int):
        return status
    return EXIT_USAGE if isinstance(exc, ConfigError | ManifestError) else EXIT_FAILED


def run(args_list: list[str]) -> int:
    args = build_parser(next((a for a in args_list if not a.startswith("-")), None)).parse_args(args_list)
    if args.command == "mount":
        return cmd_mount(args, args_list)
    if args.command == "unmount":
        from mixvfs.vfs.fs import mount

        return cmd_unmount(mount.resolved_mountpoint(args.mountpoint.expanduser()))
    if args.command == "report":
        return cmd_report(args)
    if args.command == "preflight":
        from mixvfs.vfs.commands import preflight  # imported on use: `mixvfs mount` need not load it
        return preflight.main(args)
    if args.command == "status":
        from mixvfs.vfs.commands import status
        return status.main(args)
    if args.command == "check-export":
        from mixvfs.vfs.commands import check_export
        return check_export.main(args)
    if args.command == "config":
        return cmd_config(args)
    if args.command == "team-cache":
        from mixvfs.vfs.commands import team_cache
        return team_cache.main(args)
    return EXIT_USAGE


def mount_options(args: argparse.Namespace) -> mount.MountOptions:
    from mixvfs.vfs.fs import mount

    settings = config.resolve(args, config.MOUNT_SETTINGS)
    settings.check_token_file()  # stop here, in the user's terminal, not in the daemon's log
    runtime = settings.runtime()
    return mount.MountOptions(
        session_path=args.session.expanduser().resolve(),
        mountpoint=mount.resolved_mountpoint(args.mountpoint.expanduser()),
        runtime=runtime,
        report_path=args.report.expanduser().absolute() if args.report else None,
        log_file=(args.log_file or runtime.cache.root / "logs" / "mixvfs.log").expanduser().absolute(),
        failed_for=settings.failed_for,
        prefetch=not args.no_prefetch,
        passthrough=settings.passthrough,
        request_timeout=settings.request_timeout,
        token_timeout=float(settings.value("token_timeout")),
        default_server=settings.server,
        allow_non_empty=args.allow_non_empty,
    )


def cmd_mount(args: argparse.Namespace, argv: list[str]) -> int:
    from mixvfs.vfs.fs import mount

    options = mount_options(args)
    if args.foreground:
        setup_logging(options.log_file if args.ready_fd is not None else None, args.log_level)
        from mixvfs.vfs.commands import daemon
        return daemon.serve(options, args.ready_fd)
    # Fail fast, in the terminal, with one line, before a daemon starts. The manifest and the whole adapter are
    # left to the daemon, whose error comes back through the ready pipe word for word: parsing a 100 000-track
    # manifest here too cost the mount a second more, loading the adapter (and the core) a quarter second; the
    # libfuse check here loads mfusepy alone.
    mount.check_mountpoint(options.mountpoint, allow_non_empty=options.allow_non_empty)
    mount.check_paths(options, log_file=True)
    from mixvfs.vfs.adapter.loading import libfuse_problem
    if (problem := libfuse_problem(whole_adapter=False)) is not None:
        raise ConfigError(problem)
    assert options.log_file is not None
    log_file, level = options.log_file, args.log_level

    def serve(ready_fd: int) -> int:  # the daemon, when it is this process forked
        setup_logging(log_file, level)
        from mixvfs.vfs.commands import daemon
        return daemon.serve(options, ready_fd)

    message = mount.start_daemon(argv, options.log_file, serve)
    print(f"mounted {options.mountpoint}")
    print(f"report: {message.get('report')}")
    print(f"log:    {options.log_file}")
    return EXIT_OK


def setup_logging(log_file: Path | None, level: str) -> None:
    handler: logging.Handler = logging.StreamHandler()
    if log_file:
        from mixvfs.vfs.fs.logfile import LogFile  # the daemon's only: logging.handlers costs every command

        handler = LogFile(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry every URL


def cmd_unmount(mountpoint: Path) -> int:
    from mixvfs.vfs.fs import mount

    done = mount.unmount(mountpoint)
    report = done.report
    if done.daemon_died:  # killed: the report is as it last wrote it, and what it had not finished was never had
        print(f"its daemon had died; cleared the dead mount at {mountpoint}"
              + (f" (report as last written: {report})" if report else ""))
    else:
        print(f"unmounted {mountpoint}" + (f" (report: {report})" if report else ""))
        missing = final_report_missing(mountpoint, report) if report is not None and done.ended else None
        if missing is not None:
            print(f"mixvfs: {missing}", file=sys.stderr)
            return EXIT_FAILED
    if report is not None:
        for line in served_summary(report):
            print(line)
    return EXIT_OK


def final_report_missing(mountpoint: Path, report: Path) -> str | None:
    """Why the mount that wrote ``report`` and has ended left no final report (its daemon's word in the history,
    else a report without ``finished``), or None when it did."""
    from mixvfs.vfs.fs import history

    last = history.recall(mountpoint)
    why = last.unwritten if last is not None and last.report == report else None
    if why is None:
        try:
            if load_report(report).get("finished") is True:
                return None
        except FileNotFoundError:
            why = f"the report {report} is gone"
        except (OSError, ValueError) as exc:
            why = f"cannot read the report {report}: {getattr(exc, 'strerror', None) or exc}"
        else:
            why = "the report has no end (see the mount's log)"
    return (f"the final report was not written: {why}. What {report} holds (if anything) is as last written while "
            "mounted, not the mount's outcome")


def served_summary(report: Path) -> list[str]:
    """"14 tracks whole (local or cached), 1 failed: see the report" — whole whether or not anything read them
    (the report cannot tell a copy from a peek) — and, when a track was not whole, how to
    find out whether the export has it anyway (the exporter may have skipped it and said nothing)."""
    try:
        tracks = [t for t in load_report(report).get("tracks", []) if isinstance(t, dict)]
    except (OSError, ValueError):
        return []  # the report's path was said above; a damaged one is `mixvfs report`'s to explain
    counts = {status: sum(t.get("status") == status for t in tracks) for status in Status}
    whole = counts[Status.LOCAL] + counts[Status.CACHED]
    failed = sum(counts[s] for s in FAILED_STATUSES)
    unread = len(tracks) - whole - failed
    refused = sum(1 for t in tracks if t.get("reader_error") and t.get("status") not in FAILED_STATUSES)
    parts = [f"{whole} track{'' if whole == 1 else 's'} whole (local or cached)"]
    if failed:
        parts.append(f"{failed} failed")
    if unread:
        parts.append(f"{unread} not downloaded")
    if refused:
        parts.append(f"{refused} refused to a reader (input/output error)")
    line = ", ".join(parts)
    if not (failed or unread or refused):
        return [line]
    return [f"{line}: see the report (mixvfs report {shlex.quote(str(report))})",
            f"did the export get everything? mixvfs check-export {shlex.quote(str(report))} EXPORT_DIR"]


def cmd_report(args: argparse.Namespace) -> int:
    from mixvfs.vfs.fs import mount

    target: Path = args.target.expanduser()
    dead = mount.is_stale(target)  # the daemon was killed: the tracks it had not finished were never had
    if dead or target.is_dir():  # is_dir() of a dead mount raises ENOTCONN: ask first
        target = report_of_mountpoint(target)
    try:
        data = load_report(target)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read report {target}: {exc}") from None
    output.emit(data, args.json, format_report)
    asked = Path(os.path.realpath(args.target.expanduser()))  # a link to the mount: ismount says no to links
    ended = not dead and asked != target and not os.path.ismount(asked)
    missing = final_report_missing(asked, target) if ended else None
    if missing is not None:  # the mount has ended, but this is not its outcome
        print(f"mixvfs: this report is incomplete: {missing}", file=sys.stderr)
    behind = live_report_behind(asked) if not dead and asked != target and not ended else None
    if behind is not None:  # the live mount could not write it lately (a full disk): its tracks may have moved on
        print(f"mixvfs: this report is behind the live mount ({behind}); `mixvfs status {asked}` shows each "
              "track as it is", file=sys.stderr)
    failed = dead or missing or behind or any(has_problem(t) for t in data.get("tracks", []))
    return EXIT_FAILED if failed else EXIT_OK


def live_report_behind(mountpoint: Path) -> str | None:
    """Why a live mount's report file is behind it (its daemon's word), or None."""
    from mixvfs.vfs.commands.status import read_status

    try:
        behind = read_status(mountpoint).get("report")
    except MixvfsError:
        return None
    return str(behind) if behind else None


def report_of_mountpoint(mountpoint: Path) -> Path:
    """A live mount's report; else the report of the last mount there (said on stderr: stdout may be JSON)."""
    from mixvfs.vfs.fs import mount

    mountpoint = Path(os.path.realpath(mountpoint))  # a link to the mount: os.path.ismount says no to links
    _, path = mount.mount_info(mountpoint)
    if path is not None:
        return path
    from mixvfs.vfs.fs import history

    last = history.recall(mountpoint)
    dead = mount.is_stale(mountpoint)  # a daemon that was killed: its report is as it last wrote it
    if last is None or (os.path.ismount(mountpoint) and not dead) or not last.report.is_file():
        raise ConfigError(history.not_live(mountpoint))
    state = "its daemon died; the report as last written" if dead else "the report of its last mount"
    print(f"mixvfs: {mountpoint} is not mounted now; {state}: {last.report}", file=sys.stderr)
    return last.report


def cmd_config(args: argparse.Namespace) -> int:
    settings = config.resolve(args, config.MOUNT_SETTINGS)
    doc = {"config_file": str(settings.path), "config_file_found": settings.file_found, "settings": settings.rows()}
    output.emit(doc, args.json, lambda _: config.format_rows(settings))
    return EXIT_OK


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
