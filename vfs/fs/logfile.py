"""The daemon's log file."""

from __future__ import annotations

import logging.handlers
from pathlib import Path
from typing import Any


class LogFile(logging.handlers.WatchedFileHandler):
    """The daemon's log file, opened again when it was removed or replaced (its default place is the cache
    folder, which a user or a cleaner may remove while mounted), its folder made again if need be."""

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return super()._open()
