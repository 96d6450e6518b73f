"""The daemon's log file."""

from __future__ import annotations

import logging.handlers
import sys
from pathlib import Path
from typing import Any


class LogFile(logging.handlers.WatchedFileHandler):
    """The daemon's log file, opened again when it was removed or replaced (its default place is the cache
    folder, which a user or a cleaner may remove while mounted), its folder made again if need be.

    When its place cannot be looked at any more (the folder's permissions changed: ``chmod 000``) or cannot be
    made again, the lines go on into the file already open (else to stderr), after one line saying why: never
    logging's own "--- Logging error ---" and a traceback for every line, which the daemon's stderr — this very
    file when ``mixvfs mount`` started it — would fill up with."""

    _trouble: str | None = None  # why the file cannot be opened again now, once said

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return super()._open()

    def emit(self, record: logging.LogRecord) -> None:
        # WatchedFileHandler reopens outside logging's own guard: a folder that cannot be made again (a file in
        # its place) raised from the log call itself, and a reader got ENOTDIR instead of EIO. A log line that
        # cannot be written is logging's error (handleError), never the caller's.
        try:
            self.reopenIfNeeded()
        except OSError as exc:
            trouble = f"{exc.strerror or exc} ({exc.filename or self.baseFilename})"
            if trouble != self._trouble:
                self._trouble = trouble
                self._write(logging.makeLogRecord({
                    "name": __name__, "levelno": logging.WARNING, "levelname": "WARNING",
                    "msg": "the log file %s cannot be looked at or opened again: %s; its lines go on %s",
                    "args": (self.baseFilename, trouble,
                             "in the file already open" if self.stream is not None else "to stderr")}))
        else:
            self._trouble = None
        self._write(record)

    def _write(self, record: logging.LogRecord) -> None:
        if self.stream is not None:
            logging.StreamHandler.emit(self, record)  # the open file as it is: no new open
            return
        try:
            sys.stderr.write(self.format(record) + self.terminator)
            sys.stderr.flush()
        except Exception:  # stderr gone too: logging's own last resort
            self.handleError(record)
