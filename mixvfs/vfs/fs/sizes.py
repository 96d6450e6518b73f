"""Sizes the mount-time probe could not learn (a 503 blip, a timeout), asked again in the background with growing
pauses, so that a later listing shows them without waiting. A lookup asks at once too (SessionFS._cloud_size)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from mixvfs.cache.errors import FetchError
from mixvfs.cache.fetcher import Fetcher
from mixvfs.vfs.fs.mount_state import MountState
from mixvfs.vfs.session.late_answers import LateAnswers
from mixvfs.vfs.session.tracks import Kind, Track

FIRST_PAUSE, LONGEST_PAUSE = 1.0, 60.0


def learn_sizes(listing: Callable[[], list[Track]], fetcher: Fetcher, state: MountState,
                stop: threading.Event, late: LateAnswers | None = None) -> None:
    """Until every size-less cloud track whose probe failed has an answer, or ``stop``; ``listing``: the tracks
    now (a live reload swaps them). A track whose mount-time question is still open (``late``) is not asked
    again: its answer is on its way."""
    pause = FIRST_PAUSE
    while not stop.wait(pause):
        unknown = [t for t in listing() if t.kind is Kind.CLOUD and state.size(t) is None
                   and t.source is not None and state.probe_failure(t) is not None
                   and not (late is not None and late.pending(t.spec.index, t.source.url))]
        if not unknown and not (late is not None and late.any_pending()):
            return
        for track in unknown:
            assert track.source is not None
            # Under the track's question lock, which a stat asking for the size takes too: a stat meanwhile
            # waits for this answer instead of sending the same question again.
            with state.question_lock(track):
                if state.size(track) is not None:
                    continue
                with contextlib.suppress(FetchError):
                    info = fetcher.probe(track.source)
                    state.learn_size(track, info.size)
                    state.answered(track)  # a server that gives no size is not asked again
        pause = min(pause * 2, LONGEST_PAUSE)
