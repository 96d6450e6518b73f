"""Settings in layers: built-in default < config file < environment variable < command-line flag.

The config file is TOML, at ``$MIXVFS_CONFIG`` if set, else ``config.toml`` in the platform's user
config folder (``~/.config/mixvfs`` on Linux, ``~/Library/Application Support/mixvfs`` on macOS).
Every key is optional; unknown keys are an error (a typo must not be ignored silently). The keys, with
an example of each, are in ``HELP`` below (what ``mixvfs config --help`` shows).

Each command declares which settings it takes (:func:`add_flags`) and resolves them once
(:func:`resolve`); ``mixvfs config`` shows every effective value and where it came from. The token
itself is only ever taken from ``MIXVFS_TOKEN``, a token file or a token command, never from the config
file or a flag (it would show in ``ps`` or sit in a file meant for settings).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import platformdirs

from mixvfs.cache import defaults
from mixvfs.cache.errors import ConfigError
from mixvfs.cache.location import CacheLimits, resolve_cache_dir
from mixvfs.cache.units import format_size, parse_duration, parse_size

if TYPE_CHECKING:  # built in runtime() only: reading settings (config, check-export) needs no httpx
    from mixvfs.cache.policy import RuntimeConfig
    from mixvfs.cache.token import TokenSource

T = TypeVar("T")
CONFIG_ENV = "MIXVFS_CONFIG"
TOKEN_ENV = "MIXVFS_TOKEN"


def _whole(low: int, high: int) -> Callable[[str], int]:
    """A parser of whole numbers from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise ConfigError(f"not a whole number: {text!r}") from None
        if not low <= number <= high:
            raise ConfigError(f"must be between {low} and {high}, not {number}")
        return number

    return parse


_jobs, _attempts = _whole(1, 64), _whole(1, 100)


def _bwlimit(text: str) -> int:
    """``off``/``0``: no cap; else a size per second (``10M``, ``500k``, ``10M/s``)."""
    value = text.strip().lower()
    if value in ("off", "0", ""):
        return 0
    return parse_size(value.removesuffix("/s"))


def _rate(value: int) -> str:
    return f"{format_size(value)}/s" if value else "off"


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ConfigError(f"must be longer than 0, not {text!r}")
    return seconds


def _path(text: str) -> Path:
    if not text.strip():
        raise ConfigError("must not be empty (an empty path would mean the current folder)")
    return Path(text).expanduser().absolute()


def _server(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise ConfigError(f"must be an http:// or https:// URL, not {text!r}")
    return text


def _text(text: str) -> str:
    return text


def _team_cache(text: str) -> str:
    from mixvfs.cache.team import parse_spec  # here, not at the top: check-export and config start without it

    parse_spec(text)  # a bad URL is said where it was given, not in the daemon's log
    return text


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"must be true or false, not {text!r}")


def _request_timeout(text: str) -> str | float:
    """"auto", "off" (0: no bound) or a duration."""
    if text in ("auto", "off"):
        return 0.0 if text == "off" else text
    return parse_duration(text)


def _request_timeout_shown(value: str | float) -> str:
    return value if isinstance(value, str) else ("off" if not value else _seconds(value))


def _passthrough(text: str) -> str:
    if text not in ("auto", "off"):
        raise ConfigError(f"must be auto or off, not {text!r}")
    return text


@dataclass(frozen=True)
class Spec:
    name: str  # the key in the config file and the attribute on the argparse namespace
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str  # what it does; the default is added from ``default`` (:attr:`described`), never written here
    show: Callable[[Any], str] = str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def described(self) -> str:
        """The help with the default as the setting shows it, e.g. "... (30s)"; a setting without a built-in
        default says in its help what applies instead."""
        return self.help if self.default is None else f"{self.help} ({self.show(self.default)})"


def _command_shown(command: str) -> str:
    from mixvfs.cache.token import command_preview

    return command_preview(command) + " …"  # its arguments may hold secrets


def _seconds(value: float) -> str:
    """2592000 -> "30d", 90 -> "1m30s": the way the flags take durations."""
    parts, rest = [], float(value)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if rest >= size:
            count = int(rest // size)
            parts.append(f"{count}{unit}")
            rest -= count * size
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)


SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("server", "MIXVFS_SERVER", None, _server, "server for manifests that name none"),
    Spec("token_command", "MIXVFS_TOKEN_COMMAND", None, _text, "command printing the bearer token (run again on 401)",
         _command_shown),
    Spec("token_timeout", "MIXVFS_TOKEN_TIMEOUT", defaults.TOKEN_COMMAND_TIMEOUT, _positive_duration,
         "stop a token command (and every process it started) running longer", _seconds),
    Spec("token_file", "MIXVFS_TOKEN_FILE", None, _path, "file holding the bearer token (re-read on 401)"),
    Spec("cache_dir", "MIXVFS_CACHE_DIR", None, _path, "cache folder (default: the user cache folder)"),
    Spec("max_size", "MIXVFS_MAX_SIZE", defaults.MAX_SIZE, parse_size, "cache size limit, LRU eviction",
         format_size),
    Spec("max_age", "MIXVFS_MAX_AGE", defaults.MAX_AGE, parse_duration, "drop blobs unused this long", _seconds),
    Spec("jobs", "MIXVFS_JOBS", defaults.JOBS, _jobs, "most downloads at once; how many run is measured"),
    Spec("bwlimit", "MIXVFS_BWLIMIT", defaults.BWLIMIT, _bwlimit,
         "cap on all downloads together, bytes per second like rclone's --bwlimit: 10M = 10 MiB/s", _rate),
    Spec("stall_timeout", "MIXVFS_STALL_TIMEOUT", defaults.STALL_TIMEOUT, _positive_duration,
         "fail a download without progress this long", _seconds),
    Spec("failed_for", "MIXVFS_FAILED_FOR", defaults.FAILED_FOR, parse_duration,
         "after a failure, answer EIO at once this long", _seconds),
    Spec("server_wait_max", "MIXVFS_SERVER_WAIT_MAX", defaults.SERVER_WAIT_MAX, parse_duration,
         "the longest wait a server may ask for (429/503 Retry-After) before the track fails", _seconds),
    Spec("retries", "MIXVFS_RETRIES", defaults.RETRIES, _attempts, "attempts per download for transient errors"),
    Spec("retry_wait", "MIXVFS_RETRY_WAIT", defaults.RETRY_WAIT, parse_duration,
         "first backoff wait, doubling, with jitter in proportion", _seconds),
    Spec("team_cache", "MIXVFS_TEAM_CACHE", None, _team_cache,
         "the studio's team cache(s) for track bytes: URL, ';' = failover order, '|' = random within a group"),
    Spec("team_cache_reset_after", "MIXVFS_TEAM_CACHE_RESET_AFTER", defaults.TEAM_CACHE_RESET_AFTER,
         _positive_duration, "a team cache that failed is skipped this long", _seconds),
    Spec("team_cache_allow_plain_http", "MIXVFS_TEAM_CACHE_ALLOW_PLAIN_HTTP", defaults.TEAM_CACHE_ALLOW_PLAIN_HTTP,
         _bool, "allow the token over plain http:// to a team cache on another machine",
         lambda v: "true" if v else "false"),
    Spec("request_timeout", "MIXVFS_REQUEST_TIMEOUT", defaults.REQUEST_TIMEOUT, _request_timeout,
         "the longest one read or stat waits for a download, then EIO and a report line; auto: 2 x stall_timeout "
         "on macOS (whose macFUSE ejects the volume when a request outlives its daemon_timeout), none on Linux; "
         "off: none", _request_timeout_shown),
    Spec("passthrough", "MIXVFS_PASSTHROUGH", defaults.PASSTHROUGH, _passthrough,
         "auto: the kernel reads cached tracks itself (FUSE passthrough) where it can; off: never"),
)}

# What each command takes (the rest of its flags are its own).
MOUNT_SETTINGS = tuple(SPECS)
TEAM_SETTINGS = ("team_cache", "team_cache_reset_after", "team_cache_allow_plain_http")
# Preflight asks sizes the way the mount will (through the team cache) and says whether that cache stores.
PREFLIGHT_SETTINGS = ("server", "token_command", "token_timeout", "token_file", "cache_dir", "max_size", "max_age",
                      "jobs", "stall_timeout", *TEAM_SETTINGS)
CACHE_SETTINGS = ("cache_dir", "max_size", "max_age")
CHECK_EXPORT_SETTINGS = ("server", "cache_dir")  # no token, no download settings: nothing is fetched
WARM_SETTINGS = ("server", "token_command", "token_timeout", "token_file", "jobs", "bwlimit", "stall_timeout",
                 "retries", "retry_wait", "server_wait_max", *TEAM_SETTINGS)


