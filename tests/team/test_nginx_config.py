"""`mixvfs team-cache nginx-config` prints a configuration `nginx -t -c` accepts as it is: plain or TLS, as root and
as a normal user, with everything nginx writes under the cache folder."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mixvfs.cache.defaults import STALL_TIMEOUT
from mixvfs.vfs.commands.team_cache import CacheConfig, prepare_dir, render
from tests.conftest import MIXVFS, missing_part, run
from tests.team.conftest import require_nginx


def nginx_test(nginx: str, conf: Path, cache_dir: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    return run([*prefix, nginx, "-t", "-c", str(conf), "-e", str(cache_dir / "logs" / "error.log")])


def test_the_generated_config_passes_nginx_t_and_writes_only_under_the_cache_dir(tmp_path: Path) -> None:
    nginx = require_nginx()
    cache_dir = tmp_path / "team cache"  # a space: paths are quoted
    done = run([MIXVFS, "team-cache", "nginx-config", "--origin", "https://localhost:9443", "--listen",
                "127.0.0.1:8443", "--cache-dir", str(cache_dir), "--max-size", "20G"], check=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(done.stdout)
    checked = nginx_test(nginx, conf, cache_dir)
    assert checked.returncode == 0, checked.stderr
    for line in done.stdout.splitlines():
        for word in line.split('"')[1::2]:
            if word.startswith("/") and not word.startswith("/etc/ssl/"):
                assert word.startswith(str(cache_dir)), line
    assert "proxy_ssl_verify on" in done.stdout and "max_size=21474836480" in done.stdout
    # A request waiting on another's fetch of its slice gets no byte: nginx must give up the wait (and ask the origin
    # itself) before a client's default stall timeout takes the whole team cache for down.
    waits = [line.split()[1].rstrip(";") for line in done.stdout.splitlines()
             if line.split()[:1] == ["proxy_cache_lock_timeout"]]
    assert waits and all(w.endswith("s") and int(w[:-1]) < STALL_TIMEOUT for w in waits), waits
    assert oct(cache_dir.stat().st_mode & 0o777) == "0o700"


def test_a_tls_listener(tmp_path: Path) -> None:
    nginx = require_nginx()
    if shutil.which("openssl") is None:  # it makes the test certificate; Debian installs it by default
        missing_part("openssl is not installed", "CI must test the TLS listener")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=cache.lan",
         "-keyout", str(key), "-out", str(cert)], check=True)
    done = run([MIXVFS, "team-cache", "nginx-config", "--origin", "http://127.0.0.1:9", "--listen", "127.0.0.1:8443",
                "--cache-dir", str(tmp_path / "c"), "--tls-cert", str(cert), "--tls-key", str(key)], check=True)
    assert "listen 127.0.0.1:8443 ssl;" in done.stdout
    (tmp_path / "nginx.conf").write_text(done.stdout)
    checked = nginx_test(nginx, tmp_path / "nginx.conf", tmp_path / "c")
    assert checked.returncode == 0, checked.stderr


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A folder a normal user owns, reachable by that user (pytest's own folders are root's, mode 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="mixvfs-nginx-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the other runs already are the normal user's case")
def test_as_a_normal_user_nginx_t_passes_without_a_user_line(nobody_dir: Path) -> None:
    nginx = require_nginx()
    cache_dir = nobody_dir / "cache"
    prepare_dir(cache_dir)
    nobody = pwd.getpwnam("nobody")
    for path in (cache_dir, *cache_dir.iterdir()):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    conf = nobody_dir / "nginx.conf"
    conf.write_text(render(CacheConfig("http://127.0.0.1:9", "127.0.0.1:18443", cache_dir, 1 << 30)))
    conf.chmod(0o644)
    checked = nginx_test(nginx, conf, cache_dir, "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                         "--clear-groups")
    assert checked.returncode == 0, checked.stderr
    assert "\nuser " not in conf.read_text()


def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path) -> None:
    for args in (["--origin", "http://x/path", "--listen", "127.0.0.1:1"],
                 ["--origin", "http://x", "--listen", "127.0.0.1:1", "--tls-cert", str(tmp_path / "c.pem")]):
        done = run([MIXVFS, "team-cache", "nginx-config", *args, "--cache-dir", str(tmp_path / "d")])
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("bad", [
    ["--listen", "host;evil:8443"],  # written into the configuration as it is: an injection
    ["--listen", "127.0.0.1 ssl:8443"],
    ["--listen", "[nope]:8443"],
    ["--user", "nosuchuser-mixvfs"],
    ["--max-size", "0"],
])
def test_a_refused_argument_is_one_line_and_creates_nothing(tmp_path: Path, bad: list[str]) -> None:
    args = {"--origin": "http://x", "--listen": "127.0.0.1:1", "--cache-dir": str(tmp_path / "d")}
    args.update(dict(zip(bad[::2], bad[1::2], strict=True)))
    done = run([MIXVFS, "team-cache", "nginx-config", *[w for kv in args.items() for w in kv]])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "d").exists(), "the cache folder was created for a refused command"


def test_listen_is_normalised_and_a_plain_listener_on_the_network_is_warned_about(tmp_path: Path) -> None:
    base = [MIXVFS, "team-cache", "nginx-config", "--origin", "HTTP://Music.Example:80/"]
    lan = run([*base, "--listen", "10.0.0.5:08443", "--cache-dir", str(tmp_path / "a")], check=True)
    assert "listen 10.0.0.5:8443;" in lan.stdout and "clear text" in lan.stderr
    assert "X-Mixvfs-Origin http://music.example always;" in lan.stdout
    for local in ("127.0.0.1:8443", "127.1:8443", "[::1]:8443", "localhost:8443"):
        done = run([*base, "--listen", local, "--cache-dir", str(tmp_path / "b")], check=True)
        assert "clear text" not in done.stderr, local


def test_as_root_the_folders_go_to_the_worker_user_who_must_be_able_to_reach_them(
        tmp_path: Path, nobody_dir: Path) -> None:
    if os.geteuid() != 0:
        missing_part("only root gives the folders to another user", "CI runs as root")
    base = [MIXVFS, "team-cache", "nginx-config", "--origin", "http://127.0.0.1:9", "--listen", "127.0.0.1:1",
            "--user", "nobody"]
    done = run([*base, "--cache-dir", str(nobody_dir / "c")], check=True)
    nobody = pwd.getpwnam("nobody")
    for folder in (nobody_dir / "c", *(nobody_dir / "c" / sub for sub in ("cache", "temp", "logs"))):
        assert (folder.stat().st_uid, folder.stat().st_mode & 0o777) == (nobody.pw_uid, 0o700), folder
    assert f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};" in done.stdout  # Debian's nobody has no group nobody
    hidden = tmp_path / "home"  # pytest's folders are root's, mode 0700, as a home folder is
    refused = run([*base, "--cache-dir", str(hidden / "c")])
    assert refused.returncode == 2 and "cannot reach it" in refused.stderr, refused.stderr
    assert not hidden.exists()
