"""The studio tier end to end: real nginx (configured by `mixvfs team-cache nginx-config`) on loopback in front of
the dev server, real mounts with their own tokens and cache folders, real `cp`."""

from __future__ import annotations

import filecmp
import json
import os
import pwd
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mixvfs.cache.team import (
    AUTH_HEADER,
    CURRENT_ETAG_HEADER,
    CURRENT_LENGTH_HEADER,
    VIA_HIT,
    VIA_MISS,
    VIA_ORIGIN,
)
from tests.conftest import MIXVFS, Mount, run, wait_until, write_session
from tests.faults.helpers import FAST, cloud_track, name_of, stream_path
from tests.team.conftest import SECRET_TOKEN, WORKER_USER, TeamNginx, get_bytes, gets, require_nginx
from tools.devserver import DevServer
from tools.make_audio import write_sized

MIB = 1 << 20
SLICE = 4 * MIB


def session_of(tmp_path: Path, origin: DevServer, tracks: list[dict[str, Any]], name: str = "s") -> Path:
    return write_session(tmp_path / f"{name}.json", tracks, server=origin.url)


def mount_as(mounter: Callable[..., Mount], session: Path, token: str, cache: TeamNginx, tmp_path: Path,
             *extra: str) -> Mount:
    return mounter(session, *FAST, "--team-cache", cache.url, *extra, cache_dir=tmp_path / f"cache-{token}",
                   env={"MIXVFS_TOKEN": token})


def export(m: Mount, dst: Path) -> subprocess.CompletedProcess[str]:
    return run(["cp", "-r", f"{m.path}/.", str(dst)])


def via(m: Mount, track: str) -> str | None:
    """Where the report says the track's bytes came from (the report is written in batches: poll)."""
    return m.wait_track(track, lambda r: r.get("via") is not None).get("via")


def slices_of(size: int) -> list[str]:
    return [f"bytes={start}-{start + SLICE - 1}" for start in range(0, size, SLICE)]


def test_the_cache_passes_the_origins_etag_and_length_through_slices_and_a_head_downloads_nothing(
        origin: DevServer, team_nginx: TeamNginx) -> None:
    size = 2 * SLICE + 12345  # three slices: nginx assembles the answer from them
    track = cloud_track(origin.root, "raw", size)
    url = team_nginx.url + track["cloud_stream_path"]
    auth = {"Authorization": "Bearer alice"}
    direct = httpx.head(origin.url + track["cloud_stream_path"], headers=auth)
    head = httpx.head(url, headers=auth)
    assert head.headers["Content-Length"] == str(size) and head.headers["ETag"] == direct.headers["ETag"]
    assert not gets(origin, stream_path("raw")), "a HEAD through the cache must not fetch a slice"
    whole = httpx.get(url, headers=auth)
    assert whole.status_code == 200 and whole.headers["Content-Length"] == str(size)
    assert whole.headers["ETag"] == direct.headers["ETag"] and whole.headers["X-Cache-Status"] == "MISS"
    assert whole.content == (origin.root / "stream" / "raw.wav").read_bytes()
    tail = httpx.get(url, headers={**auth, "Range": f"bytes={SLICE + 7}-"})
    assert tail.status_code == 206 and tail.headers["Content-Range"] == f"bytes {SLICE + 7}-{size - 1}/{size}"
    assert tail.headers["ETag"] == direct.headers["ETag"] and tail.headers["X-Cache-Status"] == "HIT"
    assert tail.content == whole.content[SLICE + 7:]
    assert sorted(str(e["range"]) for e in gets(origin, stream_path("raw"))) == sorted(slices_of(size))


