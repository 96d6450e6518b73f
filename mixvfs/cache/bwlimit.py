"""The bandwidth cap (``bwlimit``): one budget of bytes per second shared by every download of a process.

A download hands each chunk it received to :meth:`Budget.spend`, which says how long to wait before reading on;
while it waits, its socket buffer fills and TCP's flow control slows the server down, so the link itself carries
no more than the cap (averaged over ``burst`` bytes). The accounting is a virtual schedule (GCRA): each chunk is
given the moment at which the cap would have let it through, so any number of threads share one rate without a
refill thread. Time is injected: the tests run the schedule without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# The most a download may read ahead of the schedule: small enough that the cap holds over a second at any rate a
# user would set (a few Mbit/s and up), large enough not to cut the 1 MiB reads into many waits.
BURST_SECONDS = 0.1
MIN_BURST = 64 << 10


class Budget:
    def __init__(self, rate: float, *, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self.rate = float(rate)  # bytes per second
        self.burst = float(burst if burst is not None else max(MIN_BURST, rate * BURST_SECONDS))
        self.clock = clock
        self._lock = threading.Lock()
        self._due = -float("inf")  # when the bytes already spent will have gone through at the cap

    def spend(self, count: int) -> float:
        """Account ``count`` bytes just received; the seconds to wait before receiving more (0: go on)."""
        with self._lock:
            now = self.clock()
            due = max(self._due, now) + count / self.rate
            self._due = due
        return max(0.0, due - now - self.burst / self.rate)
