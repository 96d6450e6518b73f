"""The congestion control the emulated origin sends with: the host's by default, or the one asked for, with
the host's own default put back at once."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, missing_part
from tools.wan import link as wan


def test_the_origin_sends_with_the_congestion_control_asked_for_and_the_host_keeps_its_own() -> None:
    if problem := wan.missing():
        missing_part(problem, "CI must run the real-link tests (as root: tools/install_system.sh)")
    host = wan.congestion_control()
    other = "reno" if host != "reno" else "cubic"  # both built into every Linux kernel
    with wan.emulated(wan.Shape(40.0, 100.0), REPO / "build" / "wan", origin_cc=other) as chosen:
        assert chosen.origin_cc == other == wan.congestion_control(chosen.server)
        assert wan.congestion_control() == host
    with wan.emulated(wan.Shape(40.0, 100.0), REPO / "build" / "wan") as plain:
        assert plain.origin_cc == host
    with pytest.raises(wan.LinkError, match="no-such-cc"), \
            wan.emulated(wan.Shape(40.0, 100.0), REPO / "build" / "wan", origin_cc="no-such-cc"):
        pass
    assert wan.congestion_control() == host
