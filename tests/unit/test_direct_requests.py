"""A track's requests at its origin go straight through httpx's connection pool once the origin has answered the
client without a redirect or a cookie (cache/http.py, ``HttpClient._direct_request``): the same request on the
wire (token, headers), the same refresh on 401, and the client again for an origin that redirects."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mixvfs.cache.errors import AuthRejected
from mixvfs.cache.http import HttpClient
from mixvfs.cache.token import TokenSource
from tests.faults.helpers import cloud_track
from tools.devserver import DevServer

SIZE = 40_000


@pytest.fixture
def client_sends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs httpx's client sent (each redirect followed and each auth retry is inside one send)."""
    sent: list[str] = []
    send = httpx.Client.send

    def counted(self: httpx.Client, request: httpx.Request, **kwargs: object) -> httpx.Response:
        sent.append(str(request.url))
        return send(self, request, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx.Client, "send", counted)
    return sent


def fetch(client: HttpClient, url: str) -> bytes:
    with client.get(url, size=SIZE) as body:
        return b"".join(body.chunks)


def test_after_the_first_answer_an_origin_is_asked_directly_with_the_same_request(
        server_root: Path, client_sends: list[str]) -> None:
    path = cloud_track(server_root, "a", SIZE)["cloud_stream_path"]
    expected = (server_root / path.lstrip("/")).read_bytes()
    with DevServer(server_root, tokens=["the-token"]) as api:
        client = HttpClient(tokens=TokenSource(value="the-token"))
        try:
            assert [fetch(client, api.url_for(path)) for _ in range(3)] == [expected] * 3
            with client.get(api.url_for(path), start=SIZE - 10, size=SIZE) as body:
                assert (body.start, b"".join(body.chunks)) == (SIZE - 10, expected[-10:])
        finally:
            client.close()
        gets = api.requests("GET")
    assert len(client_sends) == 1  # the first: it tells that the origin answers without a redirect
    whole, tail = ("Bearer the-token", "identity", None), ("Bearer the-token", "identity", f"bytes={SIZE - 10}-")
    assert [(g["status"], g["auth"], g["accept_encoding"], g["range"]) for g in gets] == [
        (200, *whole)] * 3 + [(206, *tail)]


def test_a_token_refused_directly_is_refreshed_once_and_the_request_sent_again(
        tmp_path: Path, server_root: Path, client_sends: list[str]) -> None:
    path = cloud_track(server_root, "a", SIZE)["cloud_stream_path"]
    calls = tmp_path / "calls"
    command = f"echo run >> {calls}; echo the-token"
    with DevServer(server_root, tokens=["the-token"]) as api:
        client = HttpClient(tokens=TokenSource(command=command))
        try:
            fetch(client, api.url_for(path))  # through the client: the origin is now asked directly
            api.set_faults({path: {"status": 401, "times": 1}})
            assert len(fetch(client, api.url_for(path))) == SIZE
            api.set_faults({path: {"status": 401}})
            with pytest.raises(AuthRejected, match="token rejected"):
                fetch(client, api.url_for(path))
        finally:
            client.close()
        statuses = [g["status"] for g in api.requests("GET")]
    assert len(client_sends) == 1
    assert statuses == [200, 401, 200, 401, 401]  # each 401: one refresh and one retry, never a storm
    assert calls.read_text().count("run") == 3  # the first token, then one refresh per refused request


def test_an_origin_that_starts_to_redirect_is_asked_through_the_client_which_drops_the_token(
        tmp_path: Path, server_root: Path, client_sends: list[str]) -> None:
    path = cloud_track(server_root, "a", SIZE)["cloud_stream_path"]
    cdn_root = tmp_path / "cdn"
    (cdn_root / "stream").mkdir(parents=True)
    (cdn_root / path.lstrip("/")).write_bytes((server_root / path.lstrip("/")).read_bytes())
    with DevServer(cdn_root) as cdn, DevServer(server_root, tokens=["the-token"]) as api:
        client = HttpClient(tokens=TokenSource(value="the-token"))
        try:
            fetch(client, api.url_for(path))
            api.set_faults({path: {"redirect": cdn.url_for(path)}})
            assert len(fetch(client, api.url_for(path))) == SIZE  # direct: a redirect, then the client follows
            assert len(fetch(client, api.url_for(path))) == SIZE  # the client only, from now on
        finally:
            client.close()
        origin = [(g["status"], g["auth"]) for g in api.requests("GET")]
        at_cdn = [(g["status"], g["auth"]) for g in cdn.requests("GET")]
    assert origin == [(200, "Bearer the-token")] + [(302, "Bearer the-token")] * 3
    assert at_cdn == [(200, None)] * 2
    assert len(client_sends) == 3


def test_with_a_proxy_from_the_environment_every_request_goes_through_the_client(
        server_root: Path, monkeypatch: pytest.MonkeyPatch, client_sends: list[str]) -> None:
    path = cloud_track(server_root, "a", SIZE)["cloud_stream_path"]
    monkeypatch.setenv("no_proxy", "*")  # a proxy named, and this server exempted from it: the client decides
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")

    def fetch_twice() -> None:
        with DevServer(server_root) as api:
            client = HttpClient()
            try:
                assert [len(fetch(client, api.url_for(path))) for _ in range(2)] == [SIZE] * 2
            finally:
                client.close()

    fetch_twice()
    assert len(client_sends) == 2
    monkeypatch.delenv("http_proxy")  # no_proxy alone names no proxy: asked directly after the first
    fetch_twice()
    assert len(client_sends) == 3
