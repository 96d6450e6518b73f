"""ThreadStates' bookkeeping in-process (the kept states themselves, on libfuse's threads, are proven through a
real mount: tests/mount/test_listing.py)."""

from __future__ import annotations

import threading

from mixvfs.vfs.adapter.thread_states import ThreadStates


def call_on_new_thread(states: ThreadStates, times: int) -> None:
    def calls() -> None:
        for _ in range(times):
            states.keep()

    worker = threading.Thread(target=calls)
    worker.start()
    worker.join()


def test_a_thread_keeps_its_state_once_and_reuses_it_after():
    states = ThreadStates(limit=4)
    call_on_new_thread(states, times=5)
    assert (states.kept, states.reused) == (1, 4)


def test_no_more_states_are_kept_than_the_limit():
    states = ThreadStates(limit=2)
    for _ in range(4):
        call_on_new_thread(states, times=3)
    assert states.kept == 2
    assert states.reused == 2 * 2  # the two threads past the limit found nothing kept, each time


def test_the_thread_that_made_it_is_neither_kept_nor_counted():
    states = ThreadStates(limit=2)
    for _ in range(3):
        states.keep()
    assert (states.kept, states.reused) == (0, 0)
