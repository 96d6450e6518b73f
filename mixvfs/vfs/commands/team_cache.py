"""``mixvfs team-cache nginx-config``: a complete nginx configuration for a studio's shared cache.

The cache is nginx (Debian's ``nginx-light`` has the two modules it needs: ``auth_request`` and ``slice``),
never a home-made server. What the generated configuration does, and why:

* every request, hit or miss, is authorized at the origin with the user's own ``Authorization``: an
  ``auth_request`` HEAD of the same URI, never cached: nginx's cache writes each entry's key into its file, and
  a key with the token would put every user's token on the cache host's disk (nginx-light cannot hash it). A
  revoked user is refused at once, and one user's "yes" is never another's;
* authorization, cache key and fetch all use the raw request URI as sent (``$request_uri``), never nginx's
  normalised one, so no path the origin authorizes can name another path's cached bytes;
* track bytes are cached once for everybody, keyed by method, URI and 4 MiB slice — never by token — so
  ranged reads and resumes are served from the cache, and ``proxy_cache_lock`` makes concurrent misses of a
  slice one fetch (a request waits for it at most ``LOCK_TIMEOUT``, then is passed to the origin uncached). The
  origin's ``Cache-Control: private`` is overridden: acceptable only because every hit
  is re-authorized (RFC 9111 §3.5);
* a HEAD stays a HEAD (``proxy_cache_convert_head off``, the method in the key): listing a session
  downloads nothing;
* every answer carries ``X-Cache-Status`` (HIT, MISS, … ; NONE for nginx's own, e.g. a refused token;
  PASS when the origin answered something other than yes/no to the authorization, passed through
  uncached), and the origin it fronts (``X-Mixvfs-Origin``). A track's answer also carries what the origin
  said in the authorization HEAD made for it (``X-Mixvfs-Auth-Status``, ``X-Mixvfs-Origin-ETag``,
  ``X-Mixvfs-Origin-Length``): the client checks the copy's ETag and length against that, the origin's word at
  the download's start, never against anything the cache kept, and needs no question of its own;
  ``X-Mixvfs-Refresh: 1`` on a request bypasses (and replaces) the cached copy of that URI;
* ``/.mixvfs-store-check?n=NONCE`` tells whether the cache stores at all: nginx fetches a small answer from itself
  through a cache zone beside the track bytes' (same owner, same disk); the second request of one nonce must be
  a HIT. A cache whose workers cannot write its folder answers every request from the origin and would
  otherwise only be slower: ``mixvfs preflight`` and ``mixvfs status`` say so.
"""

from __future__ import annotations

import argparse
import grp
import ipaddress
import os
import pwd
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mixvfs.cache.defaults import STALL_TIMEOUT
from mixvfs.cache.errors import ConfigError
from mixvfs.cache.team import (
    AUTH_HEADER,
    CURRENT_ETAG_HEADER,
    CURRENT_LENGTH_HEADER,
    MARKER,
    MISDIRECTED,
    ORIGIN_HEADER,
    REFRESH_HEADER,
    STORE_CHECK_HEADER,
    STORE_CHECK_PATH,
    is_loopback,
    origin_of,
)
from mixvfs.cache.units import parse_size

