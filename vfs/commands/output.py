"""How every command prints a result: a table for people, or JSON (``--json``) for programs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def emit(result: Any, as_json: bool, formatter: Callable[[Any], str]) -> None:
    if as_json:
        json.dump(result, sys.stdout, indent=1, ensure_ascii=False)
        print()
    else:
        print(formatter(result))
