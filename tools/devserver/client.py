"""The test helper: :class:`DevServer` runs the server as a real subprocess and drives its controls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import cast

from tools.devserver.common import HELD_PATH, IDLE_PATH, REARM_PATH, RELEASE_PATH, base_url, write_atomic
from tools.devserver.faults import parse_faults

# The checkout, put first on the server's import path: ``tools`` is not installed, and the server must not
# depend on the working directory of whoever starts it.
REPO = Path(__file__).resolve().parents[2]

class DevServer:
    """Runs the server (``python -m tools.devserver``) as a real subprocess; a context manager for tests and the
    benchmark."""

    def __init__(
        self,
        root: Path,
        *,
        tokens: Sequence[str] = (),
        token_file: Path | None = None,
        faults: Mapping[str, Mapping[str, object]] | None = None,
        log: Path | None = None,
        host: str = "127.0.0.1",
        tls: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.tokens = tuple(tokens)
        self.token_file = token_file
        self.host = host
        self.tls = tls  # a PEM (certificate and key): HTTPS; its test controls (release, held) are then not usable
        self._tmp = tempfile.TemporaryDirectory(prefix="devserver-")
        self.workdir = Path(self._tmp.name)
        self.faults_file = self.workdir / "faults.json"
        self.log_file = log if log is not None else self.workdir / "requests.jsonl"
        self._initial_faults: Mapping[str, Mapping[str, object]] = faults or {}
        self.url = ""
        self.port = 0
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def url_for(self, path: str) -> str:
        return self.url + "/" + urllib.parse.quote(path.lstrip("/"))

    def _command(self, port_file: Path) -> list[str]:
        cmd = [sys.executable, "-m", "tools.devserver", str(self.root), "--host", self.host]
        cmd += ["--port", "0", "--port-file", str(port_file)]
        cmd += ["--faults", str(self.faults_file), "--log", str(self.log_file)]
        for token in self.tokens:
            cmd += ["--token", token]
        if self.token_file is not None:
            cmd += ["--token-file", str(self.token_file)]
        if self.tls is not None:
            cmd += ["--tls", str(self.tls)]
        return cmd

    def _environment(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *([path] if path else [])])}

    def start(self, timeout: float = 10.0) -> DevServer:
        if self._proc is not None:
            raise RuntimeError("DevServer already started")
        self.set_faults(self._initial_faults)
        self.log_file.touch()
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        with (self.workdir / "stdout").open("wb") as out, (self.workdir / "stderr").open("wb") as err:
            # Files, not pipes: nobody drains a pipe while the tests run, and a full one blocks.
            self._proc = subprocess.Popen(self._command(port_file), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                          env=self._environment())
        self.port = self._wait_for_port(port_file, timeout)
        self.url = base_url(self.host, self.port, "https" if self.tls is not None else "http")
        return self

    def _wait_for_port(self, port_file: Path, timeout: float) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.exists():
                return int(port_file.read_text())
            if self._proc.poll() is not None:
                break
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"devserver did not start (exit {self.returncode}):\n{self.stderr()}")

    def stderr(self) -> str:
        path = self.workdir / "stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.returncode = proc.returncode

    def set_faults(self, faults: Mapping[str, Mapping[str, object]]) -> None:
        parse_faults(faults)  # fail in the test, not as a 500 inside the server
        write_atomic(self.faults_file, json.dumps(faults))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _control(self, path: str, timeout: float = 0.0, **params: object) -> str:
        """Ask a reserved endpoint; the server may wait up to `timeout` before answering."""
        if self._proc is None or not self.url:
            raise RuntimeError("DevServer is not running")
        query = urllib.parse.urlencode({"timeout": timeout, **params})
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=timeout + 10) as resp:
            return str(resp.read().decode())

    def wait_idle(self, timeout: float = 2.0) -> bool:
        """Wait until no request is mid-response (so its log line exists); requests parked on a
        hold do not count. False on timeout."""
        if self._proc is None or not self.url:
            return True
        return self._control(IDLE_PATH, timeout) == "idle\n"

    def release(self, name: str) -> int:
        """Let requests held on NAME go on (sticky, see the module doc); return how many were parked."""
        return int(self._control(RELEASE_PATH, name=name))

    def rearm(self, name: str) -> None:
        """Make NAME hold again: undo the stickiness of earlier releases."""
        self._control(REARM_PATH, name=name)

    def held(self, name: str) -> int:
        """How many requests are parked on NAME right now."""
        return int(self._control(HELD_PATH, name=name, count=0))

    def wait_held(self, name: str, count: int = 1, timeout: float = 30.0) -> int:
        """Block until at least COUNT requests are parked on NAME; return the number parked.
        The timeout is a hang guard: reaching it raises TimeoutError."""
        parked = int(self._control(HELD_PATH, timeout, name=name, count=count))
        if parked < count:
            raise TimeoutError(f"{parked} of {count} request(s) parked on hold {name!r} after {timeout} s")
        return parked

    def requests(self, method: str | None = None, path: str | None = None) -> list[dict[str, object]]:
        """The log entries in request-start order. The file is in finishing order: a line is written
        after the last byte, so a client's next request (another connection) can log first."""
        self.wait_idle()
        lines = self.log_file.read_text(encoding="utf-8").splitlines() if self.log_file.exists() else []
        entries: list[dict[str, object]] = [json.loads(line) for line in lines if line.strip()]
        entries.sort(key=lambda entry: cast(float, entry["t"]))
        return [e for e in entries if (method is None or e["method"] == method) and (path is None or e["path"] == path)]

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

