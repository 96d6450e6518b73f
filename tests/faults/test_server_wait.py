"""Servers that say "wait": 429/503 with Retry-After (delta-seconds or an HTTP-date) are honoured for the whole
origin; a wait longer than --server-wait-max fails the track at once with the server's wait in the report;
`mixvfs status` shows the wait while it runs."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any, cast

from tests.conftest import MIXVFS, run, wait_until, write_session
from tests.faults.helpers import FAST, cloud_track, cp, name_of, stream_path
from tools.devserver import DevServer


def first_refusal(devserver: Any, status: int) -> dict[str, Any]:
    refused = [r for r in devserver.requests() if r["status"] == status]
    assert len(refused) == 1, devserver.requests()
    return dict(refused[0])


def test_retry_after_in_seconds_holds_every_track_of_the_origin(tmp_path, server_root, devserver, mounter):
    tracks = [cloud_track(server_root, "t1", 400_000, seed=1), cloud_track(server_root, "t2", 300_000, seed=2)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 503, "headers": {"Retry-After": "2"}, "times": 1}})
    mount = mounter(session, *FAST)
    first = subprocess.Popen(["cp", str(mount.path / name_of("t1")), str(tmp_path / "t1.wav")])
    try:
        def heard() -> bool:
            """The mount heard the wait (its status shows it), or the wait is over already (t1 asked again): the
            server's log alone says the 503 was sent, not that the mount has read it."""
            if len([r for r in devserver.requests() if r["path"] == stream_path("t1")]) > 1:
                return True
            status = json.loads(run([MIXVFS, "status", str(mount.path), "--json"], check=True).stdout)
            return any(d.get("server_wait") for d in status["downloading"])

        assert wait_until(heard)
        assert cp(mount.path / name_of("t2"), tmp_path / "t2.wav").returncode == 0  # another track, same origin
    finally:
        assert first.wait(timeout=60) == 0
    refusal = first_refusal(devserver, 503)
    later = [r for r in devserver.requests() if r["t"] > refusal["t"]]
    assert {r["path"] for r in later} == {stream_path("t1"), stream_path("t2")}
    assert all(r["t"] >= refusal["t"] + 2 for r in later), later  # nothing reached the origin inside the wait
    assert (tmp_path / "t1.wav").read_bytes() == (server_root / "stream" / "t1.wav").read_bytes()
    assert (tmp_path / "t2.wav").read_bytes() == (server_root / "stream" / "t2.wav").read_bytes()


def test_retry_after_as_an_http_date_is_honoured(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 400_000, seed=1)],
                            server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 429, "retry_after_date": 2, "times": 1}})
    mount = mounter(session, *FAST)
    assert cp(mount.path / name_of("t1"), tmp_path / "t1.wav").returncode == 0
    refusal = first_refusal(devserver, 429)
    # The date names a whole second; the server wrote it at most a second after the refusal's start.
    named = refusal["t"] - 1 + 2
    later = [r for r in devserver.requests() if r["t"] > refusal["t"]]
    assert later and all(r["t"] >= named for r in later), later
    assert mount.wait_track("t1", lambda r: r["status"] == "cached")["status"] == "cached"


def test_a_wait_longer_than_server_wait_max_fails_the_track_at_once_quoting_the_server(
        tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 400_000, seed=1)],
                            server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 503, "headers": {"Retry-After": "3600"}}})
    mount = mounter(session, *FAST)
    done = cp(mount.path / name_of("t1"), tmp_path / "t1.wav")
    assert done.returncode != 0 and "Input/output error" in done.stderr
    record = mount.track("t1")
    assert record["status"] == "failed"
    assert "asked to wait 3600 s" in record["error"] and "server_wait_max (120 s)" in record["error"], record
    assert len(devserver.requests()) == 1  # no retry storm against a server that asked for an hour


def test_status_shows_the_wait_the_server_asked_for(tmp_path, server_root, devserver, mounter):
    session = write_session(tmp_path / "s.json", [cloud_track(server_root, "t1", 400_000, seed=1)],
                            server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 503, "headers": {"Retry-After": "60"}}})
    mount = mounter(session, *FAST, "--server-wait-max", "5m")
    reader = subprocess.Popen(["cp", str(mount.path / name_of("t1")), str(tmp_path / "t1.wav")])
    try:
        def waiting() -> bool:
            status = json.loads(run([MIXVFS, "status", str(mount.path), "--json"], check=True).stdout)
            return any(d.get("server_wait") for d in status["downloading"])

        assert wait_until(waiting)
        text = run([MIXVFS, "status", str(mount.path)], check=True).stdout
        assert f"{name_of('t1')}: " in text and "server asked to wait " in text, text
        assert f"{devserver.url}: server asked to wait" in text, text
        assert len(devserver.requests()) == 1
    finally:
        reader.kill()
        reader.wait()
    mount.unmount()  # a download waiting on the server's word does not hold the unmount






def test_a_wait_asked_by_the_cdn_a_track_is_redirected_to_is_honoured(tmp_path, server_root, mounter):
    """The music service redirects to a CDN, and the CDN says "wait": the download waits for the CDN's time
    (the service's redirect is asked again only then), never a burst of refused attempts ending in EIO."""
    cdn_root = tmp_path / "cdn"
    (cdn_root / "stream").mkdir(parents=True)
    entry = cloud_track(server_root, "t1", 120_000)
    (cdn_root / "stream" / "t1.wav").write_bytes((server_root / "stream" / "t1.wav").read_bytes())
    with DevServer(cdn_root) as cdn, DevServer(server_root) as api:
        api.set_faults({stream_path("t1"): {"redirect": cdn.url_for("/stream/t1.wav")}})
        cdn.set_faults({stream_path("t1"): {"status": 503, "headers": {"Retry-After": "2"}, "times": 1}})
        session = write_session(tmp_path / "s.json", [entry], server=api.url)
        mount = mounter(session, *FAST)
        done = cp(mount.path / name_of("t1"), tmp_path / "out.wav")
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out.wav").read_bytes() == (server_root / "stream" / "t1.wav").read_bytes()
        refused, *later = cdn.requests("GET")
        assert refused["status"] == 503 and [r["status"] for r in later] == [200]
        assert cast(float, later[0]["t"]) >= cast(float, refused["t"]) + 2
        assert len(api.requests("GET")) == 2  # one redirect per attempt: the refused one and the one after


def test_a_listing_during_a_short_wait_does_not_fail_the_export_after_it(tmp_path, server_root, devserver, mounter):
    """`ls -l` (or Finder) while the origin's wait runs: the stats that needed a size could not ask and got EIO,
    but the tracks are not failed for --failed-for: once the wait is over, the export is whole."""
    tracks = [cloud_track(server_root, f"t{i}", 100_000, seed=i, declare_size=False) for i in range(1, 5)]
    session = write_session(tmp_path / "s.json", tracks, server=devserver.url)
    devserver.set_faults({stream_path("t1"): {"status": 503, "headers": {"Retry-After": "2"}, "head": True,
                                              "times": 1}})
    mount = mounter(session, *FAST, "--failed-for", "1h")
    run(["ls", "-l", str(mount.path)])  # some sizes cannot be asked now
    refusal = first_refusal(devserver, 503)
    assert wait_until(lambda: time.time() >= refusal["t"] + 2.2, timeout=30)  # the server's wait is over (its clock)
    done = run(["cp", "-r", f"{mount.path}/.", str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr
    for i in range(1, 5):
        assert (tmp_path / "out" / name_of(f"t{i}")).read_bytes() == (server_root / "stream" / f"t{i}.wav").read_bytes()
