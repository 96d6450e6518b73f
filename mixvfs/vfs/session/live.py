"""The live session: while mounted, watch the manifest and show added, removed and renamed tracks.

A thread polls the manifest's (mtime, size, inode) every ``interval`` seconds — portable (macOS and
Linux, no inotify/FSEvents dependency) and cheap (one ``stat``). On a change the manifest is loaded and
the tracks are built again (sizes of new cloud tracks asked of the server as at mount time), then
swapped into the :class:`mixvfs.vfs.fs.sessionfs.SessionFS` in one step. A manifest that does not load (MixBoard may
be halfway through writing it) is logged and the old listing kept; the next change is tried again.
With the kernel's entry/attr timeouts at 1 s, a change shows in the folder within about 1.5 s.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from mixvfs.cache.errors import MixvfsError
from mixvfs.vfs.session.manifest import Session, load_manifest

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5


def fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # being replaced, or gone: keep the old listing until it is back
    return st.st_mtime_ns, st.st_size, st.st_ino


class ManifestWatcher:
    def __init__(
        self,
        path: Path,
        apply: Callable[[Session], None],
        *,
        default_server: str | None = None,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.path = path
        self.apply = apply
        self.default_server = default_server
        self.interval = interval
        self.reloads = 0
        self._seen = fingerprint(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="manifest-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def check(self) -> bool:
        """One poll: reload if the manifest changed. True if a new listing was applied."""
        current = fingerprint(self.path)
        if current is None or current == self._seen:
            return False
        self._seen = current
        try:
            session = load_manifest(self.path, default_server=self.default_server)
            self.apply(session)
        except MixvfsError as exc:
            log.error("the changed manifest cannot be used, keeping the previous listing: %s", exc)
            return False
        except Exception:  # a bug in a reload must not kill the watcher (and with it, live updates)
            log.exception("reloading %s failed; keeping the previous listing", self.path)
            return False
        self.reloads += 1
        log.info("manifest changed: now %d tracks", len(session.tracks))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()
