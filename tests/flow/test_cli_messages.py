"""What a new user meets first: versions, help texts, one-line refusals, and the messages around a mount's
end (busy unmount, the report after the unmount), all through the real commands and real mounts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mixvfs
from mixvfs.vfs.commands import cachectl, cli
from tests.conftest import CACHECTL, MIXVFS, run, wait_until, write_session
from tests.faults.helpers import holds_open

MIXVFS_COMMANDS = ("mount", "unmount", "report", "preflight", "status", "check-export", "config", "team-cache")
NESTED_COMMANDS = ("team-cache nginx-config",)
CACHECTL_COMMANDS = ("stats", "ls", "verify", "prune", "warm", "pin", "unpin")
MARKUP = ("``", ":class:", ":func:", ":mod:", ":data:", ":meth:")


def one_line(text: str) -> str:
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    return text.rstrip("\n")


# -- 1. read-only cachectl commands on a folder that is not a cache --------------------------------------


@pytest.mark.parametrize("command", ["stats", "ls", "verify", "prune"])
def test_read_only_cachectl_commands_on_no_cache_say_so_and_create_nothing(tmp_path, command):
    mistyped = tmp_path / "mistyped" / "cache"
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, before in ((mistyped, True), (mistyped, False), (empty, True)):
        flags = ["--cache-dir", str(folder)]
        argv = [CACHECTL, *flags, command] if before else [CACHECTL, command, *flags]
        done = run(argv)
        assert done.returncode == 2, done
        assert one_line(done.stderr) == f"cachectl: no cache at {folder}"
        assert done.stdout == ""
    assert not (tmp_path / "mistyped").exists()
    assert list(empty.iterdir()) == []


def test_warm_creates_the_cache_and_the_read_only_commands_then_find_it(tmp_path):
    cache = tmp_path / "new" / "cache"
    session = write_session(tmp_path / "s.json", [])
    run([CACHECTL, "warm", str(session), "--cache-dir", str(cache)], check=True)
    stats = json.loads(run([CACHECTL, "stats", "--json", "--cache-dir", str(cache)], check=True).stdout)
    assert stats["cache_dir"] == str(cache) and stats["blobs"] == 0


# -- 2. --version -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("program", "name"), [(MIXVFS, "mixvfs"), (CACHECTL, "cachectl")])
def test_version(program, name):
    done = run([program, "--version"], check=True)
    assert done.stdout == f"{name} {mixvfs.__version__}\n"
    assert mixvfs.__version__ != "0+unknown"  # installed: the version comes from the package metadata


# -- 3. cachectl's cache options on either side of the command -------------------------------------------


def test_cachectl_cache_options_before_or_after_the_command(tmp_path):
    cache = tmp_path / "cache"
    run([CACHECTL, "warm", str(write_session(tmp_path / "s.json", [])), "--cache-dir", str(cache)], check=True)
    for argv in (["--cache-dir", str(cache), "--max-size", "2M", "stats", "--json"],
                 ["stats", "--json", "--cache-dir", str(cache), "--max-size", "2M"],
                 ["--cache-dir", str(cache), "stats", "--max-size", "2M", "--json"],
                 ["--max-size", "2M", "stats", "--max-age", "1d", "--cache-dir", str(cache), "--json"]):
        stats = json.loads(run([CACHECTL, *argv], check=True).stdout)
        assert (stats["cache_dir"], stats["max_size"]) == (str(cache), 2 << 20), argv
    both = json.loads(run([CACHECTL, "--max-age", "2d", "stats", "--max-age", "1d", "--cache-dir", str(cache),
                           "--json"], check=True).stdout)
    assert both["max_age"] == 86400  # given on both sides: the later one, as on any command line


@pytest.mark.parametrize("command", CACHECTL_COMMANDS)
def test_every_cachectl_command_lists_the_cache_options(command):
    text = run([CACHECTL, command, "--help"], check=True).stdout
    for flag in ("--cache-dir", "--max-size", "--max-age"):
        assert flag in text, (command, flag)


# -- 4. --token refused everywhere; no abbreviations -------------------------------------------------------


def test_token_on_the_command_line_is_refused_by_every_command_taking_token_settings(tmp_path):
    session = str(write_session(tmp_path / "s.json", []))
    (tmp_path / "mnt").mkdir()
    for argv in ([MIXVFS, "mount", session, str(tmp_path / "mnt")], [MIXVFS, "preflight", session],
                 [MIXVFS, "config"], [CACHECTL, "warm", session], [CACHECTL, "pin", session]):
        for token in (["--token", "sekrit"], ["--token=sekrit"]):
            done = run([*argv, *token, "--cache-dir", str(tmp_path / "cache")])
            assert done.returncode == 2, (argv, done)
            line = one_line(done.stderr)
            assert "refusing --token" in line and "MIXVFS_TOKEN, --token-file or --token-command" in line, line
            assert "sekrit" not in done.stderr + done.stdout
    assert not os.path.ismount(tmp_path / "mnt")


def test_abbreviated_flags_are_not_accepted(tmp_path):
    session = str(write_session(tmp_path / "s.json", []))
    for argv in ([MIXVFS, "preflight", session, "--tok", "x"], [MIXVFS, "config", "--cache", str(tmp_path)],
                 [CACHECTL, "stats", "--cache", str(tmp_path)], [CACHECTL, "warm", session, "--token-f", "x"]):
        done = run(argv)
        assert done.returncode == 2 and "unrecognized arguments" in done.stderr, (argv, done.stderr)


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += all_parsers(sub)
    return found


def test_every_parser_turns_abbreviations_off():
    parsers = all_parsers(cli.build_parser()) + all_parsers(cachectl.build_parser())
    assert len(parsers) == 2 + len(MIXVFS_COMMANDS) + len(NESTED_COMMANDS) + len(CACHECTL_COMMANDS)
    assert [p.prog for p in parsers if p.allow_abbrev] == []


# -- 9. help texts ---------------------------------------------------------------------------------------


def help_of(*argv: str) -> str:
    return run([*argv, "--help"], check=True).stdout


@pytest.mark.parametrize("argv", [(MIXVFS,), *((MIXVFS, c) for c in MIXVFS_COMMANDS), (CACHECTL,),
                                  *((CACHECTL, c) for c in CACHECTL_COMMANDS)],
                         ids=lambda argv: " ".join(Path(a).name for a in argv))
def test_help_is_plain_text_with_a_description_and_examples(argv):
    text = help_of(*argv)
    for markup in MARKUP:
        assert markup not in text, (argv, markup)
    assert "mixvfs.vfs." not in text and "mixvfs.cache." not in text  # no module paths
    usage, description = text.split("\n\n")[:2]
    assert usage.startswith("usage:") and len(description.split()) >= 10, (argv, description)
    if len(argv) == 2 or argv[0] == CACHECTL:
        examples = text.split("\nexamples:\n")[1].splitlines()
        assert examples and all(f"{Path(argv[0]).name} " in line for line in examples if line.strip()), examples


def test_every_json_flag_has_help():
    for parser in all_parsers(cli.build_parser()) + all_parsers(cachectl.build_parser()):
        for action in parser._actions:
            if "--json" in action.option_strings:
                assert action.help and action.help != argparse.SUPPRESS, parser.prog


# -- 10. a relative cloud_stream_path without a server ----------------------------------------------------


def test_relative_stream_path_without_a_server_names_every_way_to_give_one(tmp_path):
    session = str(write_session(tmp_path / "s.json", [{"id": "a", "title": "A", "cloud_stream_path": "/a.wav"}]))
    (tmp_path / "mnt").mkdir()
    env = {**os.environ, "MIXVFS_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("")
    for argv in ([MIXVFS, "preflight", session], [MIXVFS, "mount", session, str(tmp_path / "mnt")],
                 [CACHECTL, "warm", session]):
        done = run([*argv, "--cache-dir", str(tmp_path / "cache")], env=env)
        assert done.returncode == 2, (argv, done)
        line = one_line(done.stderr)
        assert "track 0 (id 'a'): field 'cloud_stream_path' is a relative path" in line
        for way in ("--server", "MIXVFS_SERVER", "`server` in the config file"):
            assert way in line, (way, line)


# -- issue 24 item 5: a misspelt manifest key, a JSON syntax error ------------------------------------------


def test_a_misspelt_track_key_is_a_manifest_error_for_every_command(tmp_path):
    session = str(write_session(tmp_path / "s.json", [{"id": "a", "title": "A", "cloud_stream_pth": "/a.wav"}],
                                server="http://127.0.0.1:9"))
    (tmp_path / "mnt").mkdir()
    for argv in ([MIXVFS, "preflight", session], [MIXVFS, "mount", session, str(tmp_path / "mnt")],
                 [CACHECTL, "warm", session]):
        done = run([*argv, "--cache-dir", str(tmp_path / "cache")])
        assert done.returncode == 2, (argv, done)
        line = one_line(done.stderr)
        assert ("track 0 (id 'a'): unknown field 'cloud_stream_pth' (did you mean 'cloud_stream_path'?)"
                in line), line
    assert list((tmp_path / "mnt").iterdir()) == []


def test_a_json_syntax_error_is_one_line_with_its_place_once_and_the_line(tmp_path):
    session = tmp_path / "s.json"
    session.write_text('{"tracks": [\n  {"id": "a", "title": "A" "file_path": "a.wav"}\n]}\n')
    done = run([MIXVFS, "preflight", str(session), "--cache-dir", str(tmp_path / "cache")])
    assert done.returncode == 2, done
    assert one_line(done.stderr) == (
        f"mixvfs: {session}: not valid JSON at line 2 column 28: Expecting ',' delimiter; "
        """the line reads '  {"id": "a", "title": "A" "file_path": "a.wav"}'""")


# -- 6, 7, 8. the end of a mount -------------------------------------------------------------------------


def local_session(tmp_path: Path) -> Path:
    track = tmp_path / "a.wav"
    track.write_bytes(b"RIFF" + b"\0" * 4000)
    return write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "Song",
                                                "file_path": str(track)}])


def test_busy_unmount_exits_1_and_says_what_to_do(tmp_path, mounter):
    mount = mounter(local_session(tmp_path))
    file = mount.path / "A - Song.wav"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; f = open(sys.argv[1], 'rb'); sys.stdin.read()",
                               str(file)], stdin=subprocess.PIPE)
    try:
        assert wait_until(lambda: holds_open(holder.pid, file), timeout=30)
        busy = run([MIXVFS, "unmount", str(mount.path)])
        assert busy.returncode == 1, busy
        line = one_line(busy.stderr)
        assert line.startswith(f"mixvfs: cannot unmount {mount.path}: it is in use. Close the program reading it")
        assert f"`fuser -vm {mount.path}` or `lsof +f -- {mount.path}` shows which" in line
        assert "Device or resource busy" not in line and busy.stdout == ""
        assert os.path.ismount(mount.path)
    finally:
        holder.communicate(timeout=30)  # stdin closes: the holder exits, closing the file
    done = run([MIXVFS, "unmount", str(mount.path)], check=True)
    mount.mounted = False
    assert done.stdout == f"unmounted {mount.path} (report: {mount.report_path})\n1 track whole (local or cached)\n"
    assert not os.path.ismount(mount.path)


def test_after_the_unmount_report_and_status_find_the_last_report(tmp_path, mounter):
    mount = mounter(local_session(tmp_path))
    run(["cp", str(mount.path / "A - Song.wav"), str(tmp_path / "out.wav")], check=True)
    done = run([MIXVFS, "unmount", str(mount.path)], check=True)
    mount.mounted = False
    assert done.stdout == f"unmounted {mount.path} (report: {mount.report_path})\n1 track whole (local or cached)\n"

    table = run([MIXVFS, "report", str(mount.path)])
    assert table.returncode == 0, table
    assert "A - Song.wav" in table.stdout and "local" in table.stdout
    assert one_line(table.stderr) == (f"mixvfs: {mount.path} is not mounted now; the report of its last mount: "
                                      f"{mount.report_path}")
    as_json = run([MIXVFS, "report", str(mount.path), "--json"], check=True)
    assert json.loads(as_json.stdout)["mountpoint"] == str(mount.path)  # stdout stays pure JSON

    relative = run([MIXVFS, "report", mount.path.name], cwd=tmp_path, check=True)  # the same folder, spelt otherwise
    assert "A - Song.wav" in relative.stdout

    status = run([MIXVFS, "status", str(mount.path)])
    assert status.returncode == 2 and status.stdout == ""
    line = one_line(status.stderr)
    assert f"{mount.path} is not mounted now; the report of its last mount" in line
    assert f"is {mount.report_path} (mixvfs report {mount.report_path})" in line

    again = run([MIXVFS, "unmount", str(mount.path)])
    assert again.returncode == 2 and f"{mount.path} is not mounted now" in one_line(again.stderr)


def test_status_and_report_of_a_folder_never_mounted(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for command in ("status", "report"):
        done = run([MIXVFS, command, str(folder)])
        assert done.returncode == 2
        assert one_line(done.stderr) == (f"mixvfs: nothing is mounted at {folder} "
                                         "(and no earlier mixvfs mount there is known)")


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`mixvfs config | head -1`: the pipe closes under a command still writing."""
    # head -c0 closes the pipe at once, before the command has written anything.
    done = subprocess.run(f"'{MIXVFS}' config | head -c0; '{CACHECTL}' --help | head -c0", shell=True,
                          capture_output=True, text=True, timeout=60)
    assert done.stderr == ""


