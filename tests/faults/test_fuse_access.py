"""An ordinary user who cannot mount is told why and how to fix it, not "libfuse could not mount … (4)": no
access to /dev/fuse, or fusermount3 not setuid root (missing: tests/unit/test_host.py). Run for real: the
command as the user `nobody` (setpriv), in a private mount namespace (unshare) whose /dev/fuse and fusermount3
are bind-mounted stand-ins, so the machine's own are never touched."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, missing_part, require_fuse, write_session
from tools.make_audio import write_wav

USER, GROUP = "nobody", "nogroup"
# setpriv keeps root's saved uid, so without this the "ordinary user" would still read and run anything.
AS_USER = ["setpriv", f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups",
           "--bounding-set=-dac_override,-dac_read_search"]

pytestmark = pytest.mark.fuse


def python_for_the_user() -> str:
    """A Python of this version the user can run (the venv's may live in root's home), with our packages."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        # Started by a process of the user (the mount starts its daemon with sys.executable): setpriv's own
        # exec is still root's and would pass where the user's will not.
        script = f'exec "{candidate}" -c "import sys; print(sys.version_info[:2])"'
        done = subprocess.run([*AS_USER, "/bin/sh", "-c", script], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip() == str(sys.version_info[:2]):
            return candidate
    missing_part(f"no Python {version} the user {USER} can run", "CI must run the ordinary-user FUSE tests")


def as_ordinary_user(tmp_path: Path, device_mode: int, helper_setuid: bool, command: str = "mount s.json mnt",
                     mountpoint_mode: int = 0o777) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0 or not (shutil.which("setpriv") and shutil.which("unshare")):
        missing_part("needs root, setpriv and unshare to run a mount as an ordinary user",
                     "CI must run the ordinary-user FUSE tests as root")
    helper = shutil.which("fusermount3")
    assert helper is not None
    python = python_for_the_user()
    write_wav(tmp_path / "a.wav", 0.1, 440)
    session = write_session(tmp_path / "s.json", [{"id": "a", "artist": "A", "title": "B", "file_path": "a.wav"}])
    (tmp_path / "mnt").mkdir()
    device = tmp_path / "fuse-device"
    os.mknod(device, 0o020000 | device_mode, os.makedev(10, 229))
    os.chmod(device, device_mode)
    stand_in = tmp_path / "fusermount3"
    shutil.copy(helper, stand_in)
    os.chmod(stand_in, 0o4755 if helper_setuid else 0o755)
    for folder in [tmp_path, *tmp_path.parents]:  # the user must reach the session and the mountpoint
        os.chmod(folder, os.stat(folder).st_mode | 0o005)
    for path in (tmp_path, tmp_path / "mnt", session, tmp_path / "a.wav"):
        os.chmod(path, 0o777 if path.is_dir() else 0o644)
    os.chmod(tmp_path / "mnt", mountpoint_mode)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c"),
           "XDG_STATE_HOME": str(tmp_path / "st"), "XDG_CONFIG_HOME": str(tmp_path / "cf"),
           "PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()])}
    inner = (f'mount --bind "{device}" /dev/fuse && mount --bind "{stand_in}" "{helper}" && cd "{tmp_path}" && '
             f'exec {" ".join(AS_USER)} "{python}" -m mixvfs.vfs.commands.cli {command}')
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_no_access_to_dev_fuse_is_named_with_the_fix(tmp_path):
    require_fuse()
    done = as_ordinary_user(tmp_path, 0o600, helper_setuid=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"mixvfs: cannot mount {tmp_path / 'mnt'}: no access to /dev/fuse (Permission denied: crw------- root:root); "
        "libfuse must open it to mount. Ask an administrator to let users open it: `sudo chmod 0666 /dev/fuse`, "
        "the mode Debian's and Fedora's fuse packages give it (a udev rule, KERNEL==\"fuse\", MODE=\"0666\", keeps "
        "it across reboots)")
    # libfuse refused in the daemon: nothing says a mount happened — no "unmounted" in the log, no report.
    cache = tmp_path / "c" / "mixvfs"
    log = (cache / "logs" / "mixvfs.log").read_text()
    assert "unmounted" not in log and "nothing was mounted" in log, log
    assert not (cache / "reports").exists() or list((cache / "reports").glob("*.json")) == [], log


def test_a_fusermount3_that_is_not_setuid_is_named_with_the_fix(tmp_path):
    require_fuse()
    done = as_ordinary_user(tmp_path, 0o666, helper_setuid=False)
    helper = shutil.which("fusermount3")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"mixvfs: cannot mount {tmp_path / 'mnt'}: {helper} is not setuid root (-rwxr-xr-x root:root), so it "
        f"cannot mount for a user who is not root: `sudo chown root {helper} && sudo chmod u+s {helper}`, as the "
        "fuse3 package installs it")


def test_preflight_says_the_export_will_fail_when_the_user_cannot_mount(tmp_path):
    require_fuse()
    done = as_ordinary_user(tmp_path, 0o600, helper_setuid=True, command="preflight s.json --json")
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert doc["fuse"].startswith("no access to /dev/fuse (Permission denied: crw------- root:root)")
    assert f"`mixvfs mount` cannot mount: {doc['fuse']}" in doc["problems"]


def test_a_mountpoint_the_user_cannot_write_is_named_and_nothing_says_it_was_mounted(tmp_path):
    """fusermount3 refuses a mountpoint its user has no write access to. The command says so itself (not
    "libfuse could not mount … (4); see log"), and nothing pretends a mount happened: no "unmounted" in the
    log, no report."""
    require_fuse()
    done = as_ordinary_user(tmp_path, 0o666, helper_setuid=True, mountpoint_mode=0o755)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"mixvfs: cannot mount {tmp_path / 'mnt'}: you have no write access to it (drwxr-xr-x root:root), and "
        "fusermount3 mounts only on a folder its user may write to: mount on a folder of your own, e.g. "
        "mkdir -p ~/MixBoardTracks"), done.stderr
    cache = tmp_path / "c" / "mixvfs"
    log_file = cache / "logs" / "mixvfs.log"
    log = log_file.read_text() if log_file.exists() else ""  # refused before a daemon was started: none
    assert "unmounted" not in log, log
    assert not (cache / "reports").exists() or list((cache / "reports").glob("*.json")) == [], log
