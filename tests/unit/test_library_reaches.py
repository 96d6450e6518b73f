"""Where mixvfs reaches into a library's private parts, the reach is checked and a failure is loud:
httpcore's per-connection read size (h11's receive buffer and httpcore's idle check: test_receive_buffer.py),
mfusepy's private ``_libfuse``; the reaches are applied when a runtime or client starts, never at import; and
the errno guard's cause chain (kept in debug logs)."""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from mixvfs import host
from mixvfs.cache.errors import CacheError, FetchError
from mixvfs.cache.http import CHUNK, httpx_errors, install_reaches, read_bigger_chunks
from mixvfs.cache.receive_buffer import HEAD_READ
from mixvfs.vfs.adapter.errno_map import fuse_errors
from tests.conftest import fuse_problem, missing_part
from tests.faults.helpers import cloud_track
from tools.devserver import DevServer

# -- httpcore's READ_NUM_BYTES -----------------------------------------------------------------------------


class RecordingStream(httpcore.NetworkStream):
    """A real socket stream that notes how many bytes each ``recv`` asked for and got."""

    def __init__(self, inner: httpcore.NetworkStream, reads: list[tuple[int, int]]) -> None:
        self.inner = inner
        self.reads = reads

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self.inner.read(max_bytes, timeout)
        self.reads.append((max_bytes, len(data)))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, timeout)

    def close(self) -> None:
        self.inner.close()

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class RecordingBackend(httpcore.SyncBackend):
    def __init__(self) -> None:
        self.reads: list[tuple[int, int]] = []

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return RecordingStream(super().connect_tcp(*args, **kwargs), self.reads)


def test_httpcore_connections_read_a_mebibyte_per_recv_of_a_body(server_root: Path, devserver: DevServer) -> None:
    """The reaches installed (as the runtime's start does), httpcore's HTTP/1.1 connections ask the socket for
    1 MiB at a time of a body (the 2.5x download speed-up; a renamed attribute would leave them at 64 KiB), and
    for 16 KiB while the headers are awaited: the body bytes that come with them are copied once more."""
    install_reaches()
    assert httpcore.HTTP11Connection.READ_NUM_BYTES == CHUNK == 1 << 20
    size = 3 * CHUNK
    entry = cloud_track(server_root, "big", size)
    backend = RecordingBackend()
    with httpcore.ConnectionPool(network_backend=backend) as pool:
        for _ in range(2):  # the second on the kept connection: its headers are read small again
            backend.reads.clear()
            response = pool.request("GET", devserver.url_for(entry["cloud_stream_path"]))
            assert response.status == 200 and len(response.content) == size
            asked = [asked for asked, _ in backend.reads]
            heads = len(asked) - len(list(itertools.dropwhile(lambda n: n == HEAD_READ, asked)))
            assert heads >= 1 and asked[heads:] and set(asked[heads:]) == {CHUNK}, asked
            assert sum(got for _, got in backend.reads) > size  # the body and its headers came through those reads


class WithoutReadSize:
    """A stand-in for a future httpcore connection class that no longer has READ_NUM_BYTES."""


class WithReadSize:
    READ_NUM_BYTES = 64 * 1024


def test_a_missing_read_size_is_a_logged_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mixvfs.cache.http"):
        assert read_bigger_chunks(WithoutReadSize) is False
    assert not hasattr(WithoutReadSize, "READ_NUM_BYTES")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "WithoutReadSize.READ_NUM_BYTES is gone" in record.getMessage()
    assert "64 KiB per recv" in record.getMessage()


def test_a_read_size_that_is_no_number_is_left_alone_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    class Renamed:
        READ_NUM_BYTES = property(lambda self: 4096)  # became something we must not overwrite

    with caplog.at_level(logging.WARNING, logger="mixvfs.cache.http"):
        assert read_bigger_chunks(Renamed) is False
    assert isinstance(Renamed.__dict__["READ_NUM_BYTES"], property)
    assert "READ_NUM_BYTES is gone" in caplog.text


