"""How every command prints a result: a table for people, or JSON (``--json``) for programs."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec

from mixvfs.cache.errors import MixvfsError

P = ParamSpec("P")


def emit(result: Any, as_json: bool, formatter: Callable[[Any], str]) -> None:
    if as_json:
        json.dump(result, sys.stdout, indent=1, ensure_ascii=False)
        print()
    else:
        print(formatter(result))


def quiet_on_closed_pipe(main: Callable[P, int]) -> Callable[P, int]:
    """``mixvfs config | head -3``: the reader left early. Python's default is a BrokenPipeError traceback;
    a command-line tool just stops (exit 141, as a shell reports SIGPIPE)."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            if sys.stdout is not None:  # None: started with stdout closed (`>&-`), so nothing was printed
                sys.stdout.flush()
            return code
        except BrokenPipeError:
            # Point stdout at /dev/null so the interpreter's own flush at exit raises nothing either.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141

    return wrapper


def command_line(prog: str, argv: Sequence[str] | None, run: Callable[[list[str]], int],
                 exit_code: Callable[[MixvfsError], int], refuse: Callable[[list[str]], None]) -> int:
    """What every entry point does around its work: ``refuse`` bad words before argparse could echo them
    (``--token VALUE``), and end every error as one line on stderr — ours with ``exit_code``, one from the
    system (a path too long, a dead mount) with 2 — never a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    skip_httpx_command_line_tool()
    try:
        refuse(args)
        return run(args)
    except MixvfsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exit_code(exc)
    except BrokenPipeError:
        raise  # the reader left: quiet_on_closed_pipe's business
    except OSError as exc:
        print(f"{prog}: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def skip_httpx_command_line_tool() -> None:
    """httpx's package imports its own command-line tool (click, rich, pygments: ~75 ms, an eighth of a mount's
    start, paid by the command and again by its daemon) whenever click is installed, and defines a stand-in when
    that import fails. Our commands never run that tool, so its import is made to fail. A reach into httpx's
    package, applied when a command starts (never at import: a program importing mixvfs keeps its httpx whole),
    only while httpx is not loaded yet; tests/unit/test_library_reaches.py checks it."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: "not importable"


class VersionAction(argparse.Action):
    """``--version`` for mixvfs and cachectl: "PROG X.Y.Z" (the program's own name, the package's version),
    read from the package metadata only when asked
    (argparse's own action wants the text up front, which would cost every command ~40 ms of start-up)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help=kwargs.get("help", "show the version and exit"))

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from mixvfs import __version__

        print(f"{parser.prog} {__version__}")  # on stdout, as argparse's own version action does
        parser.exit()
