"""Undo the content coding a server applied although we asked for ``identity``, and prove the body whole.

Servers and CDNs compress anyway. httpx's own decoders (``Response.iter_bytes``) stop at the end of a gzip
stream's first member and never check that a stream reached its end: a body cut inside the compressed
data, or a second member (``cat a.gz b.gz``, which RFC 1952 allows), came out as a short track that the
download, having no length to hold it to (the encoded length is not the track's), stored as whole. So the
body is read raw and decoded here, with zlib and brotli doing the decoding, and:

* gzip: every member, one after another; only zero padding may follow the last one;
* deflate: zlib's format, or raw deflate as some servers send it (as httpx does, decided on the first bytes);
* br: brotli;
* the stream must reach its end: an encoded body that stops early is :class:`BadBody`, never a short track.

Several codings (``gzip, br``) are undone in reverse order of application.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Protocol

import brotli

from mixvfs.cache.errors import BadBody

GZIP_MAGIC = b"\x1f\x8b"


class Decoder(Protocol):
    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes:
        """The last bytes; raises :class:`BadBody` unless the stream reached its end."""
        ...


class GzipDecoder:
    def __init__(self) -> None:
        self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._members = 0
        self._after = b""  # bytes after a member's end, not yet known to start another one

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        while data:
            if self._member.eof:  # between members: another one, or padding
                self._after += data
                if len(self._after) < len(GZIP_MAGIC) and GZIP_MAGIC.startswith(self._after):
                    return b"".join(out)
                if not self._after.startswith(GZIP_MAGIC):
                    if self._after.strip(b"\0"):
                        raise BadBody("the server's gzip body has data after its end that is not gzip")
                    self._after = b""
                    return b"".join(out)
                data, self._after = self._after, b""
                self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                out.append(self._member.decompress(data))
            except zlib.error as exc:
                raise BadBody(f"the server's gzip body is damaged ({exc})") from exc
            if self._member.eof:
                self._members += 1
            data = self._member.unused_data if self._member.eof else b""
        return b"".join(out)

    def finish(self) -> bytes:
        if not self._member.eof or self._after.strip(b"\0"):
            raise BadBody("the server's gzip body ended before the end of its compressed data")
        return b""


class DeflateDecoder:
    def __init__(self) -> None:
        self._inflate: zlib._Decompress | None = None  # chosen once the first two bytes are here
        self._start = b""

    def feed(self, data: bytes) -> bytes:
        if self._inflate is None:
            self._start += data
            if len(self._start) < 2:
                return b""
            data, self._start = self._start, b""
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS if zlib_header(data) else -zlib.MAX_WBITS)
        if self._inflate.eof:
            if data:
                raise BadBody("the server's deflate body has data after its end")
            return b""
        try:
            out = self._inflate.decompress(data)
        except zlib.error as exc:
            raise BadBody(f"the server's deflate body is damaged ({exc})") from exc
        if self._inflate.eof and self._inflate.unused_data:
            raise BadBody("the server's deflate body has data after its end")
        return out

    def finish(self) -> bytes:
        if self._inflate is None or not self._inflate.eof:
            raise BadBody("the server's deflate body ended before the end of its compressed data")
        return b""


def zlib_header(start: bytes) -> bool:
    """RFC 1950's two-byte header (deflate method, check bits): "deflate" as the RFC means it; else raw
    deflate, which some servers send under that name (httpx accepts both, and so do we)."""
    cmf, flg = start[0], start[1]
    return cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0


class BrotliDecoder:
    def __init__(self) -> None:
        self._brotli = brotli.Decompressor()

    def feed(self, data: bytes) -> bytes:
        try:
            return bytes(self._brotli.process(data))
        except brotli.error as exc:
            raise BadBody(f"the server's br body is damaged ({exc})") from exc

    def finish(self) -> bytes:
        if not self._brotli.is_finished():
            raise BadBody("the server's br body ended before the end of its compressed data")
        return b""


DECODERS: dict[str, type[GzipDecoder] | type[DeflateDecoder] | type[BrotliDecoder]] = {
    "gzip": GzipDecoder, "x-gzip": GzipDecoder, "deflate": DeflateDecoder, "br": BrotliDecoder}


def check_decodable(encoding: str) -> None:
    for coding in encoding.split(", "):
        if coding not in DECODERS:
            raise BadBody(f"the server sent an encoded body ({coding}) that mixvfs cannot decode")


def decoded(chunks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """The bytes of ``chunks`` (a raw body) with the codings of ``encoding`` ("gzip", "gzip, br") undone."""
    check_decodable(encoding)
    decoders: list[Decoder] = [DECODERS[coding]() for coding in reversed(encoding.split(", "))]
    for chunk in chunks:
        for decoder in decoders:
            chunk = decoder.feed(chunk)
        if chunk:
            yield chunk
    tail = b""
    for decoder in decoders:
        tail = decoder.feed(tail) if tail else b""
        tail += decoder.finish()
    if tail:
        yield tail