def test_a_second_user_exports_the_session_with_no_origin_bytes(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    sizes = {"one": 2 * SLICE + 999, "two": 300_000}
    session = session_of(tmp_path, origin, [cloud_track(origin.root, t, n, seed=i)
                                             for i, (t, n) in enumerate(sizes.items())])
    alice = mount_as(mounter, session, "alice", team_nginx, tmp_path)
    assert export(alice, tmp_path / "alice").returncode == 0
    for track, size in sizes.items():  # each slice crossed the internet once
        assert get_bytes(origin, stream_path(track)) == size
        assert sorted(str(e["range"]) for e in gets(origin, stream_path(track))) == slices_of(size)
    bob = mount_as(mounter, session, "bob", team_nginx, tmp_path)
    assert export(bob, tmp_path / "bob").returncode == 0
    for track, size in sizes.items():
        assert get_bytes(origin, stream_path(track)) == size, "bob's export fetched track bytes at the origin"
        assert not gets(origin, stream_path(track), "bob")
        source = origin.root / "stream" / f"{track}.wav"
        assert filecmp.cmp(source, tmp_path / "alice" / name_of(track), shallow=False)
        assert filecmp.cmp(source, tmp_path / "bob" / name_of(track), shallow=False)
        assert via(alice, track) == VIA_MISS and via(bob, track) == VIA_HIT
    status = json.loads(run([MIXVFS, "status", str(bob.path), "--json"], check=True).stdout)
    assert status["team_cache"][0]["state"] == "up"
    assert {t["via"] for t in status["via"]} == {VIA_HIT}
    assert "team cache hit" in run([MIXVFS, "report", str(bob.path)], check=True).stdout


def test_a_later_users_hit_costs_the_origin_one_request_the_caches_authorization(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    # The cache passes on what the origin said in the authorization HEAD it made for the request (ETag, length):
    # the client checks the copy against that instead of asking the origin again, a round trip in each track's
    # path and a second request at the origin per track.
    tracks = {"hit1": 300_000, "hit2": SLICE + 321}
    session = session_of(tmp_path, origin, [cloud_track(origin.root, t, n, seed=40 + i)
                                             for i, (t, n) in enumerate(tracks.items())])
    alice = mount_as(mounter, session, "alice", team_nginx, tmp_path)
    assert export(alice, tmp_path / "alice").returncode == 0
    bob = mount_as(mounter, session, "bob", team_nginx, tmp_path)
    assert export(bob, tmp_path / "bob").returncode == 0
    for track in tracks:
        path = stream_path(track)
        assert filecmp.cmp(origin.root / "stream" / f"{track}.wav", tmp_path / "bob" / name_of(track),
                           shallow=False)
        assert via(bob, track) == VIA_HIT
        asked = [(e["method"], e["auth"]) for e in origin.requests(path=path) if e["auth"] == "Bearer bob"]
        assert asked == [("HEAD", "Bearer bob")], f"the origin saw, for bob's {track}: {asked}"
    direct = httpx.head(origin.url + stream_path("hit2"), headers={"Authorization": "Bearer bob"})
    answer = httpx.get(team_nginx.url + stream_path("hit2"), headers={"Authorization": "Bearer bob"})
    assert answer.headers[CURRENT_ETAG_HEADER] == direct.headers["ETag"]
    assert answer.headers[CURRENT_LENGTH_HEADER] == str(tracks["hit2"]) and answer.headers[AUTH_HEADER] == "200"


@pytest.fixture
def older_nginx(origin: DevServer) -> Iterator[TeamNginx]:
    """A cache configured before it passed on the origin's word (no X-Mixvfs-Auth-Status). Asked for before the
    mounter, it outlives the test's mounts."""
    older = TeamNginx(require_nginx(), origin.url)
    text = older.conf.read_text()
    relay = [line for line in text.splitlines() if AUTH_HEADER in line]
    assert len(relay) == 1
    older.conf.write_text(text.replace(relay[0] + "\n", ""))
    older.start()
    yield older
    older.remove()


def test_a_cache_configured_before_it_passed_on_the_origins_word_still_gets_a_changed_track_right(
        origin: DevServer, older_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    # The client asks the origin itself, as it did with such a configuration.
    size = 200_000
    session = session_of(tmp_path, origin, [cloud_track(origin.root, "older", size)])
    alice = mount_as(mounter, session, "alice", older_nginx, tmp_path)
    assert export(alice, tmp_path / "alice").returncode == 0
    replace(origin.root / "stream" / "older.wav", size, seed=31)
    bob = mount_as(mounter, session, "bob", older_nginx, tmp_path)
    assert export(bob, tmp_path / "bob").returncode == 0
    assert filecmp.cmp(origin.root / "stream" / "older.wav", tmp_path / "bob" / name_of("older"), shallow=False)
    assert "asking it to refresh" in bob.log()
    heads = [e for e in origin.requests("HEAD", stream_path("older")) if e["auth"] == "Bearer bob"]
    assert len(heads) >= 2, "the cache's authorization and the client's own question"


def test_a_session_the_studio_holds_is_asked_for_all_at_once_up_to_jobs(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    # Each hit waits one origin round trip (the cache's authorization) and brings no internet bytes: the later
    # user's downloads start --jobs at once, not from the few a link's measured start would begin with.
    jobs, count = 12, 20
    names = [f"many{i}" for i in range(count)]
    session = session_of(tmp_path, origin, [cloud_track(origin.root, t, 100_000, seed=60 + i)
                                             for i, t in enumerate(names)])
    alice = mount_as(mounter, session, "alice", team_nginx, tmp_path)
    assert export(alice, tmp_path / "alice").returncode == 0
    origin.set_faults({stream_path(t): {"hold": "auth", "hold_head": True} for t in names})
    try:
        bob = mounter(session, "--team-cache", team_nginx.url, "--jobs", str(jobs), cache_dir=tmp_path / "bob-cache",
                      env={"MIXVFS_TOKEN": "bob"})
        copy = subprocess.Popen(["cp", "-r", f"{bob.path}/.", str(tmp_path / "bob")])
        # The authorizations parked at the origin are the downloads in flight (bob's export sends nothing else).
        assert origin.wait_held("auth", jobs) == jobs
    finally:
        origin.set_faults({})
        origin.release("auth")
    assert copy.wait(timeout=60) == 0
    for track in names:
        assert filecmp.cmp(origin.root / "stream" / f"{track}.wav", tmp_path / "bob" / name_of(track), shallow=False)
        assert not gets(origin, stream_path(track), "bob")


def test_a_token_the_origin_refuses_gets_eio_and_no_track_bytes(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    session = session_of(tmp_path, origin, [cloud_track(origin.root, "secret", SLICE + 10)])
    alice = mount_as(mounter, session, "alice", team_nginx, tmp_path)  # the bytes are in the team cache now
    assert export(alice, tmp_path / "alice").returncode == 0
    carol = mount_as(mounter, session, "carol", team_nginx, tmp_path)
    done = run(["cp", str(carol.path / name_of("secret")), str(tmp_path / "carol.wav")])
    assert done.returncode != 0 and "Input/output error" in done.stderr
    record = carol.track("secret")
    assert record["status"] == "failed" and "refused this token" in record["error"]
    assert not (tmp_path / "carol.wav").exists() or (tmp_path / "carol.wav").stat().st_size == 0
    assert not gets(origin, stream_path("secret"), "carol")
    assert any(e["auth"] == "Bearer carol" for e in origin.requests("HEAD", stream_path("secret")))


def test_two_cold_users_at_once_fetch_each_slice_once(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    size = 2 * SLICE + 4321
    session = session_of(tmp_path, origin, [cloud_track(origin.root, "cold", size)])
    path = stream_path("cold")
    origin.set_faults({path: {"hold": "first"}})  # the first slice waits until both users are at the cache
    try:
        alice = mount_as(mounter, session, "alice", team_nginx, tmp_path)
        bob = mount_as(mounter, session, "bob", team_nginx, tmp_path)
        copies = [subprocess.Popen(["cp", str(m.path / name_of("cold")), str(tmp_path / f"{n}.wav")])
                  for n, m in (("alice", alice), ("bob", bob))]
        origin.wait_held("first", 1)
        # Both users were authorized (the origin answered both HEADs): both requests are at nginx's cache lock.
        assert wait_until(lambda: {e["auth"] for e in origin.requests("HEAD", path)} >= {"Bearer alice",
                                                                                          "Bearer bob"}, 30)
        origin.release("first")
        assert [c.wait(timeout=60) for c in copies] == [0, 0]
    finally:
        origin.set_faults({})
    ranges = [str(e["range"]) for e in gets(origin, path)]
    assert sorted(ranges) == slices_of(size), f"one origin fetch per slice, got {ranges}"
    for name in ("alice", "bob"):
        assert filecmp.cmp(origin.root / "stream" / "cold.wav", tmp_path / f"{name}.wav", shallow=False)


def test_listing_through_the_cache_downloads_nothing(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    tracks = [cloud_track(origin.root, f"ls{i}", SLICE + i, declare_size=False) for i in range(3)]
    session = session_of(tmp_path, origin, tracks)
    bob = mount_as(mounter, session, "bob", team_nginx, tmp_path)  # sizes unknown: asked at mount (HEAD)
    listing = run(["ls", "-l", str(bob.path)], check=True).stdout
    for i in range(3):
        assert f" {SLICE + i} " in listing
        assert not gets(origin, stream_path(f"ls{i}")), "listing must not download anything"
        assert origin.requests("HEAD", stream_path(f"ls{i}"))


def test_a_stopped_cache_fails_over_to_the_origin_and_is_used_again_after_the_reset_interval(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    session = session_of(tmp_path, origin, [cloud_track(origin.root, t, SLICE + 1) for t in ("down", "back")])
    # Long enough that the failover's copy and the status question below fall inside it on a loaded machine;
    # the wait for "up" after it gates on the status itself.
    alice = mount_as(mounter, session, "alice", team_nginx, tmp_path, "--team-cache-reset-after", "8s")
    team_nginx.stop()
    try:
        assert run(["cp", str(alice.path / name_of("down")), str(tmp_path / "down.wav")]).returncode == 0
        assert via(alice, "down") == VIA_ORIGIN
        assert [e["range"] for e in gets(origin, stream_path("down"))] == [None], "straight from the origin"
        assert f"team cache 127.0.0.1:{team_nginx.port} is down" in alice.log()
        status = json.loads(run([MIXVFS, "status", str(alice.path), "--json"], check=True).stdout)
        assert status["team_cache"][0]["state"] == "down"
    finally:
        team_nginx.start()

    def cache_up() -> bool:
        state = json.loads(run([MIXVFS, "status", str(alice.path), "--json"], check=True).stdout)["team_cache"]
        return bool(state[0]["state"] == "up")

    assert wait_until(cache_up, 60)
    assert run(["cp", str(alice.path / name_of("back")), str(tmp_path / "back.wav")]).returncode == 0
    assert via(alice, "back") == VIA_MISS
    assert sorted(str(e["range"]) for e in gets(origin, stream_path("back"))) == slices_of(SLICE + 1)
    for track in ("down", "back"):
        assert filecmp.cmp(origin.root / "stream" / f"{track}.wav", tmp_path / f"{track}.wav", shallow=False)


def test_a_track_changed_at_the_origin_is_detected_and_refetched(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    size = SLICE + 5000
    session = session_of(tmp_path, origin, [cloud_track(origin.root, "remix", size)])
    alice = mount_as(mounter, session, "alice", team_nginx, tmp_path)
    assert export(alice, tmp_path / "old").returncode == 0  # the team cache holds the old version
    source = origin.root / "stream" / "remix.wav"
    old = source.read_bytes()
    write_sized(source, size, seed=99)  # same size, new bytes, new ETag
    stamp = source.stat().st_mtime_ns + 5_000_000_000
    os.utime(source, ns=(stamp, stamp))
    assert source.read_bytes() != old
    bob = mount_as(mounter, session, "bob", team_nginx, tmp_path)  # bob's authorization sees the new ETag
    assert export(bob, tmp_path / "new").returncode == 0
    assert filecmp.cmp(source, tmp_path / "new" / name_of("remix"), shallow=False)
    assert "asking it to refresh" in bob.log()
    assert get_bytes(origin, stream_path("remix"), "bob") == size  # refetched through the cache, once


def replace(source: Path, size: int, seed: int) -> None:
    """New bytes (and so a new ETag) at the origin."""
    old = source.read_bytes()
    write_sized(source, size, seed=seed)
    stamp = source.stat().st_mtime_ns + 5_000_000_000
    os.utime(source, ns=(stamp, stamp))
    assert source.read_bytes() != old


def test_the_same_user_gets_a_changed_track_within_the_minute_the_cache_keeps_its_authorization(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    # The client must learn the origin's current validators from the origin itself, never from anything the
    # cache kept, or a stale copy agrees with a stale answer.
    same, grown = SLICE + 77, 300_000
    session = session_of(tmp_path, origin, [cloud_track(origin.root, "rev", same),
                                             cloud_track(origin.root, "grow", grown, declare_size=False)])
    first = mount_as(mounter, session, "alice", team_nginx, tmp_path / "first")
    assert export(first, tmp_path / "old").returncode == 0  # the team cache holds the old versions
    replace(origin.root / "stream" / "rev.wav", same, seed=7)
    replace(origin.root / "stream" / "grow.wav", grown + 4321, seed=8)
    again = mount_as(mounter, session, "alice", team_nginx, tmp_path / "again")  # a fresh local cache
    rev = run(["cp", str(again.path / name_of("rev")), str(tmp_path / "rev.wav")])
    assert rev.returncode == 0, rev.stderr
    assert filecmp.cmp(origin.root / "stream" / "rev.wav", tmp_path / "rev.wav", shallow=False)
    # The size listed came through the cache's HEAD (the old one): the right bytes, or EIO — never the old ones.
    grow = run(["cp", str(again.path / name_of("grow")), str(tmp_path / "grow.wav")])
    if grow.returncode == 0:
        assert filecmp.cmp(origin.root / "stream" / "grow.wav", tmp_path / "grow.wav", shallow=False)
    else:
        assert "Input/output error" in grow.stderr and again.track("grow")["status"] == "failed"
    assert "asking it to refresh" in again.log()
    # The next listing sees the new size: nginx does not keep HEAD answers.
    head = httpx.head(team_nginx.url + stream_path("grow"), headers={"Authorization": "Bearer alice"})
    assert head.headers["Content-Length"] == str(grown + 4321)


def test_an_expired_token_is_refreshed_once_and_the_copy_through_the_cache_succeeds(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    size = SLICE + 3 * MIB  # well past what arrived before the 401's retry used to be cut off
    session = session_of(tmp_path, origin, [cloud_track(origin.root, "expiry", size)])
    token_file = tmp_path / "token"
    token_file.write_text("expired\n")
    token_file.chmod(0o600)
    m = mounter(session, *FAST, "--team-cache", team_nginx.url, "--token-file", str(token_file), "--no-prefetch",
                cache_dir=tmp_path / "cache-expiry")
    token_file.write_text("alice\n")  # the token was rotated meanwhile
    done = run(["cp", str(m.path / name_of("expiry")), str(tmp_path / "expiry.wav")])
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(origin.root / "stream" / "expiry.wav", tmp_path / "expiry.wav", shallow=False)
    assert via(m, "expiry") == VIA_MISS
    heads = [(e["auth"], e["status"]) for e in origin.requests("HEAD", stream_path("expiry"))]
    assert heads[0] == ("Bearer expired", 401) and ("Bearer alice", 200) in heads


def nginx_pids(cache: TeamNginx) -> list[int]:
    assert cache._proc is not None
    master = cache._proc.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [master, *map(int, children)]


def test_a_cache_frozen_mid_body_fails_over_to_the_origin_at_the_first_stall(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    size = SLICE + MIB
    session = session_of(tmp_path, origin, [cloud_track(origin.root, "frozen", size)])
    m = mount_as(mounter, session, "alice", team_nginx, tmp_path)
    origin.set_faults({stream_path("frozen"): {"hold": "mid", "hold_after": MIB}})
    copy = subprocess.Popen(["cp", str(m.path / name_of("frozen")), str(tmp_path / "frozen.wav")],
                            stderr=subprocess.PIPE)
    pids: list[int] = []
    try:
        origin.wait_held("mid", 1)  # nginx is sending the first MiB of the first slice
        pids = nginx_pids(team_nginx)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        origin.release("mid")
        assert copy.wait(timeout=60) == 0, copy.stderr.read() if copy.stderr else ""
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        origin.set_faults({})
        if copy.stderr:
            copy.stderr.close()
    assert filecmp.cmp(origin.root / "stream" / "frozen.wav", tmp_path / "frozen.wav", shallow=False)
    record = m.wait_track("frozen", lambda r: r.get("status") == "cached")
    assert record["via"] == VIA_ORIGIN, record  # the rest came straight from the origin
    log = m.log()
    down = f"team cache 127.0.0.1:{team_nginx.port} is down (timed out: no data from 127.0.0.1:{team_nginx.port}"
    assert log.count(down) == 1, log
    # At the first stall: the cache is down before the download's retry, which goes to the origin (not to the
    # frozen cache for a second stall).
    assert "retry_scheduled" not in log[:log.index(down)], log


def test_no_token_rests_on_the_cache_hosts_disk_or_in_its_logs(
        origin: DevServer, team_nginx: TeamNginx, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    session = session_of(tmp_path, origin, [cloud_track(origin.root, t, SLICE + 100 * i, seed=i)
                                             for i, t in enumerate(("tok1", "tok2"))])
    for token in (SECRET_TOKEN, "alice"):
        user = mount_as(mounter, session, token, team_nginx, tmp_path)
        assert export(user, tmp_path / token).returncode == 0
    assert via(user, "tok1") == VIA_HIT  # the second user's export came from the cache's store
    refused = httpx.get(team_nginx.url + stream_path("tok1"), headers={"Authorization": f"Bearer {SECRET_TOKEN}x"})
    assert refused.status_code == 401  # a refusal, too, leaves nothing behind
    files = [p for p in team_nginx.dir.rglob("*") if p.is_file()]
    assert any(p.parts[-3:-1] != ("cache", "check") and "cache" in p.parts for p in files)  # bytes were stored
    for path in files:
        data = path.read_bytes()
        assert SECRET_TOKEN.encode() not in data and b"Bearer" not in data, path


def test_a_cache_that_answers_but_does_not_store_is_named_by_preflight_and_status(
        origin: DevServer, mounter: Callable[..., Mount], tmp_path: Path) -> None:
    cache = TeamNginx(require_nginx(), origin.url)
    try:
        # The workers cannot write their cache folder (root's, 0700: what the generated setup made before).
        os.chown(cache.dir / "cache", 0, 0)
        cache.start()
        session = session_of(tmp_path, origin, [cloud_track(origin.root, "nostore", 300_000)])
        env = {**os.environ, "MIXVFS_TOKEN": "alice"}
        pre = run([MIXVFS, "preflight", str(session), "--team-cache", cache.url, "--cache-dir",
                   str(tmp_path / "pre")], env=env)
        assert pre.returncode == 0, pre.stdout + pre.stderr  # the export works: the bytes come from the origin
        assert f"team cache:  {cache.url} up, DOES NOT STORE" in pre.stdout, pre.stdout
        assert "answers but does not store" in pre.stdout
        m = mount_as(mounter, session, "alice", cache, tmp_path)
        assert export(m, tmp_path / "out").returncode == 0
        assert filecmp.cmp(origin.root / "stream" / "nostore.wav", tmp_path / "out" / name_of("nostore"),
                           shallow=False)

        def said() -> bool:
            return "answers but does not store" in run([MIXVFS, "status", str(m.path)]).stdout

        assert wait_until(said, 30)  # checked in the background as the mount starts
        assert "answers but does not store" in m.log()
    finally:
        cache.remove()


def test_a_cache_that_stores_says_so(origin: DevServer, team_nginx: TeamNginx, tmp_path: Path) -> None:
    session = session_of(tmp_path, origin, [cloud_track(origin.root, "stores", 1000)])
    pre = run([MIXVFS, "preflight", str(session), "--team-cache", team_nginx.url, "--cache-dir",
               str(tmp_path / "pre"), "--json"], env={**os.environ, "MIXVFS_TOKEN": "alice"})
    result = json.loads(pre.stdout)
    assert result["team_cache"][0]["stores"] is True and pre.returncode == 0, result
    owner = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() else WORKER_USER
    for folder in (team_nginx.dir, *(team_nginx.dir / sub for sub in ("cache", "temp", "logs"))):
        assert pwd.getpwuid(folder.stat().st_uid).pw_name == owner, folder
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
