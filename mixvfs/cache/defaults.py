"""The defaults of the settings that live in ``cache/``, in a module that imports nothing.

``mixvfs config`` and every command's ``--help`` show them; keeping them here lets a command that never
talks to a server or runs a token command (``check-export``) start without importing the team-cache policy,
the token runner or their sockets and subprocesses.
"""

from __future__ import annotations

MAX_SIZE = 10 << 30  # bytes
MAX_AGE = 30 * 86400.0  # seconds unused before a blob is dropped
TEAM_CACHE_RESET_AFTER = 300.0  # seconds a team cache that failed is skipped
TOKEN_COMMAND_TIMEOUT = 30.0  # seconds; a password manager waiting for an unlock may need the user
CONNECT_TIMEOUT = 10.0  # seconds to open a connection to a server
# seconds a server may ask us to wait (429/503 with Retry-After) before the track fails instead
SERVER_WAIT_MAX = 120.0
# Questions without a body (a size, a conditional HEAD) in flight at once to a server: each costs a round trip,
# so asked one after another 200 tracks at 80 ms take 16 s; this many at once, about one second.
QUESTIONS = 32
# Seconds an idle connection is kept for the next request: an exporter pausing between tracks must not pay a
# new TCP (and TLS) handshake, one or more round trips. nginx keeps idle connections 75 s by default.
KEEPALIVE_EXPIRY = 60.0
