"""A real emulated internet link (tools/wan/: network namespaces, tbf, a TUN delay line) with nginx as the origin
in the server namespace, shared by this folder's tests. Root only; under CI=true a machine that cannot build it
fails these tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, missing_part
from tools.wan import link as wan
from tools.wan.origin import Origin, nginx_binary, serving

RTT_MS = 40.0


@pytest.fixture(scope="package")
def link() -> Iterator[wan.Link]:
    problem = wan.missing() or (None if nginx_binary() else "nginx is not installed (apt install nginx-light)")
    if problem:
        missing_part(problem, "CI must run the real-link tests (as root: tools/install_system.sh)")
    with wan.emulated(wan.Shape(RTT_MS, 100.0), REPO / "build" / "wan") as made:
        yield made


@pytest.fixture(scope="package")
def origin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wan-origin")
    root.chmod(0o755)
    return root


@pytest.fixture(scope="package")
def origin(link: wan.Link, origin_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    with serving(link, origin_root, tmp_path_factory.mktemp("wan-nginx")) as server:
        yield server
