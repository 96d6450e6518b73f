"""Setting up from a fresh clone: each make target asks apt for its own packages only, the editable install
prints no setuptools box, and a .venv made by another user is named with what to do, before anything runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, missing_part, run

DEMO = {"python3", "python3-venv", "fuse3", "libfuse3-3", "attr"}
TESTS_ONLY = {"libfuse2", "rsync", "flac", "nginx-light", "exfatprogs", "exfat-fuse", "faketime", "iproute2"}


def fake_apt(tmp_path: Path) -> tuple[Path, Path]:
    """dpkg says nothing is installed; apt-get records what it is asked for (a real apt cannot be asked to
    forget packages this machine has)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "asked"
    (bin_dir / "dpkg").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\n[ "$1" = install ] && echo "$@" >> {asked}\nexit 0\n')
    for tool in ("dpkg", "apt-get"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir, asked


@pytest.mark.parametrize("target", ["demo", "test"])
def test_each_make_target_asks_apt_for_its_own_packages(tmp_path, target):
    if os.geteuid() != 0:
        missing_part("the package script runs apt without sudo only as root", "CI runs as root")
    bin_dir, asked = fake_apt(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable}
    done = run(["make", "--no-print-directory", "-C", str(REPO), "system" if target == "demo" else "system-test"],
               env=env)
    assert done.returncode == 0, done.stderr
    packages = set(asked.read_text().split()) - {"install", "-y", "-qq"}
    assert f"installing system packages for {target}:" in done.stdout
    if target == "demo":
        assert packages == DEMO  # nginx and flac are for the tests, not the demo
    else:
        assert packages >= DEMO | TESTS_ONLY and "rclone" not in packages


def test_the_package_script_refuses_an_unknown_target():
    done = run(["bash", str(REPO / "tools" / "install_system.sh"), "everything"])
    assert done.returncode == 2 and "usage:" in done.stderr


def test_a_venv_of_another_user_is_named_with_what_to_do():
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        missing_part("making a folder another user's needs root and runuser", "CI runs as root")
    # Outside pytest's own temporary folders, which are root's alone (0700): the other user must reach it.
    checkout = Path(tempfile.mkdtemp(prefix="mixvfs-checkout-"))
    try:
        checkout.chmod(0o755)
        shutil.copy(REPO / "Makefile", checkout / "Makefile")
        (checkout / ".venv" / "bin").mkdir(parents=True)  # root's, as `sudo make demo` leaves it
        os.chown(checkout, 65534, 65534)
        done = subprocess.run(["runuser", "-u", "nobody", "--", "make", "--no-print-directory", "-C", str(checkout),
                               "venv-access"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done
        assert done.stderr.startswith(".venv belongs to root, not to nobody, who runs make: run make as that "
                                      "user, or remove it (sudo rm -rf .venv mixvfs.egg-info) and run make again "
                                      "as yourself"), done.stderr
        assert run(["make", "--no-print-directory", "-C", str(checkout), "venv-access"]).returncode == 0  # root's
    finally:
        shutil.rmtree(checkout)


def test_the_editable_install_prints_no_setuptools_box(tmp_path):
    makefile = (REPO / "Makefile").read_text()
    line = next(ln.strip() for ln in makefile.splitlines() if "pip install -q -e '.[dev]'" in ln)
    env_filter = re.match(r"PYTHONWARNINGS='([^']*)' ", line)
    assert env_filter, f"the Makefile's install line sets no warning filter: {line}"
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", ".*cache",
                                                                "__pycache__"), symlinks=True)
    # The Makefile's command, into a folder of its own (no dependencies: they are the venv's already).
    argv = [sys.executable, "-m", "pip", "install", "-q", "-e", str(source), "--no-deps", "--target",
            str(tmp_path / "target")]
    with_filter = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=source,
                                 env={**os.environ, "PYTHONWARNINGS": env_filter.group(1)})
    assert with_filter.returncode == 0, with_filter.stderr
    assert with_filter.stdout + with_filter.stderr == ""
