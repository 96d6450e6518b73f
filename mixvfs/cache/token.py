"""Where the bearer token comes from — ``MIXVFS_TOKEN``, a token file, or a command run again to refresh — and
how it is kept out of logs and error texts. No HTTP here: the commands that only read settings (``config``,
``check-export``) import this without httpx.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

from mixvfs.cache import defaults
from mixvfs.cache.errors import AuthRejected

log = logging.getLogger(__name__)

TOKEN_COMMAND_TIMEOUT = defaults.TOKEN_COMMAND_TIMEOUT


class TokenSource:
    """Where the bearer token comes from: ``MIXVFS_TOKEN``, a file, or a command (run again to refresh).

    The token is never logged and never part of an exception text.
    """

    def __init__(self, *, value: str | None = None, file: Path | None = None, command: str | None = None,
                 timeout: float = TOKEN_COMMAND_TIMEOUT) -> None:
        self._value = value
        self._file = file
        self._command = command
        self._timeout = timeout
        self._lock = threading.Lock()
        self.generation = 0
        self.refreshes = 0
        if file is not None:
            warn_if_shared(file)
        self._token = self._obtain()

    @property
    def configured(self) -> bool:
        return any(x is not None for x in (self._value, self._file, self._command))

    def current(self) -> tuple[str | None, int]:
        with self._lock:
            return self._token, self.generation

    def refresh(self, seen_generation: int) -> str | None:
        """Obtain a fresh token, unless another thread already did since ``seen_generation``."""
        with self._lock:
            if self.generation == seen_generation:
                self._token = self._obtain()
                self.generation += 1
                self.refreshes += 1
            return self._token

    def _obtain(self) -> str | None:
        # An empty token is an error here, where its cause is known: sent as no token at all, it would come
        # back as a puzzling "token rejected (401)".
        if self._command is not None:
            token = header_safe(run_token_command(self._command, self._timeout), "the token command's output")
            if token is None:
                raise AuthRejected(f"the token command printed no token ({command_preview(self._command)})", 401)
            return token
        if self._file is not None:
            try:
                text = self._file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                # AuthRejected (a track failure), not ConfigError: this also runs on a refresh mid-export.
                raise AuthRejected(f"cannot read token file {self._file}: {getattr(exc, 'strerror', None) or exc}",
                                   401) from None
            token = header_safe(text, f"token file {self._file}")
            if token is None:
                raise AuthRejected(f"the token file {self._file} holds no token (it is empty)", 401)
            return token
        return header_safe(self._value, "MIXVFS_TOKEN")


TOKEN_TEXT = re.compile(r"[\x21-\x7e]+")  # visible ASCII: all a header value can carry safely


def header_safe(raw: str | None, origin: str) -> str | None:
    """The token stripped of surrounding whitespace; refused (without quoting it) if it could not travel
    in a header — httpx's error for an illegal header value would print the value, i.e. the secret."""
    token = (raw or "").strip()
    if not token:
        return None
    if not TOKEN_TEXT.fullmatch(token):
        raise AuthRejected(f"the token from {origin} contains spaces, control or non-ASCII characters", 401)
    return token


class _CommandProcess(subprocess.Popen[str]):
    """A Popen that stops what it started when this process is stopped while the child starts. Popen waits for
    the child's exec before it returns; a stop signal's exception in that wait (a mount cancelled the moment its
    token command started: seen on a loaded machine, the command's own children already running) left the child
    running unseen, as Popen was never returned. Reaches into subprocess's ``_execute_child``, which sets ``pid``
    right after the fork (CPython 3.11-3.13); tests/mount/test_cli.py's cancelled-token-command test covers it."""

    def _execute_child(self, *args: Any, **kwargs: Any) -> None:
        try:
            super()._execute_child(*args, **kwargs)  # type: ignore[misc]
        except BaseException:
            pid = getattr(self, "pid", None)
            if isinstance(pid, int) and pid > 0:
                for kill in (os.killpg, os.kill):  # its session (start_new_session), or itself before setsid
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                self.returncode = -signal.SIGKILL
            raise


def run_token_command(command: str, timeout: float = TOKEN_COMMAND_TIMEOUT) -> str:
    """The command's standard output. It runs in a session of its own, so that on a timeout the whole
    process group goes (a shell's children too, not only the shell). Errors name the program, never its
    arguments (they may hold secrets)."""
    name = command_preview(command)
    process: subprocess.Popen[str] | None = None
    try:
        process = _CommandProcess(command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        assert process is not None
        stop_process_group(process)
        raise AuthRejected(f"the token command {name} did not finish within {timeout:g} s "
                           "(stopped, with every process it started)", 401) from None
    except OSError as exc:
        if process is not None:
            stop_process_group(process)
        raise AuthRejected(f"cannot run the token command {name}: {exc.strerror}", 401) from None
    except BaseException:
        # This process is being stopped while the command runs (a mount cancelled with Ctrl-C or SIGTERM while
        # it starts; the signal's exception may come the moment the command started): the command and what it
        # started go too, not left running on their own.
        if process is not None:
            stop_process_group(process)
        raise
    if process.returncode == 127:  # the shell's "command not found"
        program = missing_program(err, command) or name
        raise AuthRejected(f"the token command failed: command not found: {program}", 401)
    if process.returncode != 0:
        raise AuthRejected(f"the token command {name} failed with exit status {process.returncode}", 401)
    return out


def stop_process_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    try:
        process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        # A child that left the group (setsid) still holds the pipes: stop waiting for them.
        process.kill()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        process.wait()


NOT_FOUND = re.compile(r"([^\s:]+): (?:command )?not found\s*$", re.MULTILINE)


def missing_program(stderr: str, command: str) -> str | None:
    """The program the shell could not find, from its message (``sh: 1: NAME: not found``, bash's
    ``NAME: command not found``) — only if it is a program word of the command (in a pipeline it need
    not be the first), never an argument, which may be a secret."""
    programs = program_words(command)
    for match in NOT_FOUND.finditer(stderr or ""):
        if match.group(1) in programs:
            return match.group(1)
    return None


def program_words(command: str) -> set[str]:
    """The words in command position: the first of the command and the first after each | ; & && ||."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return set()
    words, expecting = set(), True
    for token in tokens:
        if token and set(token) <= set("|;&()"):
            expecting = True
        elif expecting and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token):  # skip VAR=value prefixes
            words.add(token)
            expecting = False
    return words


def warn_if_shared(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token file %s is readable by group or others; chmod 600 it", path)


def command_preview(command: str) -> str:
    """The token command's program name only: its arguments may hold secrets."""
    try:
        return shlex.split(command)[0]
    except (ValueError, IndexError):
        return "<token command>"
