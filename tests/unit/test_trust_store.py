"""The TLS context a runtime's client verifies servers with, made on a thread of its own while the cache opens
(``cache/http.py``'s ``trust_store_later``): the same as httpx's own, honouring ``SSL_CERT_FILE``, its error the
caller's, and used for real against an HTTPS server with a certificate of its own."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mixvfs.cache.errors import CertificateNotTrusted, ConfigError
from mixvfs.cache.http import HttpClient, trust_store_later
from tests.conftest import missing_part


def test_the_context_is_httpxs_own_and_verifies() -> None:
    context = trust_store_later()()
    ours, theirs = context.get_ca_certs(), httpx.create_ssl_context().get_ca_certs()
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert ours and ours == theirs


@pytest.mark.parametrize("kind", ["missing", "not a certificate", "a folder"])
def test_an_unreadable_trust_store_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         kind: str) -> None:
    bad = tmp_path / "certs.pem"
    if kind == "not a certificate":
        bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    elif kind == "a folder":
        bad.mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(bad))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    context = trust_store_later()
    with pytest.raises(ConfigError) as said:
        context()
    assert f"cannot read the TLS certificates to trust from SSL_CERT_FILE={bad}: " in str(said.value)
    assert "\n" not in str(said.value)
    if kind == "not a certificate":
        assert "certs.pem: not certificates OpenSSL can read" in str(said.value)


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate for that address: its URL and the cert."""
    if shutil.which("openssl") is None:
        missing_part("no openssl command to make a certificate", "install openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    (tmp_path / "t.mp3").write_bytes(b"\xff\xfb" + b"x" * 998)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_is_trusted_through_the_context_and_refused_without_it(https_server: tuple[str, Path],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    base, cert = https_server
    untrusting = HttpClient()
    try:
        with pytest.raises(CertificateNotTrusted):
            untrusting.head(f"{base}/t.mp3")
    finally:
        untrusting.close()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    trusting = HttpClient(ssl_context=trust_store_later()())
    try:
        assert trusting.head(f"{base}/t.mp3").size == 1000
    finally:
        trusting.close()
