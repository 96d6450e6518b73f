"""The passthrough lane: `make test` runs this folder alone, with FUSE_LIBRARY_PATH naming the libfuse >= 3.17
that tools/build_libfuse.sh built (the plain `pytest` run does not descend here: see pyproject's norecursedirs).

Every mount made through :func:`pt_mounter` is checked: the daemon has that libfuse mapped and says passthrough
is on. Under CI=true a lane that cannot run so fails; elsewhere (no root, no build) it is skipped with the cause."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Mount, missing_part

MIN_VERSION = (3, 17)


def lane_problem() -> str | None:
    lib = os.environ.get("FUSE_LIBRARY_PATH")
    if not lib:
        return "FUSE_LIBRARY_PATH is not set (run `make test`, or FUSE_LIBRARY_PATH=$(bash tools/build_libfuse.sh))"
    version = libfuse_version(Path(lib).resolve().name)
    if version is None or version < MIN_VERSION:
        return f"FUSE_LIBRARY_PATH={lib} is not libfuse >= {MIN_VERSION[0]}.{MIN_VERSION[1]}"
    if os.geteuid() != 0:
        return "passthrough needs root (CAP_SYS_ADMIN) for its backing files"
    return None


def libfuse_version(filename: str) -> tuple[int, int] | None:
    """(3, 17) from ``libfuse3.so.3.17.2``."""
    match = re.fullmatch(r"libfuse3\.so\.3\.(\d+)(?:\.\d+)*", filename)
    return None if match is None else (3, int(match.group(1)))


@pytest.fixture(autouse=True)
def passthrough_lane() -> None:
    problem = lane_problem()
    if problem is not None:
        missing_part(f"the passthrough lane cannot run: {problem}", "CI must run it")


def passthrough_status(mount: Mount) -> dict[str, Any]:
    return dict(json.loads(os.getxattr(mount.path, "user.mixvfs.passthrough")))


def daemon_libfuse(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {Path(line.split()[-1]).name for line in maps.splitlines() if "/libfuse" in line}


@pytest.fixture
def pt_mounter(mounter: Callable[..., Mount]) -> Callable[..., Mount]:
    """``mounter``, plus the lane's own check: the daemon runs on libfuse >= 3.17 with passthrough on (unless
    the test asks for a mount where it must be off)."""

    def mount(session: Path, *extra: str, on: bool = True, **kw: Any) -> Mount:
        m = mounter(session, *extra, **kw)
        pid = int(os.getxattr(m.path, "user.mixvfs.pid"))
        versions = {libfuse_version(name) for name in daemon_libfuse(pid)}
        assert versions and all(v is not None and v >= MIN_VERSION for v in versions), \
            f"the daemon does not run on libfuse >= 3.17: {daemon_libfuse(pid)}"
        status = passthrough_status(m)
        if on:
            assert status["state"] == "on", f"passthrough is not on in the daemon: {status}\n{m.log()}"
        return m

    return mount
