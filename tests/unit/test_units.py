from __future__ import annotations

import pytest

from mixvfs.cache.errors import ConfigError
from mixvfs.cache.units import format_size, parse_duration, parse_size


@pytest.mark.parametrize(("text", "value"), [("10G", 10 << 30), ("512MiB", 512 << 20), ("1000", 1000),
                                             ("2kb", 2000), ("1.5M", 3 << 19)])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("30d", 30 * 86400), ("1h30m", 5400), ("45", 45), ("250ms", 0.25),
                                             ("2w", 14 * 86400)])
def test_durations(text, value):
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "ten", "10X", "-5", "1h 30x"])
def test_bad_values_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_size(text)
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_format_size():
    assert format_size(1000) == "1000 B"
    assert format_size(3 << 20) == "3.0 MiB"
    assert format_size(5 << 40) == "5.0 TiB"  # not "5120.0 GiB"


def test_a_size_beyond_64_bits_is_refused():
    """diskcache keeps sizes and its limit in SQLite, whose integers are 64-bit: 1e26 bytes was accepted
    and shown as "100000000000000004764729344.0 GiB"."""
    assert parse_size("7000000T") == 7000000 << 40
    with pytest.raises(ConfigError, match="too large"):
        parse_size("100000000000000000000000000G")