DEFAULT, FILE, ENV, FLAG = range(4)  # the layers, lowest first


@dataclass(frozen=True)
class Resolved:
    value: Any
    layer: int
    origin: str  # "default", "config file", "env MIXVFS_X", "flag --x"


def config_path(env: Mapping[str, str] | None = None) -> Path:
    explicit = (os.environ if env is None else env).get(CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return Path(platformdirs.user_config_dir("mixvfs")) / "config.toml"


def load_config_file(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            import tomllib  # only when there is a file to read: most users have none

            data = tomllib.load(handle)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} (from ${CONFIG_ENV}) does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(SPECS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(SPECS)})")
    return data


TOKEN_REFUSAL = ("refusing --token: a token on the command line shows in `ps`; "
                 "use MIXVFS_TOKEN, --token-file or --token-command")

# The help shown by `mixvfs config --help` (this module's docstring is for the code's readers).
def _example(line: str, comment: str = "") -> str:
    """A line of the example config file, its comment (if any) in the comment column."""
    return f"    {line:<38} # {comment}" if comment else f"    {line}"


_EXAMPLE = "\n".join((
    _example('server = "https://music.example.com"', 'for manifests without a "server" (the manifest\'s own wins)'),
    _example('token_command = "pass show mixboard"', 'or token_file = "~/.config/mixvfs/token"'),
    _example(f'token_timeout = "{_seconds(defaults.TOKEN_COMMAND_TIMEOUT)}"'),
    _example('cache_dir = "~/.cache/mixvfs"'),
    _example('max_size = "20G"'),
    _example(f'max_age = "{_seconds(defaults.MAX_AGE)}"'),
    _example(f"jobs = {defaults.JOBS}", "the most at once; how many run is measured"),
    _example('bwlimit = "off"', 'or e.g. "4M": all downloads together, bytes per second'),
    _example(f'stall_timeout = "{_seconds(defaults.STALL_TIMEOUT)}"'),
    _example(f'failed_for = "{_seconds(defaults.FAILED_FOR)}"',
             "a failed track answers EIO at once this long, then is tried again"),
    _example(f'server_wait_max = "{_seconds(defaults.SERVER_WAIT_MAX)}"',
             "a server asking to wait longer (Retry-After) fails the track"),
    _example(f"retries = {defaults.RETRIES}"),
    _example(f'retry_wait = "{_seconds(defaults.RETRY_WAIT)}"'),
    _example('team_cache = "https://cache1.studio.lan:8443|https://cache2.studio.lan:8443;https://cache3.studio.lan:8443"'),
    _example(f'team_cache_reset_after = "{_seconds(defaults.TEAM_CACHE_RESET_AFTER)}"'),
    _example("team_cache_allow_plain_http = false", "true only on a trusted network: the token travels in clear text"),
    _example(f'request_timeout = "{defaults.REQUEST_TIMEOUT}"', 'or "off", or a duration such as "90s"'),
    _example(f'passthrough = "{defaults.PASSTHROUGH}"', 'or "off"'),
))

# The help shown by `mixvfs config --help` (this module's docstring is for the code's readers); the example's
# values that are defaults are formatted from them.
HELP = f"""Each effective setting, its value and where it came from. Settings come in layers: built-in
default < config file < environment variable < command-line flag.

The config file is TOML, at $MIXVFS_CONFIG if set, else config.toml in the user config folder
(~/.config/mixvfs on Linux, ~/Library/Application Support/mixvfs on macOS). Every key is optional;
an unknown key is an error (a typo is never ignored silently):

{_EXAMPLE}

The token itself is only ever taken from MIXVFS_TOKEN, a token file or a token command, never from the
config file or a flag (it would show in the process list or sit in a file meant for settings)."""


def add_flags(parser: argparse.ArgumentParser, names: Iterable[str], *, default: Any = None) -> None:
    """Add ``--<setting>`` flags. Their argparse default is None: "not given", so lower layers show through.
    ``default=argparse.SUPPRESS`` for a subcommand repeating its parent's flags: a flag not given after the
    subcommand then leaves the parent's value alone instead of overwriting it with None.

    Commands taking a token setting also get a hidden ``--token``, only to refuse it (see :func:`resolve`):
    without it, argparse would answer "unrecognized arguments", which does not say what to do instead."""
    names = list(names)
    for name in names:
        spec = SPECS[name]
        parser.add_argument(spec.flag, dest=name, default=default, metavar=name.split("_")[-1].upper(),
                            help=f"{spec.described}; env {spec.env}")
    if "token_command" in names:
        parser.add_argument("--token", default=default, help=argparse.SUPPRESS)


