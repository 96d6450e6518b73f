"""cache/decoding.py: an encoded body is decoded whole (every gzip member) or refused (BadBody), however the
bytes are split into chunks; a compressed stream that stops early is never a short track."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Iterator

import brotli
import pytest

from mixvfs.cache.decoding import check_decodable, decoded
from mixvfs.cache.errors import BadBody

DATA = random.Random(3).randbytes(200_000) + b"\0" * 100_000  # some of it compressible


def pieces(body: bytes, seed: int) -> Iterator[bytes]:
    """``body`` as a server's recv()s might bring it: 1 byte to 64 KiB at a time."""
    rng = random.Random(seed)
    at = 0
    while at < len(body):
        size = rng.choice((1, 2, 3, 10, 4096, 65536))
        yield body[at:at + size]
        at += size


def decode(body: bytes, encoding: str, seed: int = 0) -> bytes:
    return b"".join(decoded(pieces(body, seed), encoding))


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("encoding", "encode"), [
    ("gzip", gz),
    ("x-gzip", gz),
    ("deflate", lambda d: zlib.compress(d, 1)),
    ("deflate", lambda d: zlib.compress(d, 1)[2:-4]),  # raw deflate, as some servers send it
    ("br", lambda d: brotli.compress(d, quality=1)),
    ("gzip, br", lambda d: brotli.compress(gz(d), quality=1)),  # gzip applied first, br second
])
def test_whole_bodies_decode_to_the_bytes(seed, encoding, encode):
    assert decode(encode(DATA), encoding, seed) == DATA


@pytest.mark.parametrize("seed", range(5))
def test_every_gzip_member_is_decoded(seed):
    body = gz(DATA[:1000]) + gz(DATA[1000:150_000]) + gz(b"") + gz(DATA[150_000:])
    assert decode(body, "gzip", seed) == DATA


def test_zero_padding_after_gzip_is_ignored_other_data_is_not():
    assert decode(gz(DATA) + b"\0" * 512, "gzip") == DATA
    with pytest.raises(BadBody, match="data after its end"):
        decode(gz(DATA) + b"<html>oops</html>", "gzip")
    with pytest.raises(BadBody, match="ended before the end"):
        decode(gz(DATA) + b"\x1f", "gzip")  # the start of a member that never came


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("encoding", "encode"), [
    ("gzip", gz),
    ("deflate", lambda d: zlib.compress(d, 1)),
    ("br", lambda d: brotli.compress(d, quality=1)),
])
@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_stream_that_stops_early_is_refused_never_short(seed, encoding, encode, keep):
    whole = encode(DATA)
    with pytest.raises(BadBody):
        decode(whole[:int(len(whole) * keep)], encoding, seed)


def test_damaged_and_empty_bodies_are_refused():
    body = bytearray(gz(DATA))
    body[len(body) // 2] ^= 0xFF
    with pytest.raises(BadBody):
        decode(bytes(body), "gzip")
    for encoding in ("gzip", "deflate", "br"):
        with pytest.raises(BadBody):
            decode(b"", encoding)


def test_codings_mixvfs_cannot_undo_are_named():
    for coding in ("compress", "zstd", "gzip, compress"):
        with pytest.raises(BadBody, match="cannot decode"):
            check_decodable(coding)
