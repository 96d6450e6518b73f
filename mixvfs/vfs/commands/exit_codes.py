"""The exit codes of ``mixvfs`` and ``cachectl``, in one table: ``mixvfs --help`` prints it and README's
"Exit codes" section is this table (``tests/unit/test_exit_codes.py`` holds the two together). A meaning is
written as README shows it (Markdown code spans); the help text drops the backticks."""

from __future__ import annotations

import textwrap

OK, FAILED, USAGE, WILL_FAIL, UNCHECKED, INTERRUPTED = 0, 1, 2, 3, 4, 130

TABLE: tuple[tuple[int, str], ...] = (
    (OK, "ok (preflight: the export can succeed; `status --watch`: the mount ended, or Ctrl-C, with no track "
         "failed)"),
    (FAILED, "the command ran and something failed: a failed track (`report`, `status`, `warm`, `pin`; "
             "`status --watch` when it ends, by Ctrl-C or because the mount went away, with a track failed), "
             "a mount whose daemon died (`report` and `status` of its folder, `status --watch` when it ends), "
             "unmount refused (a program has a file or the folder open: the message names `fuser -vm` / "
             "`lsof +f --`), a final report the daemon could not write (`unmount` says why; `report` of the "
             "mountpoint then says the report it shows is incomplete), `verify` found corrupt blobs"),
    (USAGE, "bad input: manifest, flags (`--token` is refused by every command), config file, mountpoint "
            "(missing, not empty, already mounted or being mounted by another `mixvfs mount`; not mounted for "
            "`unmount`/`status`, which then say where the last report is; mounted by another file system, for "
            "`unmount`; `report` of a folder never mounted — after an unmount it shows the last report), "
            "unusable cache folder, report or log path; a user who cannot mount "
            "(`mount`: the message names the cause and the fix — no access to `/dev/fuse`, `fusermount3` missing "
            "or not setuid root, a mountpoint the user may not write to; any other refusal in libfuse's own "
            "words — and nothing was mounted: no report is written); "
            "`cachectl stats/ls/verify/prune/unpin` on a folder that is not a cache (\"no cache at PATH\"); "
            "`cachectl unpin` of a session that is not pinned"),
    (WILL_FAIL, "`preflight`: the export will fail (a track missing or unauthorized, a server certificate not "
                "trusted, not enough disk space, no usable libfuse or a user who cannot mount)"),
    (UNCHECKED, "`preflight`: could not check (server unreachable, busy or too slow to answer)"),
    (INTERRUPTED, "`cachectl warm`, `cachectl pin` or `mixvfs check-export` interrupted with Ctrl-C; "
                  "`mixvfs mount` cancelled (Ctrl-C, SIGTERM, SIGHUP) before the folder was live — its daemon is "
                  "stopped too"),
)


def help_text(width: int = 100) -> str:
    """The table as ``--help`` shows it: each code with its meaning wrapped under it."""
    lines = []
    for code, meaning in TABLE:
        wrapped = textwrap.wrap(meaning.replace("`", ""), width=width - 7)
        lines.append(f"  {code:<4} {wrapped[0]}")
        lines += [f"       {line}" for line in wrapped[1:]]
    return "\n".join(lines)


def markdown_table() -> str:
    """The table as README writes it."""
    rows = ["| code | meaning |", "|------|---------|"]
    rows += [f"| {code} | {meaning} |" for code, meaning in TABLE]
    return "\n".join(rows)