class Setting(Generic[T]):
    """A resolved setting read as an attribute: ``settings.jobs`` is ``int(settings.value("jobs"))``."""

    def __init__(self, convert: Callable[[Any], T]) -> None:
        self.convert = convert
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, settings: Settings, owner: type | None = None) -> T:
        return self.convert(settings.value(self.name))


class Settings:
    """The effective settings of one command, each with where it came from."""

    def __init__(self, resolved: Mapping[str, Resolved], path: Path, file_found: bool, token: str | None) -> None:
        self.resolved = dict(resolved)
        self.path = path
        self.file_found = file_found
        self.token = token  # MIXVFS_TOKEN's value: used, never shown

    def value(self, name: str) -> Any:
        return self.resolved[name].value

    @property
    def cache_dir(self) -> Path:
        return resolve_cache_dir(self.value("cache_dir"))

    max_size = Setting(int)
    max_age = Setting(float)
    jobs = Setting(int)
    bwlimit = Setting(int)
    stall_timeout = Setting(float)
    failed_for = Setting(float)
    passthrough = Setting(str)

    @property
    def request_timeout(self) -> str | float:
        value = self.value("request_timeout")
        return value if isinstance(value, str) else float(value)

    def cache_limits(self) -> CacheLimits:
        return CacheLimits(self.cache_dir, self.max_size, self.max_age)

    def runtime(self) -> RuntimeConfig:
        """What :func:`mixvfs.vfs.runtime.open_runtime` needs; settings a command does not take keep their
        defaults."""
        from mixvfs.cache.policy import RuntimeConfig

        retries, wait = self.resolved.get("retries"), self.resolved.get("retry_wait")
        return RuntimeConfig(self.cache_limits(), self.jobs, self.stall_timeout,
                             SPECS["retries"].default if retries is None else int(retries.value),
                             SPECS["retry_wait"].default if wait is None else float(wait.value),
                             self.token_source, self.team_cache(),
                             float(self._value_or_default("team_cache_reset_after")),
                             int(self._value_or_default("bwlimit")),
                             float(self._value_or_default("server_wait_max")))

    def _value_or_default(self, name: str) -> Any:
        item = self.resolved.get(name)
        return SPECS[name].default if item is None else item.value

    def team_cache(self) -> str | None:
        """The team cache setting, refused when it would carry a token in clear text to another machine
        (unless allowed explicitly)."""
        spec = self._value_or_default("team_cache")
        if not spec:
            return None
        from mixvfs.cache.team import parse_spec, plain_http_problem

        problem = plain_http_problem(parse_spec(spec))
        has_token = any(self._value_or_default(n) for n in ("token_command", "token_file")) or bool(self.token)
        if problem and has_token and not self._value_or_default("team_cache_allow_plain_http"):
            raise ConfigError(problem)
        return str(spec)

    @property
    def server(self) -> str | None:
        value = self.resolved.get("server")
        return None if value is None else value.value

    def check_token_file(self) -> None:
        """Fail early (in the user's terminal) on a token file that does not exist."""
        file = self.resolved.get("token_file")
        if file is not None and file.value and not Path(file.value).is_file():
            raise ConfigError(f"token file {file.value} ({file.origin}): no such file")

    def token_source(self) -> TokenSource | None:
        """The highest layer that names a token wins; within a layer: command, then file, then value."""
        from mixvfs.cache.token import TokenSource

        candidates: list[tuple[int, int, Callable[[], TokenSource]]] = []
        command, file = self.resolved.get("token_command"), self.resolved.get("token_file")
        if command is not None and command.value:
            timeout = self.resolved.get("token_timeout")
            seconds = defaults.TOKEN_COMMAND_TIMEOUT if timeout is None else float(timeout.value)
            candidates.append((command.layer, 2, lambda: TokenSource(command=command.value, timeout=seconds)))
        if file is not None and file.value:
            self.check_token_file()
            path: Path = file.value
            candidates.append((file.layer, 1, lambda: TokenSource(file=path)))
        token = self.token
        if token:
            candidates.append((ENV, 0, lambda: TokenSource(value=token)))
        if not candidates:
            return None
        return max(candidates, key=lambda c: (c[0], c[1]))[2]()

    def rows(self) -> list[dict[str, str]]:
        """For ``mixvfs config``: name, shown value, origin."""
        rows = []
        for name, item in self.resolved.items():
            spec = SPECS[name]
            shown = "-" if item.value is None else spec.show(item.value)
            if name == "cache_dir":
                shown = str(self.cache_dir)  # the default is the platform's folder: show which
            rows.append({"name": name, "value": shown, "origin": item.origin})
        rows.append(self._token_row())
        return rows

    def _token_row(self) -> dict[str, str]:
        """Where the token comes from, by the precedence of :meth:`token_source`; never the token itself."""
        candidates: list[tuple[int, int, str, str]] = []
        command, file = self.resolved.get("token_command"), self.resolved.get("token_file")
        if command is not None and command.value:
            candidates.append((command.layer, 2, "from token_command", command.origin))
        if file is not None and file.value:
            candidates.append((file.layer, 1, f"from token_file {file.value}", file.origin))
        if self.token:
            candidates.append((ENV, 0, f"from {TOKEN_ENV} (hidden)", f"env {TOKEN_ENV}"))
        if not candidates:
            return {"name": "token", "value": "none (requests carry no token)", "origin": "default"}
        _, _, value, origin = max(candidates, key=lambda c: (c[0], c[1]))
        return {"name": "token", "value": value, "origin": origin}