def test_the_read_size_is_set_where_it_exists(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mixvfs.cache.http"):
        assert read_bigger_chunks(WithReadSize, 12345) is True
    assert WithReadSize.READ_NUM_BYTES == 12345
    assert not caplog.records


# -- applied at a start, never at import ----------------------------------------------------------------------

UNTOUCHED = """
import os, sys
import h11._connection, h11._receivebuffer, httpcore
import mixvfs.cache.http, mixvfs.vfs.runtime, mixvfs.vfs.commands.cli, mixvfs.vfs.commands.cachectl
import mixvfs.vfs.fs.mount, mixvfs.vfs.fs.sessionfs
try:
    import mixvfs.vfs.adapter.fuse_ops
except (OSError, AttributeError):
    pass  # no libfuse here: the rest still counts
changed = []
if httpcore.HTTP11Connection.READ_NUM_BYTES != 64 * 1024:
    changed.append("httpcore's read size")
if h11._connection.ReceiveBuffer is not h11._receivebuffer.ReceiveBuffer:
    changed.append("h11's receive buffer")
if getattr(httpcore.HTTP11Connection.has_expired, "refuses_leftovers", False):
    changed.append("httpcore's idle check")
if "FUSE_LIBRARY_NAME" in os.environ:
    changed.append("FUSE_LIBRARY_NAME")
if "httpx._main" in sys.modules and sys.modules["httpx._main"] is None:
    changed.append("httpx's command-line tool")
print(changed)
"""

SKIPPED_TOOL = """
import sys
from mixvfs.vfs.commands import output
output.skip_httpx_command_line_tool()
import httpx
with httpx.Client() as client:  # the library itself is whole
    pass
print(sorted(m for m in ("httpx._main", "click", "rich.console", "pygments") if sys.modules.get(m) is not None))
"""


def test_importing_mixvfs_changes_no_library_and_no_environment() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FUSE_LIBRARY_NAME"}
    done = subprocess.run([sys.executable, "-c", UNTOUCHED], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stderr


def test_a_command_loads_no_part_of_httpxs_command_line_tool() -> None:
    done = subprocess.run([sys.executable, "-c", SKIPPED_TOOL], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stderr


def test_httpxs_command_line_tool_is_where_the_skip_expects_it() -> None:
    """The skip relies on httpx importing ``httpx._main`` inside ``try/except ImportError``: a newer httpx that
    stopped doing so would fail every command at start."""
    source = Path(httpx.__file__).read_text()
    assert "from ._main import main" in source and "except ImportError" in source


def test_an_http_client_installs_the_reaches() -> None:
    from mixvfs.cache.http import HttpClient

    HttpClient().close()
    assert httpcore.HTTP11Connection.READ_NUM_BYTES == CHUNK
    assert getattr(httpcore.HTTP11Connection.has_expired, "refuses_leftovers", False)


# -- mfusepy's private _libfuse ------------------------------------------------------------------------------

# What vfs/adapter takes from mfusepy's private ``_libfuse`` (the libfuse it loaded; fuse_ops.py hands it on at
# six places: the kernel's entry notices, the exit watch, passthrough's session descriptor, library version and
# feature flag, and invalidate_path), besides the optional calls looked up with getattr.
LIBFUSE_CALLS = {
    2: {"fuse_get_context", "fuse_get_session", "fuse_session_exited", "fuse_lowlevel_notify_inval_entry",
        "fuse_lowlevel_notify_inval_inode", "fuse_session_next_chan"},
    3: {"fuse_get_context", "fuse_get_session", "fuse_session_exited", "fuse_lowlevel_notify_inval_entry",
        "fuse_lowlevel_notify_inval_inode", "fuse_session_fd"},
}


def test_mfusepys_private_libfuse_holds_what_the_adapter_calls() -> None:
    problem = fuse_problem()
    if problem is not None:
        missing_part(f"no libfuse to check ({problem})", "CI must load libfuse")
    host.prefer_libfuse3()
    import mfusepy

    lib: Any = mfusepy._libfuse
    assert isinstance(lib, ctypes.CDLL)
    # fuse_get_context().contents.fuse: mfusepy's own declaration of the context, read by the adapter
    context: Any = lib.fuse_get_context.restype
    assert dict(context._type_._fields_)["fuse"] is ctypes.c_void_p
    missing = [name for name in sorted(LIBFUSE_CALLS[mfusepy.fuse_version_major]) if not hasattr(lib, name)]
    assert not missing, f"libfuse {mfusepy.fuse_version_major} lacks {missing}"


# -- the errno guard keeps the cause chain in debug logs -----------------------------------------------------


def failing_store() -> None:
    try:
        os.pread(-1, 1, 0)  # EBADF: a real OSError, as the store would meet one
    except OSError as exc:
        raise CacheError("the cache database did not take the download") from exc


class Answer(OSError):
    """What the adapter answers the kernel with (mfusepy's FuseOSError)."""

    def __init__(self, code: int) -> None:
        super().__init__(code, os.strerror(code))


@fuse_errors(Answer)
def read(kind: str) -> bytes:
    if kind == "cache":
        failing_store()
    if kind == "fetch":
        try:
            failing_store()
        except CacheError:
            raise FetchError("cannot store the download") from None  # the cause hidden on purpose
    if kind == "context":
        try:
            failing_store()
        except CacheError as exc:
            raise FetchError(f"the download failed: {exc}")  # noqa: B904  (an implicit context)
    if kind == "crash":
        try:
            failing_store()
        except CacheError:
            raise KeyError("a bug")  # noqa: B904
    if kind == "enoent":
        raise Answer(errno.ENOENT)
    if kind == "oserror":
        os.pread(-1, 1, 0)
    return b""


def guard_records(caplog: pytest.LogCaptureFixture, kind: str) -> tuple[OSError, list[logging.LogRecord]]:
    with caplog.at_level(logging.DEBUG, logger="mixvfs.vfs.adapter.errno_map"), pytest.raises(OSError) as raised:
        read(kind)
    return raised.value, [r for r in caplog.records if r.name == "mixvfs.vfs.adapter.errno_map"]


def test_the_guard_logs_the_whole_cause_chain_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    error, records = guard_records(caplog, "cache")
    assert error.errno == errno.EIO
    # What reaches mfusepy still carries no chain: its own log line and any traceback stay short.
    assert error.__cause__ is None and error.__suppress_context__
    [record] = records
    assert record.levelno == logging.DEBUG
    message = record.getMessage()
    assert message.startswith("read: EIO from CacheError: the cache database did not take the download")
    assert "<- OSError: [Errno 9] Bad file descriptor" in message
    assert record.exc_info is not None  # the traceback shows both, with where they were raised
    logged = record.exc_info[1]
    assert logged is not None and isinstance(logged.__cause__, OSError)


def test_the_chain_follows_an_implicit_context_but_not_one_hidden_by_from_none(
        caplog: pytest.LogCaptureFixture) -> None:
    _, [record] = guard_records(caplog, "context")
    assert "FetchError: the download failed" in record.getMessage()
    assert "<- CacheError: the cache database did not take the download <- OSError: [Errno 9]" in record.getMessage()
    caplog.clear()
    _, [record] = guard_records(caplog, "fetch")
    # `from None` means "this detail is not for the reader": the guard honours it as Python's traceback does.
    assert record.getMessage() == "read: EIO from FetchError: cannot store the download"


def test_a_crash_is_logged_as_an_error_with_its_chain(caplog: pytest.LogCaptureFixture) -> None:
    error, [record] = guard_records(caplog, "crash")
    assert error.errno == errno.EIO
    assert record.levelno == logging.ERROR
    assert "KeyError: 'a bug' <- CacheError: the cache database did not take the download <- OSError" in \
        record.getMessage()


def test_an_os_error_keeps_its_errno_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    error, [record] = guard_records(caplog, "oserror")
    assert isinstance(error, Answer) and error.errno == errno.EBADF
    assert record.getMessage() == "read: EBADF from OSError: [Errno 9] Bad file descriptor"


def test_a_deliberate_errno_answer_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    error, records = guard_records(caplog, "enoent")
    assert error.errno == errno.ENOENT
    assert records == []  # every failed lookup of a missing name would otherwise be a debug line


def test_a_thread_whose_thread_state_is_new_at_each_call_keeps_one_sqlite_connection(tmp_path: Path) -> None:
    """libfuse's threads reach Python through ctypes, which gives them a fresh thread state (so fresh
    ``threading.local`` data) at every callback: diskcache's per-thread-local connection was opened anew,
    with its pragmas, at every FUSE open. The cache keeps it per OS thread instead."""
    import threading

    from mixvfs.cache.store import BlobStore

    store = BlobStore(tmp_path / "cache", max_size=1 << 30, max_age=86400)
    try:
        caches = [store._cache, store.index._db]
        first = [cache._con for cache in caches]
        for cache in caches:
            cache._local = threading.local()  # type: ignore[attr-defined]  # a new thread state, to diskcache
        assert [cache._con for cache in caches] == first
        assert store.infos() == [] and store.index.lookup("nothing") is None  # and they still work
    finally:
        store.close()


def test_each_thread_gets_its_own_sqlite_connection(tmp_path: Path) -> None:
    import threading

    from mixvfs.cache.store import BlobStore

    store = BlobStore(tmp_path / "cache", max_size=1 << 30, max_age=86400)
    seen: list[object] = []
    try:
        worker = threading.Thread(target=lambda: seen.append(store._cache._con))
        worker.start()
        worker.join()
        assert seen and seen[0] is not store._cache._con
    finally:
        store.close()


def test_diskcaches_transaction_keeps_its_mark_and_its_rollback_where_the_cache_overrides_them() -> None:
    """CheckedCache keeps diskcache's ``_txn_id`` per thread and makes ``_sql``'s ROLLBACK of a transaction SQLite
    already ended a no-op: both only mean something while ``_transact`` marks and rolls back through them."""
    import inspect

    import diskcache

    source = inspect.getsource(diskcache.Cache._transact)  # type: ignore[attr-defined]
    assert "self._txn_id = tid" in source and "assert self._txn_id == tid" in source
    assert "sql = self._sql" in source and "sql('ROLLBACK')" in source


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@fuse_errors(Answer)
def fetch(url: str) -> bytes:
    with httpx.Client() as client, httpx_errors(url):
        return client.get(url).content


def test_a_network_failure_is_eio_and_its_httpx_cause_stays_in_the_logged_chain(
        caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/a.wav?signature=secret"
    with caplog.at_level(logging.DEBUG, logger="mixvfs.vfs.adapter.errno_map"), pytest.raises(OSError) as raised:
        fetch(url)
    assert raised.value.errno == errno.EIO
    [record] = [r for r in caplog.records if r.name == "mixvfs.vfs.adapter.errno_map"]
    message = record.getMessage()
    assert message.startswith("fetch: EIO from ServerUnreachable: server unreachable: cannot connect to 127.0.0.1")
    assert "<- ConnectError: " in message  # what the network said, not only our summary of it
    assert "secret" not in message
