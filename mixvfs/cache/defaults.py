"""The default of every setting, in the one module that names them, which imports nothing.

``mixvfs config``, every command's ``--help`` and the code that builds the parts (the runtime, the fetcher, the
HTTP client) read them here; README's settings table is checked against them by a test. Importing nothing lets
a command that never talks to a server or runs a token command (``check-export``) start without the team-cache
policy, the token runner or their sockets and subprocesses.
"""

from __future__ import annotations

# The cache folder's limits.
MAX_SIZE = 10 << 30  # bytes
MAX_AGE = 30 * 86400.0  # seconds unused before a blob is dropped
# Seconds a file in the blob folder that no index row names is kept before prune removes it (a commit the database
# refused after its rename left it). A commit renames its file first and writes its row a moment later, waiting at
# most diskcache's busy timeout (60 s) for the write lock, in this process or another sharing the cache: an hour
# is far beyond any commit in flight.
UNINDEXED_GRACE = 3600.0

# Downloads.
# The most downloads at once: how many of them run is measured (cache/concurrency.py), so this is a ceiling that
# a fast link fills and a slow one never reaches.
JOBS = 32
BWLIMIT = 0  # bytes per second for all downloads together; 0: no cap
STALL_TIMEOUT = 30.0  # seconds a download may go without a byte before the attempt fails
RETRIES = 5  # attempts per download for a transient error
RETRY_WAIT = 0.5  # seconds of the first wait between attempts; it doubles, with jitter in proportion
FAILED_FOR = 60.0  # seconds a failed track answers EIO at once before it is tried again
# A server that let a request go unanswered (no headers within the stall or connect timeout) is not asked again
# until one request checks that it answers: the first check this many seconds later, then twice as long each time,
# at most SILENT_CHECK_LONGEST. Meanwhile its requests fail at once instead of waiting the stall timeout each.
SILENT_CHECK_FIRST = 5.0
SILENT_CHECK_LONGEST = 60.0
# seconds a server may ask us to wait (429/503 with Retry-After) before the track fails instead
SERVER_WAIT_MAX = 120.0

# The server and the token.
TOKEN_COMMAND_TIMEOUT = 30.0  # seconds; a password manager waiting for an unlock may need the user
CONNECT_TIMEOUT = 10.0  # seconds to open a connection to a server
# seconds the server's answers about tracks at mount or preflight may take before the user is told what the
# command waits for (at most PROBE_DEADLINE in all)
SLOW_SERVER_NOTICE = 1.0
# Questions without a body (a size, a conditional HEAD) in flight at once to a server: each costs a round trip,
# so asked one after another 200 tracks at 80 ms take 16 s; this many at once, about one second.
QUESTIONS = 32
# Seconds an idle connection is kept for the next request: an exporter pausing between tracks must not pay a
# new TCP (and TLS) handshake, one or more round trips. nginx keeps idle connections 75 s by default.
KEEPALIVE_EXPIRY = 60.0

# The team cache.
TEAM_CACHE_RESET_AFTER = 300.0  # seconds a team cache that failed is skipped
TEAM_CACHE_ALLOW_PLAIN_HTTP = False

# The mount.
# "auto": 2 x stall_timeout on macOS (macFUSE ejects a volume whose request outlives daemon_timeout), none on
# Linux; "off" or 0: none; else seconds.
REQUEST_TIMEOUT = "auto"
PASSTHROUGH = "auto"  # the kernel reads cached tracks itself where it can; "off": never
