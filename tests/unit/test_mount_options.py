"""The mount options each platform's mount receives, as the argument list mfusepy hands libfuse, and macFUSE's
daemon_timeout derived from our own settings (vfs/fs/deadlines.py)."""

from __future__ import annotations

import pytest

from mixvfs import host
from mixvfs.vfs.fs import deadlines
from mixvfs.vfs.fs.deadlines import request_bounds


def option_list(platform: str, *, daemon_timeout: int = 125, name: str = "Friday Mix", major: int = 2) -> list[str]:
    # libfuse 3 picked (FUSE_LIBRARY_NAME) before mfusepy loads one; the other way round this process held
    # libfuse 2 while asking for 3, and every later mount test in it failed the lane check.
    host.prefer_libfuse3()
    from mixvfs.vfs.adapter import fuse_ops  # isort: skip

    import mfusepy  # isort: skip

    options = fuse_ops.fuse_options(threads=16, waiting_reads=1024, attr_timeout=1.0, nonempty=False,
                                    platform_options=host.mount_options(volume_name=name,
                                                                        daemon_timeout=daemon_timeout,
                                                                        platform=platform),
                                    libfuse_major=major)
    del options["foreground"], options["debug"]  # mfusepy's own arguments, not -o options
    return list(mfusepy.FUSE._normalize_fuse_options(**options))


def test_macos_mounts_with_the_volume_name_no_apple_files_and_an_explicit_daemon_timeout() -> None:
    listed = option_list("darwin")
    assert listed[-4:] == ["volname=Friday Mix", "noappledouble", "noapplexattr", "daemon_timeout=125"]
    assert "ro" in listed and "fsname=mixvfs" in listed


def test_linux_mounts_without_macfuse_options() -> None:
    listed = option_list("linux", major=3)
    assert not [o for o in listed if o.split("=")[0] in ("volname", "noappledouble", "noapplexattr",
                                                          "daemon_timeout")]
    assert "ro" in listed


def test_a_session_name_with_a_comma_stays_one_option() -> None:
    assert option_list("darwin", name="Mix, vol. 2")[-4] == "volname=Mix\\, vol. 2"


def test_daemon_timeout_exceeds_every_wait_of_ours_by_the_margin() -> None:
    bounds = request_bounds("auto", stall_timeout=30.0, token_timeout=30.0, platform="darwin")
    assert bounds.request_wait == 60.0
    assert bounds.exchanges == 2 * (10 + 30) + 30
    assert bounds.daemon_timeout == 110 + deadlines.MARGIN  # the exchanges are the longer here
    assert bounds.daemon_timeout > 60  # above macFUSE's default, which it must replace
    assert deadlines.outlives(bounds) is None
    slow = request_bounds(300.0, stall_timeout=30.0, token_timeout=30.0, platform="darwin")
    assert slow.request_wait == 300 and slow.daemon_timeout == 315


def test_linux_has_no_bound_unless_asked_and_no_daemon_timeout() -> None:
    assert request_bounds("auto", stall_timeout=30, token_timeout=30, platform="linux").request_wait is None
    asked = request_bounds(2.0, stall_timeout=30, token_timeout=30, platform="linux")
    assert asked.request_wait == 2.0 and asked.daemon_timeout is None
    assert request_bounds(0.0, stall_timeout=30, token_timeout=30, platform="linux").request_wait is None


@pytest.mark.parametrize("setting", [0.0, 1000.0])
def test_settings_macfuse_cannot_honour_are_capped_and_said(setting: float) -> None:
    bounds = request_bounds(setting, stall_timeout=30, token_timeout=30, platform="darwin")
    assert bounds.daemon_timeout == deadlines.MACFUSE_MAX_DAEMON_TIMEOUT
    assert "ejects" in (deadlines.outlives(bounds) or "")


def test_request_timeout_setting_parses() -> None:
    from mixvfs.vfs.commands import config

    settings = config.resolve(None, ("request_timeout",), env={"MIXVFS_REQUEST_TIMEOUT": "90s"})
    assert settings.request_timeout == 90.0
    assert config.resolve(None, ("request_timeout",), env={}).request_timeout == "auto"
    assert config.resolve(None, ("request_timeout",), env={"MIXVFS_REQUEST_TIMEOUT": "off"}).request_timeout == 0.0
