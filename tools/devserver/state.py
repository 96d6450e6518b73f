"""What the handler threads share: the configuration, auth, the ``times`` counters, the holds and the log."""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.devserver.faults import Fault, FaultsError, load_faults


class ServerStopping(Exception):
    """A held request learns that the server is shutting down: it hangs up instead of answering."""



@dataclass
class RequestRecord:
    """One line of the request log, filled in as the response goes out."""

    t: float
    method: str
    path: str
    range: str | None
    if_range: str | None
    if_none_match: str | None
    if_modified_since: str | None
    accept_encoding: str | None
    auth: str | None
    client_port: int | None = None  # the client's end of the connection: one per TCP connection
    status: int | None = None
    bytes: int = 0
    fault: str | None = None
    t_end: float | None = None
    t_gone: float | None = None  # the client hung up while the request was parked on a hold (it ends later)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


class Holds:
    """Named gates for the "hold" fault: a request parks on NAME until the test releases NAME.

    A release is sticky per fault entry (its identity), so a later request of the same entry passes,
    while a changed entry (a new "id") or rearm() parks again. Each parked request has its own Event:
    a rearm() right after a release can never re-park a request the release already freed.
    Shares the server's idle Condition: a parked request does not count as busy for wait_idle().
    """

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._open: dict[str, set[str]] = {}
        self._parked: dict[str, list[tuple[str, threading.Event]]] = {}
        self._stopping = False

    def wait(self, name: str, identity: str, gone: Callable[[], bool] | None = None) -> None:
        """Return once NAME is released for this entry; raise ServerStopping if the server stops. ``gone``
        (asked a few times a second while parked, until it says yes) tells whether the client hung up: the
        request stays parked, but its caller can log when its client left."""
        gate = (identity, threading.Event())
        with self._cond:
            if self._stopping:
                raise ServerStopping
            if identity in self._open.get(name, ()):
                return
            self._parked.setdefault(name, []).append(gate)
            self._cond.notify_all()
        while not gate[1].wait(None if gone is None else 0.05):  # release() or stop() sets it
            if gone is not None and gone():
                gone = None
        if gone is not None:
            gone()  # a client that left just before the release
        with self._cond:
            if gate in self._parked.get(name, []):
                self._parked[name].remove(gate)
                self._cond.notify_all()
            if self._stopping:
                raise ServerStopping

    def release(self, name: str, identities: Iterable[str]) -> int:
        """Open NAME for these entries and for every request parked on it; return how many were freed."""
        with self._cond:
            opened = self._open.setdefault(name, set())
            opened.update(identities)
            freed = self._parked.pop(name, [])
            for identity, event in freed:
                opened.add(identity)
                event.set()
            self._cond.notify_all()
            return len(freed)

    def rearm(self, name: str) -> None:
        with self._cond:
            self._open.pop(name, None)

    def total_parked(self) -> int:
        with self._cond:
            return sum(len(waiters) for waiters in self._parked.values())

    def wait_parked(self, name: str, count: int, timeout: float) -> int:
        """Wait until at least COUNT requests are parked on NAME (or the timeout); return the number."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._parked.get(name, [])) >= count, timeout)
            return len(self._parked.get(name, []))

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for waiters in self._parked.values():
                for _, event in waiters:
                    event.set()
            self._cond.notify_all()


@dataclass(frozen=True)
class ServerConfig:
    """What the command line says: the files served, who may read them, the faults file and the log."""

    root: Path
    tokens: tuple[str, ...]
    token_file: Path | None
    faults_file: Path | None
    log_file: Path | None


class ServerState:
    """Everything shared by the handler threads: config, the times counters, the log."""

    def __init__(self, config: ServerConfig) -> None:
        self.root, self.tokens, self.token_file = config.root, config.tokens, config.token_file
        self.faults_file, self.log_file = config.faults_file, config.log_file
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._inflight = 0
        # Shared with Holds, so parking wakes wait_idle(); an RLock because wait_idle()'s predicate
        # asks Holds.total_parked(), which takes the same lock again.
        self._idle = threading.Condition(threading.RLock())
        self.holds = Holds(self._idle)

    def valid_tokens(self) -> set[str] | None:
        """None means auth is open. A configured but missing/empty token file denies everything,
        so a test rewriting it can never open the server by accident."""
        if not self.tokens and self.token_file is None:
            return None
        valid = set(self.tokens)
        if self.token_file is not None:
            try:
                text = self.token_file.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = ""
            valid.update(line.strip() for line in text.splitlines() if line.strip())
        return valid

    def authorized(self, header: str | None) -> bool:
        valid = self.valid_tokens()
        if valid is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        # compare_digest on every candidate: no early exit that leaks which token is close.
        return any([hmac.compare_digest(token.encode(), v.encode()) for v in valid])

    def pick_fault(self, keys: Sequence[str], head: bool) -> Fault | None:
        """The fault for this request, consuming one of its "times" if it has a budget."""
        faults = load_faults(self.faults_file)
        entry_key = next((k for k in keys if k in faults), "*")
        entry = faults.get(entry_key)
        fault = entry.for_request(head) if entry is not None else None
        if fault is None or fault.name is None:  # nothing to do to this request: consume nothing
            return None
        if fault.times is None:
            return fault
        # Counted per request path and per entry content, so changing an entry re-arms it.
        counter = (keys[0], fault.identity)
        with self._lock:
            used = self._counts.get(counter, 0)
            if used >= fault.times:
                then = fault.then.for_request(head) if fault.then is not None else None
                return then if then is not None and then.name is not None else None
            self._counts[counter] = used + 1
        return fault

    def begin(self) -> None:
        with self._idle:
            self._inflight += 1

    def end(self, record: RequestRecord) -> None:
        # Log before leaving the in-flight count, so wait_idle() implies "the line is written".
        record.t_end = time.time()
        try:
            self.write_log(record)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            # A parked request writes nothing until the test releases it: it is not "mid-flight".
            return self._idle.wait_for(lambda: self._inflight == self.holds.total_parked(), timeout)

    def release(self, name: str) -> int:
        """Release NAME for the entries now in the faults file that hold on it, and for parked requests."""
        try:
            faults = load_faults(self.faults_file)
        except FaultsError:
            faults = {}  # the parked requests are still freed; the 500s will tell the test
        return self.holds.release(name, {f.identity for f in faults.values() if f.hold == name})

    def write_log(self, record: RequestRecord) -> None:
        if self.log_file is None:
            return
        line = record.to_json() + "\n"
        with self._lock, self.log_file.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()


