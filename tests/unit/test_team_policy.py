"""The team cache's routing and failover policy (cache/team.py), with injected time: no sleeping, no network."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mixvfs.cache.errors import ConfigError
from mixvfs.cache.http import origin_of as url_origin
from mixvfs.cache.team import (
    AUTH_HEADER,
    CURRENT_ETAG_HEADER,
    CURRENT_LENGTH_HEADER,
    MARKER,
    ORIGIN_HEADER,
    VIA_HIT,
    VIA_MISS,
    VIA_PASS,
    Current,
    Endpoint,
    TeamCache,
    Verdict,
    is_loopback,
    origin_of,
    parse_spec,
    plain_http_problem,
    relayed,
    via,
)
from mixvfs.vfs.commands import config
from mixvfs.vfs.runtime import distinct_origins

URL = "http://origin.example:8080/stream/a.wav?v=2"
GOOD = {MARKER: "HIT", "ETag": '"e1"', ORIGIN_HEADER: "http://origin.example:8080"}


def first(members: list[Endpoint]) -> Endpoint:
    return members[0]


def team(spec: str = "https://a:1|https://b:2;https://c:3") -> TeamCache:
    return TeamCache(spec, reset_after=60, choose=first, now=lambda: 0.0)


def test_spec_groups_are_failover_order_and_members_are_alternatives() -> None:
    assert parse_spec(" https://a:1/ | https://b:2 ;https://c:3;") == [["https://a:1", "https://b:2"], ["https://c:3"]]
    for bad in ("", ";", "ftp://a", "https://a?x=1", "https://u:p@a", "a:1",
                "http://[::1", "https://[zz]:1", "http://127.0.0.1:abc", "http://h:-1", "http://h:70000", "http://a|",
                "http://a b:80", "https://h:0"):
        with pytest.raises(ConfigError):
            parse_spec(bad)


def test_a_request_keeps_its_path_and_query_on_the_cache() -> None:
    route = team().route(URL, now=0)
    assert route is not None and route.url == "https://a:1/stream/a.wav?v=2"


def test_within_a_group_the_pick_is_among_the_caches_that_are_up() -> None:
    seen: list[list[str]] = []

    def choose(members: list[Endpoint]) -> Endpoint:
        seen.append([m.base for m in members])
        return members[-1]

    cache = TeamCache("https://a:1|https://b:2", reset_after=60, choose=choose)
    route = cache.route(URL, now=0)
    assert route is not None and route.endpoint.base == "https://b:2" and seen == [["https://a:1", "https://b:2"]]
    cache.failed(route, "refused", now=0)
    again = cache.route(URL, now=1)
    assert again is not None and again.endpoint.base == "https://a:1" and seen[-1] == ["https://a:1"]


def test_a_failed_cache_is_skipped_for_reset_after_then_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    cache = team("https://a:1;https://c:3")
    route = cache.route(URL, now=0)
    assert route is not None
    with caplog.at_level(logging.WARNING, "mixvfs.cache.team"):
        assert cache.failed(route, "connection refused", now=10)
        assert not cache.failed(route, "connection refused", now=11)  # already down: no second line
    assert [r.getMessage() for r in caplog.records] == [
        "team cache a:1 is down (connection refused): straight to the origin for 60s"]
    fallback = cache.route(URL, now=69.9)
    assert fallback is not None and fallback.endpoint.base == "https://c:3"
    assert cache.state(now=30)[0] == {"url": "https://a:1", "state": "down", "reason": "connection refused",
                                      "retry_in": 41.0, "stores": None, "store_detail": None}
    back = cache.route(URL, now=71)
    assert back is not None and back.endpoint.base == "https://a:1"


def test_every_cache_down_means_the_origin() -> None:
    cache = team("https://a:1")
    route = cache.route(URL, now=0)
    assert route is not None
    cache.failed(route, "timed out", now=0)
    assert cache.route(URL, now=59) is None


@pytest.mark.parametrize(("status", "headers", "verdict"), [
    (200, GOOD, Verdict.USE),
    (206, GOOD, Verdict.USE),
    (200, {k: v for k, v in GOOD.items() if k != MARKER}, Verdict.FAILOVER),  # not the team cache
    (502, GOOD, Verdict.FAILOVER),
    (503, GOOD, Verdict.FAILOVER),
    (504, GOOD, Verdict.FAILOVER),
    (401, {MARKER: "NONE"}, Verdict.REFUSED),
    (403, {MARKER: "NONE"}, Verdict.REFUSED),
    (404, {MARKER: "PASS"}, Verdict.USE),  # the origin's own answer, passed through
    (421, {MARKER: "NONE"}, Verdict.ORIGIN),  # the cache fronts another origin
    (200, {**GOOD, ORIGIN_HEADER: "https://elsewhere"}, Verdict.ORIGIN),
])
def test_judging_the_caches_answer(status: int, headers: dict[str, str], verdict: Verdict) -> None:
    cache = team()
    route = cache.route(URL, now=0)
    assert route is not None
    assert cache.judge(route, URL, status, headers, total=1000, expected=None, refreshed=False) is verdict
    down = cache.state(now=0)[0]["state"] == "down"
    assert down == (verdict is Verdict.FAILOVER)


def test_a_copy_of_another_length_than_the_manifests_is_refreshed_then_taken_from_the_origin() -> None:
    cache = team()
    route = cache.route(URL, now=0)
    assert route is not None
    assert cache.judge(route, URL, 200, GOOD, total=1000, expected=1000, refreshed=False) is Verdict.USE
    assert cache.judge(route, URL, 200, GOOD, total=1000, expected=1200, refreshed=False) is Verdict.REFRESH
    assert cache.judge(route, URL, 200, GOOD, total=1000, expected=1200, refreshed=True) is Verdict.ORIGIN
    stale = {**GOOD, "ETag": '"old"'}
    now = Current('"e1"', 1000)
    assert cache.judge(route, URL, 200, stale, total=1000, expected=None, refreshed=True, current=now) is Verdict.ORIGIN
    assert cache.state(now=0)[0]["state"] == "up"  # stale is not down


def test_a_token_never_goes_over_plain_http_to_another_machine_unless_allowed(tmp_path: Path) -> None:
    assert plain_http_problem(parse_spec("http://127.0.0.1:8080|http://localhost:1;https://cache.lan")) is None
    assert plain_http_problem(parse_spec("http://[::1]:8080")) is None
    problem = plain_http_problem(parse_spec("https://a.lan;http://10.0.0.5:8080"))
    assert problem is not None and "http://10.0.0.5:8080" in problem and "team_cache_allow_plain_http" in problem
    env = {"MIXVFS_CONFIG": str(tmp_path / "none.toml"), "MIXVFS_TEAM_CACHE": "http://10.0.0.5:8080"}
    (tmp_path / "none.toml").write_text("")
    with pytest.raises(ConfigError, match="plain http"):
        config.resolve(None, env={**env, "MIXVFS_TOKEN": "t"}).runtime()
    allowed = config.resolve(None, env={**env, "MIXVFS_TOKEN": "t", "MIXVFS_TEAM_CACHE_ALLOW_PLAIN_HTTP": "yes"})
    assert allowed.runtime().team_cache == "http://10.0.0.5:8080"
    assert config.resolve(None, env=env).runtime().team_cache == "http://10.0.0.5:8080"  # no token: nothing to leak


def test_team_cache_settings_come_in_layers(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('team_cache = "https://a:1|https://b:2"\nteam_cache_reset_after = "2m"\n'
                    "team_cache_allow_plain_http = true\n")
    settings = config.resolve(None, env={"MIXVFS_CONFIG": str(path), "MIXVFS_TEAM_CACHE_RESET_AFTER": "30s"})
    runtime = settings.runtime()
    assert runtime.team_cache == "https://a:1|https://b:2" and runtime.team_reset_after == 30
    assert settings.value("team_cache_allow_plain_http") is True
    empty = path.with_name("empty.toml")
    empty.write_text("")
    defaults = config.resolve(None, env={"MIXVFS_CONFIG": str(empty)},
                              names=(*config.CACHE_SETTINGS, "jobs", "stall_timeout"))
    assert defaults.runtime().team_cache is None and defaults.runtime().team_reset_after == 300
    with pytest.raises(ConfigError, match="MIXVFS_TEAM_CACHE"):
        config.resolve(None, env={"MIXVFS_CONFIG": str(path), "MIXVFS_TEAM_CACHE": "ftp://x"})


def test_the_copy_is_judged_by_what_the_origin_itself_says_now() -> None:
    cache = team()
    route = cache.route(URL, now=0)
    assert route is not None

    def judge(etag: str, total: int, expected: int | None, current: Current | None) -> Verdict:
        return cache.judge(route, URL, 200, {**GOOD, "ETag": etag}, total=total, expected=expected,
                           refreshed=False, current=current)

    assert judge('"e1"', 1000, None, Current('"e1"', 1000)) is Verdict.USE
    assert judge('W/"e1"', 1000, None, Current('"e1"', 1000)) is Verdict.USE  # nginx may weaken a tag
    assert judge('"old"', 1000, 1000, Current('"e1"', 1000)) is Verdict.REFRESH  # same size, new bytes
    assert judge('"e1"', 999, None, Current('"e1"', 1000)) is Verdict.REFRESH
    assert judge('"e1"', 999, None, Current(None, 1000)) is Verdict.REFRESH
    # The origin's length is the truth: a listing's older size is the download's business, not staleness.
    assert judge('"e1"', 1000, 900, Current('"e1"', 1000)) is Verdict.USE
    assert judge('"e1"', 1000, 900, Current(None, None)) is Verdict.REFRESH  # nothing to go on but the listing
    assert judge('"e1"', 1000, None, None) is Verdict.USE  # a HEAD for a size: nothing asked


def test_the_origins_word_in_the_caches_authorization_is_taken_only_from_a_yes() -> None:
    said = {AUTH_HEADER: "200", CURRENT_ETAG_HEADER: '"e2"', CURRENT_LENGTH_HEADER: "1000"}
    assert relayed({**GOOD, **said}) == Current('"e2"', 1000)
    assert relayed({**GOOD, AUTH_HEADER: "204"}) == Current(None, None)  # the origin said a yes and nothing else
    assert relayed({**GOOD, **said, CURRENT_LENGTH_HEADER: "12x"}) == Current('"e2"', None)
    # An older configuration passes nothing on, and a refusal or a 5xx is no word on the track: ask the origin.
    assert relayed(GOOD) is None
    assert relayed({**GOOD, **said, AUTH_HEADER: "401"}) is None
    assert relayed({**GOOD, **said, AUTH_HEADER: ""}) is None


def test_a_pass_is_not_called_a_miss() -> None:
    assert via({MARKER: "HIT"}) == VIA_HIT and via({MARKER: "MISS"}) == VIA_MISS
    assert via({MARKER: "BYPASS"}) == VIA_MISS  # a refresh: fetched and stored
    assert via({MARKER: "PASS"}) == VIA_PASS == "team cache pass (not cached)"
    assert via({MARKER: "NONE"}) == "team cache (X-Cache-Status: NONE)"


def test_a_cache_url_with_a_path_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="without '/sub'"):
        parse_spec("http://127.0.0.1:18443/sub")
    assert parse_spec("http://127.0.0.1:18443/") == [["http://127.0.0.1:18443"]]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "127.0.0.2", "127.255.255.254", "2130706433", "::1",
                                  "[::1]", "localhost", "LOCALHOST"])
def test_every_loopback_spelling_is_loopback(host: str) -> None:
    assert is_loopback(host)
    assert plain_http_problem(parse_spec(f"http://{host if ':' not in host or host.startswith('[') else f'[{host}]'}"
                                         ":18443")) is None


@pytest.mark.parametrize("host", ["10.0.0.5", "128.0.0.1", "cache.lan", "1.127.0.0.1", "", "::2"])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_the_origin_match_ignores_case_and_default_ports() -> None:
    assert origin_of("HTTPS://Music.Example:443/x") == "https://music.example" == origin_of("https://music.example")
    assert origin_of("http://Origin.Example:80") == "http://origin.example"
    assert origin_of("http://origin.example:8080/a") == "http://origin.example:8080"
    cache = team()
    route = cache.route(URL, now=0)
    assert route is not None
    for fronts in ("HTTP://ORIGIN.EXAMPLE:8080/", "http://origin.example:8080"):
        headers = {**GOOD, ORIGIN_HEADER: fronts}
        assert cache.judge(route, URL, 200, headers, total=1000, expected=None, refreshed=False) is Verdict.USE
    url = "HTTPS://Origin.Example:443/stream/a.wav"
    route = cache.route(url, now=0)
    assert route is not None
    headers = {**GOOD, ORIGIN_HEADER: "https://origin.example"}
    assert cache.judge(route, url, 200, headers, total=1000, expected=None, refreshed=False) is Verdict.USE


def test_the_store_check_wants_a_hit_for_the_second_request_of_one_nonce() -> None:
    from mixvfs.cache.team import Answer, judge_store_check

    assert judge_store_check(Answer(200, "MISS"), Answer(200, "HIT")) == (True, None)
    stores, detail = judge_store_check(Answer(200, "MISS"), Answer(200, "MISS"))
    assert stores is False and detail is not None and "does not store" in detail and "MISS" in detail
    stores, detail = judge_store_check(Answer(500, "MISS"), Answer(500, "MISS"))  # nginx cannot open its files
    assert stores is False and detail is not None and "HTTP 500" in detail
    stores, detail = judge_store_check(Answer(404, None), Answer(404, None))  # a configuration without the check
    assert stores is None and detail is not None and "no store check" in detail
    # An older configuration sends the check to the origin like a track: its refusal (no token) is no verdict.
    stores, detail = judge_store_check(Answer(401, "NONE", checked=False), Answer(401, "NONE", checked=False))
    assert stores is None and detail is not None and "no store check" in detail


def test_distinct_origins_of_many_track_urls_are_those_of_each_url() -> None:
    """The origins a token may travel to, found from each URL's scheme and authority only once per prefix:
    the same set as asking each URL, whatever its authority holds (user info, a port, IPv6, a query or a
    fragment right after the host)."""
    urls = ["http://h:8/a/b", "https://u:p@h/x?y=/z", "http://h?x=1/2", "http://h#f/g", "http://h", "HTTP://H/a",
            "http://[::1]:9/a", None, "http://h:8/c", *(f"https://cdn.example/t/{i}.wav" for i in range(1000))]
    assert distinct_origins(urls) == {url_origin(url) for url in urls if url}
    assert len(distinct_origins(urls)) == 6
