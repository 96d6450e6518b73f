"""Python thread states kept across libfuse's callbacks.

libfuse's worker threads are not Python's. ctypes enters each callback with ``PyGILState_Ensure``, which, on
a thread without a Python thread state, makes one, and leaves it with ``PyGILState_Release``, which destroys
it again: every request (each of the two ``getxattr`` that ``ls -l`` sends per file, each stat, each read)
paid a thread state's allocation, an mmap and munmap of its 16 KiB frame stack (a TLB shootdown across the
daemon's threads) and a ``gettid``. ``strace -c -f`` of the daemon during ``ls -l`` of 10 000 files:
27 472 mmap and 27 102 munmap for 26 883 requests.

``ThreadStates.keep`` takes one more ``PyGILState_Ensure`` reference the first time a thread calls in, so that
the thread state outlives the callback and every later callback of that thread finds it. Whether this
thread's state was kept is read from a ``threading.local``, which lives exactly as long as the thread state
it belongs to: a thread whose state was not kept simply finds the attribute missing again.

A kept state is never given back: when libfuse ends an idle thread, the state it kept (about 20 KiB) stays
behind. ``limit`` bounds how many the process keeps over its life; a thread past it works as before.
"""

from __future__ import annotations

import ctypes
import threading


class ThreadStates:
    """Keeps the Python thread state of at most ``limit`` foreign threads, one reference each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = 0  # thread states kept
        self.reused = 0  # callbacks that found their thread's state kept by an earlier one (racy: a count)
        self._lock = threading.Lock()
        self._local = threading.local()
        # The thread that makes this (Python's own, which calls into libfuse and may be called back on) has
        # a state of its own for good: None, neither kept here nor to keep.
        self._local.kept = None
        self._ensure = ctypes.pythonapi.PyGILState_Ensure
        self._ensure.restype = ctypes.c_int
        self._ensure.argtypes = []

    def keep(self) -> None:
        """Called at the start of every callback, holding the GIL: cheap once this thread's state is kept."""
        local = self._local
        kept = getattr(local, "kept", False)
        if kept:
            self.reused += 1
            return
        if kept is None:
            return
        with self._lock:
            if self.kept >= self.limit:
                return
            self.kept += 1
        self._ensure()  # balanced by no release: the thread state lives as long as its thread
        local.kept = True
