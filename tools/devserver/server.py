"""The command line: ``python -m tools.devserver ROOT ...``."""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tools.devserver.common import base_url, write_atomic
from tools.devserver.handler import DevHTTPServer
from tools.devserver.state import ServerConfig, ServerState

_EPILOG = """\
How URLs map to files: GET or HEAD /PATH serves ROOT/PATH (URL-decoded); folders, missing
files and paths leading out of ROOT answer 404. So a manifest with "server": "http://127.0.0.1:8765"
and a track with "cloud_stream_path": "/stream/hook.flac" gets ROOT/stream/hook.flac.

Example (Ctrl-C stops it):
  python -m tools.devserver ~/mixvfs-try/server --port 8765 --token try-me

With --faults FILE it misbehaves on purpose (errors, cut or slow bodies, odd headers), to reproduce a
problem: README.md, "Reproducing a problem: the dev server's faults file", lists every field with an
example. The request log and the test controls are described at the top of tools/devserver/__init__.py."""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Local stand-in for the Chad Music file server: serves the files under ROOT over HTTP,\n"
                    "with byte ranges, ETags and conditional requests, as mixvfs expects of a server.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, metavar="ROOT", help="folder whose files are served")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=0,
                   help="port to listen on (default: 0, a free port the OS picks; the first line printed, "
                        "'listening on URL', says which)")
    p.add_argument("--token", action="append", default=[],
                   help="a bearer token to accept (repeatable); with no --token and no --token-file every "
                        "request is served without one")
    p.add_argument("--token-file", type=Path, help="file holding the valid token, re-read per request")
    p.add_argument("--faults", type=Path, help="JSON faults file, re-read per request")
    p.add_argument("--log", type=Path, help="append one JSON line per request here")
    p.add_argument("--port-file", type=Path, help="write the bound port here (atomically)")
    p.add_argument("--tls", type=Path, metavar="PEM",
                   help="serve HTTPS with the certificate and key in this PEM file (e.g. a self-signed one, to "
                        "see what mixvfs says of a certificate it does not trust)")
    return p.parse_args(argv)


def _install_stop_handlers(server: DevHTTPServer) -> None:
    def shut_down() -> None:
        server.state.holds.stop()  # parked requests hang up instead of outliving the server
        server.shutdown()

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() blocks until serve_forever() returns, which runs in this very thread.
        threading.Thread(target=shut_down, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    root = args.root.resolve()
    if not root.is_dir():
        print(f"devserver: not a directory: {root}", file=sys.stderr)
        return 2
    state = ServerState(ServerConfig(root, tuple(args.token), args.token_file, args.faults, args.log))
    server = DevHTTPServer((args.host, args.port), state)
    if args.tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls)
        # The handshake in the handler's thread (its first read), not in accept: a client refusing the
        # certificate must not hold up the loop that accepts the others.
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    # Handlers first: a caller may send SIGTERM the instant it learns the port.
    _install_stop_handlers(server)
    port = int(server.server_address[1])
    if args.port_file:
        write_atomic(args.port_file, str(port))
    print(f"listening on {base_url(args.host, port, 'https' if args.tls else 'http')}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


