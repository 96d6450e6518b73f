"""The examples in contrib/ stay usable: each platform's config loads (every key known, every value parsed)
and names only its own platform's folders and token tools."""

from __future__ import annotations

import plistlib
import tomllib

import pytest

from mixvfs.vfs.commands import config
from tests.conftest import REPO

CONTRIB = REPO / "contrib"
# What only one platform has: a config for the other one must not name it.
MACOS_ONLY = ("~/Library", "security ")
LINUX_ONLY = ("~/.config", "~/.cache", "secret-tool")


@pytest.mark.parametrize("name", ["config-linux.toml", "config-macos.toml"])
def test_each_example_config_loads_with_every_value_from_the_file(name):
    path = CONTRIB / name
    settings = config.resolve(None, tuple(config.SPECS), env={"MIXVFS_CONFIG": str(path)})
    keys = tomllib.loads(path.read_text())
    assert keys, f"{name} sets nothing"
    assert {key: settings.resolved[key].origin for key in keys} == dict.fromkeys(keys, "config file")


@pytest.mark.parametrize(("name", "foreign"), [("config-linux.toml", MACOS_ONLY), ("config-macos.toml", LINUX_ONLY)])
def test_each_example_config_names_only_its_own_platform(name, foreign):
    text = (CONTRIB / name).read_text()
    assert [word for word in foreign if word in text] == []


@pytest.mark.parametrize("name", ["config-linux.toml", "config-macos.toml"])
def test_each_example_config_sets_no_placeholder_server(name):
    """A copied example must not send a user's requests (and token) to a made-up host: the server is
    commented out, so a manifest without one fails clearly, naming every way to give it."""
    keys = tomllib.loads((CONTRIB / name).read_text())
    assert "server" not in keys
    assert [value for value in keys.values() if "example." in str(value)] == []


def test_the_launchd_agent_is_a_valid_plist_running_a_foreground_mount():
    with (CONTRIB / "com.mixboard.mixvfs.plist").open("rb") as handle:
        agent = plistlib.load(handle)
    program, command, *_, last = agent["ProgramArguments"]
    assert (program.endswith("/.local/bin/mixvfs"), command, last) == (True, "mount", "--foreground")