def test_token_anywhere_is_refused_without_echoing_it(tmp_path):
    for cmd in ([MIXVFS, "status", str(tmp_path), "--token", "s3cret"], [MIXVFS, "report", "--token=s3cret", "x"],
                [CACHECTL, "stats", "--token", "s3cret"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "refusing --token" in done.stderr and "s3cret" not in done.stderr


def test_a_path_the_system_refuses_is_one_line(tmp_path):
    long = tmp_path / ("x" * 300)
    for cmd in ([MIXVFS, "report", str(long)], [CACHECTL, "--cache-dir", str(long), "stats"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


# -- no usable libfuse (macFUSE not installed or not allowed, fuse3 missing) -----------------------------------


def test_no_libfuse_is_one_line_naming_what_to_install_for_mount_and_preflight(tmp_path):
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "B",
                                                     "file_path": str(tmp_path / "s.json")}])
    (tmp_path / "mnt").mkdir()
    env = {**os.environ, "FUSE_LIBRARY_PATH": str(tmp_path / "no-libfuse.so")}
    mounted = run([MIXVFS, "mount", str(session), str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c")], env=env)
    assert mounted.returncode == 2 and "Traceback" not in mounted.stderr
    line = one_line(mounted.stderr)
    assert "no usable libfuse" in line and "sudo apt install fuse3" in line
    checked = run([MIXVFS, "preflight", str(session), "--cache-dir", str(tmp_path / "c")], env=env)
    assert checked.returncode == 3 and "Traceback" not in checked.stderr
    problems = [line for line in checked.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and "cannot mount" in problems[0] and "sudo apt install fuse3" in problems[0]
    as_json = json.loads(run([MIXVFS, "preflight", str(session), "--cache-dir", str(tmp_path / "c"), "--json"],
                             env=env).stdout)
    assert as_json["verdict"] == "will_fail" and "no usable libfuse" in as_json["fuse"]
