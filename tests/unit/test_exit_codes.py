"""The exit-code table has one source (mixvfs/vfs/commands/exit_codes.py): `mixvfs --help` prints it and
README's "Exit codes" section is it, row for row."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from mixvfs.vfs.commands import exit_codes

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def readme_table() -> str:
    section = README.split("### Exit codes\n\n", 1)[1]
    return section.split("\n\n", 1)[0]


def test_readme_exit_code_table_is_the_one_in_the_code():
    assert readme_table() == exit_codes.markdown_table()


def test_mixvfs_help_prints_every_code_with_its_whole_meaning():
    done = subprocess.run([sys.executable, "-m", "mixvfs.vfs.commands.cli", "--help"], capture_output=True,
                          text=True, check=True)
    text = " ".join(done.stdout.split())
    for code, meaning in exit_codes.TABLE:
        assert re.search(rf"\b{code} {re.escape(' '.join(meaning.replace('`', '').split()))}", text), code