SLICE = "4m"
# Seconds a request waits for another's fetch of the same slice (proxy_cache_lock) before nginx asks the origin
# for it too: under mixvfs's stall timeout, or a second workstation exporting beside a first on a slow origin
# takes the cache for down (no byte within the stall timeout) for team_cache_reset_after.
LOCK_TIMEOUT = int(STALL_TIMEOUT * 2 // 3)
STORE_CHECK, STORE_ANSWER = STORE_CHECK_PATH, "/.mixvfs-store-answer"

TEXT = """Print a complete nginx configuration for a studio's team cache in front of ORIGIN (the music service).
Every request is authorized at the origin with the user's own token (a HEAD of the same URI, never cached: no
token is ever written to the cache host's disk); track bytes are cached once for everybody, in 4 MiB slices; a
HEAD never downloads. Everything nginx writes (pid, logs, temporary files, the cache) goes under --cache-dir, whose
folders belong to --user (run it as root: nginx's workers run as that user and must write there).
Run it with: nginx -c FILE (add -g 'daemon off;' to keep it in the foreground, e.g. under systemd)."""
GROUP_TEXT = """A studio's team cache: nginx on the LAN in front of the music service, so that each track crosses the
internet once per studio while every user keeps their own token. nginx-config prints its configuration;
workstations use it with the team_cache setting (--team-cache, MIXVFS_TEAM_CACHE)."""
GROUP_EXAMPLES = """examples:
  mixvfs team-cache nginx-config --origin https://music.example.com --listen 10.0.0.5:8443 --cache-dir /srv/c ...
  mixvfs mount friday.json ~/MixBoardTracks --team-cache https://10.0.0.5:8443
"""
EXAMPLES = """examples:
  sudo "$(command -v mixvfs)" team-cache nginx-config --origin https://music.example.com --listen 10.0.0.5:8443 \\
      --cache-dir /srv/mixvfs-cache --user mixvfs-cache --tls-cert /etc/ssl/cache.pem --tls-key /etc/ssl/cache.key \\
      | sudo tee /srv/mixvfs-cache.conf > /dev/null
  sudo nginx -c /srv/mixvfs-cache.conf
  mixvfs mount friday.json ~/MixBoardTracks --team-cache https://10.0.0.5:8443
"""


@dataclass(frozen=True)
class CacheConfig:
    origin: str  # scheme://host[:port], no path
    listen: str  # HOST:PORT
    cache_dir: Path
    max_size: int
    tls_cert: Path | None = None
    tls_key: Path | None = None
    user: str | None = None  # the worker processes' user (only when nginx starts as root)


def parse_origin(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--origin must be an http:// or https:// URL, not {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ConfigError(f"--origin must be the server only (scheme://host[:port]), not {text!r}")
    # The spelling the client sends in X-Mixvfs-Origin (lower case, no default port): the match is exact.
    return origin_of(text)


HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?")


def parse_listen(text: str) -> str:
    """HOST:PORT, strictly: an IPv4 address, a [IPv6] address, ``*`` or a host name, and a port. It is written
    into the configuration as it is, so nothing else (``;``, spaces, quotes) may get through."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen must be HOST:PORT (e.g. 10.0.0.5:8443), not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"--listen {text!r}: {host} is not an IPv6 address") from None
    elif host != "*" and not HOSTNAME.fullmatch(host):
        raise ConfigError(f"--listen {text!r}: {host!r} is not an address or host name")
    return f"{host}:{int(port)}"


def listen_host(listen: str) -> str:
    return listen.rpartition(":")[0].strip("[]")


def parse_max_size(text: str) -> int:
    size = parse_size(text)
    if size <= 0:
        raise ConfigError(f"--max-size {text!r}: the cache needs room (e.g. 100G)")
    return size


def check_user(name: str | None) -> str | None:
    if name is not None:
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"--user {name}: no such user on this machine") from None
    return name


def worker_user(cache_dir: Path, explicit: str | None) -> str | None:
    """As root, nginx's workers drop to a user that must own CACHE_DIR (they write the cache): the one named,
    else the folder's owner if it exists, else root. As a normal user there is nothing to drop to (nginx warns
    about a ``user`` line), and the folders are that user's own."""
    if explicit:
        return explicit
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwuid(cache_dir.stat().st_uid).pw_name
    except (OSError, KeyError):
        return "root"


def primary_group(user: str) -> str:
    """The user's own group, named in nginx's ``user`` line: alone, nginx takes a group of the user's name,
    which many users (``nobody``, whose group is ``nogroup`` on Debian) do not have."""
    try:
        gid = pwd.getpwnam(user).pw_gid
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return user


def unreachable_by(user: str, folder: Path) -> Path | None:
    """The first folder above ``folder`` that ``user`` cannot pass through (no search permission for it), or
    None. nginx's workers must reach their cache: a parent such as a home folder (0700) lets nginx start and
    answer every request from the origin, storing nothing."""
    entry = pwd.getpwnam(user)
    if entry.pw_uid == 0:
        return None
    groups = {entry.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    for parent in reversed(folder.parents):
        try:
            st = parent.stat()
        except OSError:
            return None  # not there yet: created below, by root, 0755 (umask allowing)
        if st.st_uid == entry.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return parent
    return None


def render(cfg: CacheConfig) -> str:
    """The configuration text. Paths are absolute; nothing outside ``cache_dir`` is written."""
    d = cfg.cache_dir
    origin_host = urlsplit(cfg.origin).netloc
    tls = cfg.tls_cert is not None
    listen = f"listen {cfg.listen}{' ssl' if tls else ''};"
    tls_lines = (f"\n        ssl_certificate {q(cfg.tls_cert)};\n        ssl_certificate_key {q(cfg.tls_key)};"
                 "\n        ssl_protocols TLSv1.2 TLSv1.3;") if tls else ""
    upstream_tls = ("\n    proxy_ssl_server_name on;\n    proxy_ssl_verify on;"
                    "\n    proxy_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;"
                    if cfg.origin.startswith("https://") else "")
    user_line = f"user {cfg.user} {primary_group(cfg.user)};\n" if cfg.user else ""
    scheme = "https" if tls else "http"
    host = listen_host(cfg.listen)
    self_host = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(
        host, f"[{host}]" if ":" in host else host)
    self_url = f"{scheme}://{self_host}:{cfg.listen.rpartition(':')[2]}{STORE_ANSWER}"
    origin_var = "$http_" + ORIGIN_HEADER.lower().replace("-", "_")
    # proxy_set_header is inherited only by a level that sets none itself: every location says them all.
    headers = "\n".join(f"            proxy_set_header {line};" for line in (
        'Connection ""', f"Host {origin_host}", f'{REFRESH_HEADER} ""'))
    return f"""# mixvfs team cache: generated by `mixvfs team-cache nginx-config`. Run: nginx -c THIS_FILE
# Origin {cfg.origin}; everything nginx writes is under {d}.
{user_line}worker_processes auto;
pid {q(d / "nginx.pid")};
error_log {q(d / "logs" / "error.log")} warn;
events {{ worker_connections 1024; }}

http {{
    # Never the Authorization header in the log.
    log_format mixvfs '$remote_addr [$time_local] "$request" $status $body_bytes_sent cache=$upstream_cache_status '
                      'auth=$mixvfs_auth_status $request_time upstream=$upstream_response_time';
    access_log {q(d / "logs" / "access.log")} mixvfs;
    client_body_temp_path {q(d / "temp" / "client_body")};
    proxy_temp_path {q(d / "temp" / "proxy")};
    fastcgi_temp_path {q(d / "temp" / "fastcgi")};
    uwsgi_temp_path {q(d / "temp" / "uwsgi")};
    scgi_temp_path {q(d / "temp" / "scgi")};
    server_tokens off;
    default_type application/octet-stream;

    # Track bytes, shared by every user: keyed by method, URI and slice, never by token.
    proxy_cache_path {q(d / "cache" / "bytes")} levels=1:2 keys_zone=mixvfs_bytes:64m max_size={cfg.max_size}
                     inactive=30d use_temp_path=off;
    # The store check's answers: beside the track bytes (same owner, same disk), small and short-lived.
    proxy_cache_path {q(d / "cache" / "check")} keys_zone=mixvfs_check:1m max_size=1m inactive=1m
                     use_temp_path=off;

    map $http_x_mixvfs_refresh $mixvfs_refresh {{ default 0; "1" 1; }}
    # A HEAD (a size for a listing) is passed on, never stored: a stored size would outlive a track's change
    # for as long as the bytes, and the bytes' check cannot correct a size a program was already given.
    map $request_method $mixvfs_head {{ default 0; HEAD 1; }}
    # Every answer is marked, nginx's own ones too (a refused token: NONE).
    map $upstream_cache_status $mixvfs_cache_status {{ "" NONE; default $upstream_cache_status; }}

    upstream mixvfs_origin {{
        server {origin_host}{':443' if cfg.origin.startswith('https://') and ':' not in origin_host else ''};
        keepalive 16;
    }}

    server {{
        {listen}{tls_lines}
        proxy_http_version 1.1;{upstream_tls}

        location / {{
            if ($request_method !~ ^(GET|HEAD)$) {{ return 405; }}
            # A client that means another origin is told so before anything reaches this one.
            if ({origin_var} !~* "^(|{re.escape(cfg.origin)}/?)$") {{ return {MISDIRECTED}; }}
            auth_request /.mixvfs-auth;
            auth_request_set $mixvfs_auth_status $upstream_status;
            # What the origin said of the track in that HEAD, made for this request: the client checks the
            # copy against it without asking the origin again (one round trip and one request fewer).
            auth_request_set $mixvfs_auth_etag $upstream_http_etag;
            auth_request_set $mixvfs_auth_length $upstream_http_content_length;
            # The origin answered the authorization with neither yes nor no (404, 5xx): its own answer to the
            # request, straight through and uncached.
            error_page 500 = @mixvfs_pass;

            slice {SLICE};
            proxy_cache mixvfs_bytes;
            # One URI for everything, the raw one as sent: the authorization above asks the origin about
            # $request_uri, so the key and the fetch use it too. nginx's normalised $uri (`..`, %2F resolved)
            # would let a path the origin authorizes (/public/../x) read the cached bytes of another (/x).
            proxy_cache_key "$request_method $request_uri $slice_range";
{headers}
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 30d;
            proxy_cache_lock on;
            proxy_cache_lock_age 60s;
            # A request waiting for another's fetch of its slice gets no byte meanwhile: past this, nginx passes it
            # to the origin itself (uncached), before the client's stall timeout takes the cache for down.
            proxy_cache_lock_timeout {LOCK_TIMEOUT}s;
            proxy_cache_convert_head off;
            proxy_cache_bypass $mixvfs_refresh $mixvfs_head;
            proxy_no_cache $mixvfs_head;
            # The origin says "private": overridden, acceptable only because every hit is re-authorized above.
            proxy_ignore_headers Cache-Control Expires Set-Cookie Vary X-Accel-Expires;
            proxy_hide_header Set-Cookie;
            add_header {MARKER} $mixvfs_cache_status always;
            add_header {ORIGIN_HEADER} {cfg.origin} always;
            add_header {AUTH_HEADER} $mixvfs_auth_status always;
            add_header {CURRENT_ETAG_HEADER} $mixvfs_auth_etag always;
            add_header {CURRENT_LENGTH_HEADER} $mixvfs_auth_length always;
            proxy_pass {cfg.origin.split('://')[0]}://mixvfs_origin$request_uri;
        }}

        location = /.mixvfs-auth {{
            internal;
            proxy_pass {cfg.origin.split('://')[0]}://mixvfs_origin$request_uri;
            proxy_method HEAD;
            proxy_pass_request_body off;
{headers}
            proxy_set_header Content-Length "";
            proxy_set_header Range "";
            proxy_set_header If-Range "";
            proxy_set_header If-None-Match "";
            proxy_set_header If-Modified-Since "";
            # Never cached: nginx writes a cache entry's key into its file, and this one would hold the token; and
            # the client checks the copy against this answer's ETag and length, which must be the origin's now.
        }}

        # Does this cache store? The second request of one nonce is a HIT only if the workers could write the
        # first answer under the cache folder (their user owns it). The answer comes from nginx itself.
        location = {STORE_CHECK} {{
            if ($arg_n !~ "^[A-Za-z0-9]{{8,64}}$") {{ return 400; }}
            proxy_cache mixvfs_check;
            proxy_cache_key "store-check $arg_n";
            proxy_cache_valid 200 1m;
            proxy_ssl_verify off;
            proxy_set_header Host $host;
            proxy_pass {self_url};
            add_header {MARKER} $mixvfs_cache_status always;
            add_header {ORIGIN_HEADER} {cfg.origin} always;
            add_header {STORE_CHECK_HEADER} 1 always;
        }}

        location = {STORE_ANSWER} {{
            return 200 "mixvfs team cache\n";
        }}

        location @mixvfs_pass {{
{headers}
            proxy_pass {cfg.origin.split('://')[0]}://mixvfs_origin$request_uri;
            add_header {MARKER} PASS always;
            add_header {ORIGIN_HEADER} {cfg.origin} always;
        }}
    }}
}}
"""


def q(path: Path | None) -> str:
    """A path as an nginx string: quoted, so spaces and semicolons in it cannot end the directive."""
    text = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def prepare_dir(cache_dir: Path, owner: str | None = None) -> None:
    """The folders nginx writes into (it creates only the last level of a cache or temporary path itself),
    mode 0700 and, run as root, owned by ``owner``: the workers (that user) write the cache and temporary
    files; the master (root) opens the logs before it drops to them."""
    if owner is not None and os.geteuid() == 0:
        blocked = unreachable_by(owner, cache_dir)
        if blocked is not None:
            raise ConfigError(f"--cache-dir {cache_dir}: nginx's workers (user {owner}) cannot reach it: {blocked} "
                              f"is mode {stat.S_IMODE(blocked.stat().st_mode):04o}; choose a folder such as "
                              "/srv/mixvfs-cache")
    try:
        folders = [cache_dir, *(cache_dir / sub for sub in ("logs", "temp", "cache"))]
        for folder in folders[1:]:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for folder in folders:
            folder.chmod(0o700)  # the cache holds every track anyone played
            if owner is not None and os.geteuid() == 0:
                entry = pwd.getpwnam(owner)
                os.chown(folder, entry.pw_uid, entry.pw_gid)
    except OSError as exc:
        raise ConfigError(f"--cache-dir {cache_dir}: cannot create it: {exc.strerror}") from None


def config_from_args(args: argparse.Namespace) -> CacheConfig:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.expanduser().is_file():
            raise ConfigError(f"{path}: no such file")
    # Every argument is checked before anything is created: a refused command leaves no folder behind.
    origin, listen = parse_origin(args.origin), parse_listen(args.listen)
    max_size, user = parse_max_size(args.max_size), check_user(args.user)
    if args.tls_cert is None and not is_loopback(listen_host(listen)):
        print(f"mixvfs team-cache: warning: --listen {listen} without --tls-cert/--tls-key: every user's token "
              "crosses the network in clear text", file=sys.stderr)
    cache_dir = args.cache_dir.expanduser().absolute()
    owner = worker_user(cache_dir, user)
    prepare_dir(cache_dir, owner)
    return CacheConfig(
        origin=origin,
        listen=listen,
        cache_dir=cache_dir,
        max_size=max_size,
        tls_cert=args.tls_cert.expanduser().absolute() if args.tls_cert else None,
        tls_key=args.tls_key.expanduser().absolute() if args.tls_key else None,
        user=owner,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    t = sub.add_parser("team-cache", help="a studio's shared cache (nginx) in front of the music service",
                       description=GROUP_TEXT, epilog=GROUP_EXAMPLES, allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = t.add_subparsers(dest="team_command", required=True, metavar="SUBCOMMAND")
    n = tsub.add_parser("nginx-config", help="print a complete nginx configuration", description=TEXT,
                        epilog=EXAMPLES, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    n.add_argument("--origin", required=True, metavar="URL", help="the music service, e.g. https://music.example.com")
    n.add_argument("--listen", required=True, metavar="HOST:PORT", help="where workstations reach the cache")
    n.add_argument("--cache-dir", required=True, type=Path, metavar="DIR",
                   help="pid, logs, temporary files and the cache (created, mode 0700)")
    n.add_argument("--tls-cert", type=Path, metavar="FILE", help="TLS certificate (PEM) for the listener")
    n.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key")
    n.add_argument("--max-size", default="100G", metavar="SIZE", help="cache size limit (100G)")
    n.add_argument("--user", help="the user nginx's workers run as when started as root; run as root, the "
                                  "command gives it the --cache-dir folders (default: the folder's owner)")


def main(args: argparse.Namespace) -> int:
    print(render(config_from_args(args)), end="")
    return 0
