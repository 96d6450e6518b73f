"""Human sizes ("10G", "512MiB") and durations ("30d", "1h30m") for flags and config."""

from __future__ import annotations

import re

from mixvfs.cache.errors import ConfigError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


MAX_SIZE = (1 << 63) - 1


def parse_size(text: str) -> int:
    """``"10G"`` -> 10 GiB. Plain numbers are bytes; single letters are binary (like ``du``)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(f"not a size: {text!r} (examples: 500M, 10G, 1048576)")
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size > MAX_SIZE:  # SQLite (diskcache's settings and sizes) holds 64-bit integers
        raise ConfigError(f"too large a size: {text!r} (at most {MAX_SIZE >> 60} EiB)")
    return size


def parse_duration(text: str) -> float:
    """``"30d"`` -> seconds. Parts add up: ``"1h30m"``. A plain number is seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", text)
    rebuilt = "".join(n + u for n, u in parts)
    if not parts or rebuilt != re.sub(r"\s+", "", text) or any(u.lower() not in _DURATION_UNITS for _, u in parts):
        raise ConfigError(f"not a duration: {text!r} (examples: 30s, 10m, 12h, 30d)")
    return sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)


def format_size(size: int | float) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(value) < 1024 or unit == "EiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} EiB"