def refuse_token_flag(argv: Iterable[str]) -> None:
    """``--token VALUE`` anywhere on any command: refused before argparse, which would echo the value back
    in its "unrecognized arguments" line."""
    if any(arg == "--token" or arg.startswith("--token=") for arg in argv):
        raise ConfigError(TOKEN_REFUSAL)


def resolve(args: argparse.Namespace | None, names: Iterable[str] = MOUNT_SETTINGS,
            env: Mapping[str, str] | None = None) -> Settings:
    if getattr(args, "token", None) is not None:
        raise ConfigError(TOKEN_REFUSAL)
    env = os.environ if env is None else env
    path = config_path(env)
    file_values = load_config_file(path, required=bool(env.get(CONFIG_ENV)))
    resolved: dict[str, Resolved] = {}
    for name in names:
        spec = SPECS[name]
        item = Resolved(spec.default, DEFAULT, "default")
        if name in file_values:
            item = Resolved(_parse_file_value(spec, file_values[name], path), FILE, "config file")
        if env.get(spec.env):
            item = Resolved(_parse(spec, env[spec.env], f"env {spec.env}"), ENV, f"env {spec.env}")
        flag_value = getattr(args, name, None) if args is not None else None
        if flag_value is not None:
            item = Resolved(_parse(spec, str(flag_value), spec.flag), FLAG, f"flag {spec.flag}")
        resolved[name] = item
    return Settings(resolved, path, path.is_file(), env.get(TOKEN_ENV) or None)


def _parse(spec: Spec, text: str, where: str) -> Any:
    try:
        return spec.parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _parse_file_value(spec: Spec, value: Any, path: Path) -> Any:
    # TOML gives numbers as numbers: a bare number is bytes / seconds / jobs, like on the command line.
    if spec.parse is _bool and isinstance(value, bool):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"config file {path}: {spec.name} must be a string or a number")
    return _parse(spec, str(value), f"config file {path}: {spec.name}")


def format_rows(settings: Settings) -> str:
    state = "" if settings.file_found else " (not found: defaults apply)"
    rows = settings.rows()
    # Columns as wide as their longest entry (team_cache_allow_plain_http), the value last: a long one (a cache
    # path, a token command) then runs on to the right alone, instead of widening every row to its length.
    name_width = max(len("SETTING"), *(len(str(r["name"])) for r in rows))
    origin_width = max(len("FROM"), *(len(str(r["origin"])) for r in rows))
    lines = [f"config file: {settings.path}{state}", f"{'SETTING':<{name_width}}  {'FROM':<{origin_width}}  VALUE"]
    lines += [f"{r['name']:<{name_width}}  {r['origin']:<{origin_width}}  {r['value']}" for r in rows]
    return "\n".join(lines)
