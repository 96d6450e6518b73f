"""Settings layers: default < config file < env < flag, and `mixvfs config` saying where each came from."""

from __future__ import annotations

import argparse
import json
import os
import re

import pytest

from mixvfs.cache.errors import ConfigError
from mixvfs.vfs.commands import config
from tests.conftest import MIXVFS, REPO, run


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_flags(parser, config.MOUNT_SETTINGS)
    return parser.parse_args(list(flags))


def test_each_layer_overrides_the_one_below(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('jobs = 2\nmax_size = "5G"\nstall_timeout = "10s"\nserver = "http://file.example"\n')
    env = {"MIXVFS_CONFIG": str(path), "MIXVFS_JOBS": "4", "MIXVFS_STALL_TIMEOUT": "20s"}
    settings = config.resolve(parse("--stall-timeout", "5s"), env=env)
    assert (settings.jobs, settings.resolved["jobs"].origin) == (4, "env MIXVFS_JOBS")
    assert (settings.max_size, settings.resolved["max_size"].origin) == (5 << 30, "config file")
    assert (settings.stall_timeout, settings.resolved["stall_timeout"].origin) == (5.0, "flag --stall-timeout")
    assert (settings.failed_for, settings.resolved["failed_for"].origin) == (60.0, "default")
    assert settings.server == "http://file.example"


def test_cache_dir_from_config_file_is_expanded(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f'cache_dir = "{tmp_path}/cache"\nmax_age = 3600\n')
    settings = config.resolve(None, config.CACHE_SETTINGS, env={"MIXVFS_CONFIG": str(path)})
    assert settings.cache_dir == tmp_path / "cache"
    assert settings.max_age == 3600.0


@pytest.mark.parametrize(("text", "message"), [
    ("jobs = 3\nbogus = 1\n", "unknown key(s) bogus"),
    ("jobs = [\n", "not valid TOML"),
    ("jobs = 0\n", "jobs: must be between 1 and 64"),
    ('max_size = "lots"\n', "max_size: not a size"),
])
def test_bad_config_file_names_the_problem(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.resolve(None, env={"MIXVFS_CONFIG": str(path)})
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_explicit_config_path_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.resolve(None, env={"MIXVFS_CONFIG": str(tmp_path / "none.toml")})


def test_bad_env_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="env MIXVFS_MAX_AGE: not a duration"):
        config.resolve(None, env={"MIXVFS_CONFIG": "", "MIXVFS_MAX_AGE": "soon"})


def token(settings: config.Settings) -> str | None:
    source = settings.token_source()
    assert source is not None
    return source.current()[0]


def test_token_from_the_highest_layer(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    path = tmp_path / "c.toml"
    path.write_text('token_command = "echo from-command"\n')
    env = {"MIXVFS_CONFIG": str(path), "MIXVFS_TOKEN": "from-env"}
    assert token(config.resolve(None, env=env)) == "from-env"  # env beats config
    env["MIXVFS_TOKEN_FILE"] = str(token_file)  # same layer as MIXVFS_TOKEN: a file beats a value
    assert token(config.resolve(None, env=env)) == "from-file"
    flags = parse("--token-command", "echo from-flag")
    assert token(config.resolve(flags, env=env)) == "from-flag"
    assert token(config.resolve(None, env={"MIXVFS_CONFIG": str(path)})) == "from-command"
    assert config.resolve(None, env={"MIXVFS_CONFIG": ""}).token_source() is None


def test_mixvfs_config_shows_value_and_origin(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('jobs = 2\nmax_age = "7d"\n')
    env = {**os.environ, "MIXVFS_CONFIG": str(path), "MIXVFS_CACHE_DIR": str(tmp_path / "cache"),
           "MIXVFS_TOKEN": "secret-value"}
    env.pop("MIXVFS_JOBS", None)
    done = run([MIXVFS, "config", "--max-size", "2G", "--json"], env=env, check=True)
    doc = json.loads(done.stdout)
    rows = {r["name"]: (r["value"], r["origin"]) for r in doc["settings"]}
    assert doc["config_file"] == str(path) and doc["config_file_found"] is True
    assert rows["jobs"] == ("2", "config file")
    assert rows["max_age"] == ("7d", "config file")
    assert rows["max_size"] == ("2.0 GiB", "flag --max-size")
    assert rows["cache_dir"] == (str(tmp_path / "cache"), "env MIXVFS_CACHE_DIR")
    assert rows["failed_for"] == ("1m", "default")
    assert rows["server_wait_max"] == ("2m", "default")
    assert rows["token"] == ("from MIXVFS_TOKEN (hidden)", "env MIXVFS_TOKEN")
    text = run([MIXVFS, "config"], env=env, check=True).stdout
    assert "secret-value" not in text and "secret-value" not in done.stdout
    assert text.splitlines()[0] == f"config file: {path}"
    assert any(line.split() == ["jobs", "config", "file", "2"] for line in text.splitlines())
    # The columns line up, the longest name (team_cache_allow_plain_http) included, the value last (a long path
    # runs on alone); the columns are two spaces apart at the least (an origin or a value may hold one).
    header, *table = text.splitlines()[1:]
    for line in table:
        columns = re.fullmatch(r"(\S+) {2,}(\S.*?) {2,}(\S.*)", line)
        assert columns is not None, line
        assert (columns.start(2), columns.start(3)) == (header.index("FROM"), header.index("VALUE")), line


def test_mixvfs_config_shows_where_the_token_comes_from_never_the_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-secret\n")
    path = tmp_path / "c.toml"
    path.write_text(f'token_file = "{token_file}"\n')
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIXVFS_")}
    base["MIXVFS_CACHE_DIR"] = str(tmp_path / "cache")

    def token_row(env: dict[str, str], *flags: str) -> tuple[str, str]:
        done = run([MIXVFS, "config", "--json", *flags], env={**base, **env}, check=True)
        text = run([MIXVFS, "config", *flags], env={**base, **env}, check=True).stdout
        for secret in ("file-secret", "env-secret", "cmd-secret"):
            assert secret not in done.stdout and secret not in text
        rows = {r["name"]: (r["value"], r["origin"]) for r in json.loads(done.stdout)["settings"]}
        last = text.splitlines()[-1]
        assert last.split()[0] == "token" and last.endswith(f"  {rows['token'][0]}")
        return rows["token"]

    assert token_row({"MIXVFS_CONFIG": str(path)}) == (f"from token_file {token_file}", "config file")
    assert token_row({"MIXVFS_CONFIG": ""}) == ("none (requests carry no token)", "default")
    # The same precedence as the token actually used: env over the config file; a file over a value.
    env = {"MIXVFS_CONFIG": str(path), "MIXVFS_TOKEN": "env-secret"}
    assert token_row(env) == ("from MIXVFS_TOKEN (hidden)", "env MIXVFS_TOKEN")
    assert token_row({**env, "MIXVFS_TOKEN_FILE": str(token_file)}) == (
        f"from token_file {token_file}", "env MIXVFS_TOKEN_FILE")
    assert token_row(env, "--token-command", "echo cmd-secret") == ("from token_command", "flag --token-command")


def readme_settings() -> dict[str, str]:
    """README's settings table: key -> its default column."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("### Configuration", 1)[1].split("\n\n| key ", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|") for line in table.splitlines()[2:] if line.startswith("| `")]
    return {row[1].strip().strip("`"): row[4].strip() for row in rows}


def test_the_readme_settings_table_has_a_row_for_every_setting():
    assert set(readme_settings()) == set(config.SPECS)


def test_the_readme_settings_table_gives_the_defaults_the_code_uses():
    for name, column in readme_settings().items():
        spec = config.SPECS[name]
        shown = column.split()[0].rstrip(":,")  # the value; the rest of the column explains it
        if spec.default is None:
            assert shown in ("none", "the"), (name, column)  # "none", "the user cache folder"
        else:
            assert spec.parse(shown) == spec.default, (name, column)


def test_mixvfs_config_rejects_a_bad_file_with_exit_2(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("jobs = 'many'\n")
    done = run([MIXVFS, "config"], env={**os.environ, "MIXVFS_CONFIG": str(path)})
    assert done.returncode == 2
    assert "jobs: not a whole number: 'many'" in done.stderr




@pytest.mark.parametrize(("file", "env", "flag", "expected"), [
    (None, None, None, 0),  # no cap by default
    ('bwlimit = "8M"\n', None, None, 8 << 20),
    ('bwlimit = "8M"\n', "500k", None, 500 << 10),
    (None, "4M", "10M/s", 10 << 20),  # like rclone's --bwlimit: bytes per second, an optional "/s"
    ("bwlimit = 1000000\n", None, None, 1_000_000),  # a bare TOML number is bytes per second
    ('bwlimit = "4M"\n', None, "off", 0),
])
def test_bwlimit_layers(tmp_path, file, env, flag, expected):
    environ = {}
    if file is not None:
        (tmp_path / "c.toml").write_text(file)
        environ["MIXVFS_CONFIG"] = str(tmp_path / "c.toml")
    if env is not None:
        environ["MIXVFS_BWLIMIT"] = env
    settings = config.resolve(parse(*(["--bwlimit", flag] if flag else [])), env=environ)
    assert settings.bwlimit == expected
    assert settings.runtime().bwlimit == expected


def test_a_bad_bwlimit_is_one_clear_error():
    with pytest.raises(ConfigError, match="bwlimit: not a size: 'fast'"):
        config.resolve(parse("--bwlimit", "fast"), env={})
