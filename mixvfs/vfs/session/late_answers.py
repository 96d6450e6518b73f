"""What the server answers about a track after the folder went live. The mount asks about the tracks whose size the
manifest lacks, 32 at once, and goes live after at most ``PROBE_DEADLINE``; the questions still open then go on in
the background (the askers keep asking, 32 at once) and their answers land here, kept for the mount (which applies
each to its track) and for a ``stat`` that wants one: it waits for the question already in flight instead of
asking again, one track at a time, behind a slow server. Keyed by the track's place in the manifest and its URL."""

from __future__ import annotations

import threading
from collections.abc import Callable

from mixvfs.cache.errors import FetchError
from mixvfs.cache.remote import RemoteInfo

Answer = RemoteInfo | FetchError
Key = tuple[int, str]  # the track's place in the manifest, its URL


class LateAnswers:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._asking: set[Key] = set()  # questions still open when the folder went live
        self._answers: dict[Key, Answer] = {}
        self._listener: Callable[[int, str, Answer], None] | None = None

    def asking(self, keys: list[Key]) -> None:
        """These questions are still open as the folder goes live: their answers will come here."""
        with self._cond:
            self._asking.update(keys)

    def arrived(self, place: int, url: str, answer: Answer) -> None:
        """An open question's answer: the listener applies it first, then any ``stat`` waiting for it wakes."""
        with self._cond:
            listener = self._listener
        if listener is not None:
            listener(place, url, answer)
        with self._cond:
            self._asking.discard((place, url))
            self._answers[(place, url)] = answer
            self._cond.notify_all()

    def listen(self, listener: Callable[[int, str, Answer], None]) -> None:
        """``listener`` gets every answer: those that came before now first (in this thread), then each as it
        comes (in the asker's thread)."""
        with self._cond:
            self._listener = listener
            came = list(self._answers.items())
        for (place, url), answer in came:
            listener(place, url, answer)

    def pending(self, place: int, url: str) -> bool:
        with self._cond:
            return (place, url) in self._asking

    def any_pending(self) -> bool:
        with self._cond:
            return bool(self._asking)

    def wait(self, place: int, url: str, timeout: float | None) -> Answer | None:
        """The answer to this track's open question, once it comes (at most ``timeout`` seconds; None: as long as
        it takes — the question itself is bounded by the HTTP timeouts); None when no question is open for it or
        the wait ran out."""
        key = (place, url)
        with self._cond:
            self._cond.wait_for(lambda: key not in self._asking, timeout=timeout)
            return self._answers.get(key)
