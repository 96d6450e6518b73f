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

    def emit(self, record: logging.LogRecord) -> None:
        # WatchedFileHandler reopens outside logging's own guard: a folder that cannot be made again (a file in
        # its place) raised from the log call itself, and a reader got ENOTDIR instead of EIO. A log line that
        # cannot be written is logging's error (handleError), never the caller's.
        try:
            self.reopenIfNeeded()
        except OSError:
            self.handleError(record)
            return
        logging.FileHandler.emit(self, record)
