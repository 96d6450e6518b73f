"""How every command prints a result: a table for people, or JSON (``--json``) for programs."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, ParamSpec

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
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            # Point stdout at /dev/null so the interpreter's own flush at exit raises nothing either.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141

    return wrapper
