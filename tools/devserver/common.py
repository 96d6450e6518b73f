"""What the server and its client share: the control paths and two small helpers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Final

# Reserved paths, answered before auth and never logged. IDLE_PATH lets DevServer.requests() wait
# until no request is mid-flight, so a test never reads the log between "client got its last byte"
# and "server wrote the line"; the others drive the "hold" gates.
CONTROL_PREFIX: Final = "/__devserver__/"
IDLE_PATH: Final = CONTROL_PREFIX + "idle"
RELEASE_PATH: Final = CONTROL_PREFIX + "release"
REARM_PATH: Final = CONTROL_PREFIX + "rearm"
HELD_PATH: Final = CONTROL_PREFIX + "held"


def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a reader (the server, a test) never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def base_url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

