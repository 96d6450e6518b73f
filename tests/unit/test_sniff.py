"""Extension sniffing: content types, paths, magic bytes and their precedence."""

from __future__ import annotations

import struct

import pytest

from mixvfs.cache.http import looks_like_error_body
from mixvfs.vfs.session.sniff import (
    MAGIC_BYTES_NEEDED,
    choose_ext,
    ext_from_content_type,
    ext_from_magic,
    ext_from_path,
)

# --- content types -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "ext"),
    [
        ("audio/flac", "flac"),
        ("audio/x-flac", "flac"),
        ("audio/flac; charset=x", "flac"),
        ("AUDIO/FLAC ; foo=bar", "flac"),
        ("audio/wav", "wav"),
        ("audio/x-wav", "wav"),
        ("audio/wave", "wav"),
        ("audio/vnd.wave", "wav"),
        ("audio/vnd.wave; codec=1", "wav"),
        ("audio/mpeg", "mp3"),
        ("audio/mp3", "mp3"),
        ("audio/mp4", "m4a"),
        ("audio/x-m4a", "m4a"),
        ("audio/m4a", "m4a"),
        ("audio/aac", "aac"),
        ("audio/aiff", "aiff"),
        ("audio/x-aiff", "aiff"),
        ("audio/ogg", "ogg"),
        ("audio/vorbis", "ogg"),
        ("application/ogg", "ogg"),
        ("audio/opus", "opus"),
    ],
)
def test_ext_from_content_type_known(content_type: str, ext: str) -> None:
    assert ext_from_content_type(content_type) == ext


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "   ",
        "application/octet-stream",
        "binary/octet-stream",
        "text/html",
        "text/plain; charset=utf-8",
        "application/json",
        "audio/x-unknown-thing",
        "video/mp4",
    ],
)
def test_ext_from_content_type_generic_is_none(content_type: str | None) -> None:
    assert ext_from_content_type(content_type) is None


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "text/html; charset=utf-8",
        "TEXT/HTML",
        "text/plain",
        "application/json",
        "application/xml",
        "text/xml",
        "application/problem+json",
    ],
)
def test_looks_like_error_body_true(content_type: str) -> None:
    assert looks_like_error_body(content_type) is True


@pytest.mark.parametrize(
    "content_type",
    [None, "", "audio/flac", "audio/mpeg", "application/octet-stream", "binary/octet-stream", "application/ogg"],
)
def test_looks_like_error_body_false(content_type: str | None) -> None:
    assert looks_like_error_body(content_type) is False


# --- paths -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "ext"),
    [
        ("/music/a.wav", "wav"),
        ("/music/A.FLAC", "flac"),
        ("x.mp3", "mp3"),
        ("/m/x.m4a", "m4a"),
        ("/m/x.aac", "aac"),
        ("/m/x.aif", "aif"),
        ("/m/x.aiff", "aiff"),
        ("/m/x.ogg", "ogg"),
        ("/m/x.opus", "opus"),
        ("/m/x.alac", "alac"),
        ("/m/x.wma", "wma"),
        ("/m/my.track.v2.flac", "flac"),
        ("/stream/c7.mp3?sig=abc.def&x=1", "mp3"),
        ("/stream/c7.flac#t=10", "flac"),
        ("https://cdn.example.com/a/b.wav?token=x.y", "wav"),
        ("https://cdn.example.com/a/b.ogg#frag", "ogg"),
        ("file:///home/dj/Track.AIFF", "aiff"),
        ("/music/Track #1.wav", "wav"),
        ("/music/Why?.mp3", "mp3"),
    ],
)
def test_ext_from_path_known(path: str, ext: str) -> None:
    assert ext_from_path(path) == ext


@pytest.mark.parametrize(
    "path",
    [
        None,
        "",
        "/stream/c7",
        "/stream/c7?format=raw",
        "https://cdn.example.com/stream/c7?name=x",
        "https://cdn.example.com/a.wav.d/stream",
        "/music/notes.txt",
        "/music/.wav/",
        "/music/archive.zip",
        "/music/wav",
    ],
)
def test_ext_from_path_unknown_is_none(path: str | None) -> None:
    assert ext_from_path(path) is None


# --- magic -----------------------------------------------------------------------


def _ogg_page(packet: bytes) -> bytes:
    # 27-byte page header with one segment, then the segment table and the packet.
    header = b"OggS" + bytes([0, 2]) + bytes(8) + bytes(4) + bytes(4) + bytes(4) + bytes([1])
    assert len(header) == 27
    return header + bytes([len(packet)]) + packet


def _id3(tag_body_size: int) -> bytes:
    size = tag_body_size
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3" + bytes([4, 0, 0]) + syncsafe + bytes(tag_body_size)


@pytest.mark.parametrize(
    ("head", "ext"),
    [
        (b"RIFF" + struct.pack("<I", 1000) + b"WAVEfmt ", "wav"),
        (b"RF64" + b"\xff\xff\xff\xff" + b"WAVEds64", "wav"),
        (b"fLaC\x00\x00\x00\x22" + bytes(4), "flac"),
        (b"ID3\x04\x00\x00\x00\x00\x10\x00", "mp3"),
        (b"\xff\xfb\x90\x64" + bytes(8), "mp3"),  # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz
        (b"\xff\xf3\x90\x64" + bytes(8), "mp3"),  # MPEG-2 Layer III
        (b"\xff\xe3\x90\x64" + bytes(8), "mp3"),  # MPEG-2.5 Layer III (0xFFE sync only)
        (b"\xff\xf1\x50\x80" + bytes(8), "aac"),  # ADTS
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "m4a"),
        (b"\x00\x00\x00\x1cftypmp42\x00\x00\x00\x00", "m4a"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00", "m4a"),
        (b"FORM\x00\x00\x10\x00AIFFCOMM", "aiff"),
        (b"FORM\x00\x00\x10\x00AIFCFVER", "aiff"),
        (b"OggS\x00\x02" + bytes(6), "ogg"),
        (_ogg_page(b"\x01vorbis" + bytes(22)), "ogg"),
        (_ogg_page(b"OpusHead\x01\x02" + bytes(9)), "opus"),
        (_id3(6) + b"fLaC\x00\x00\x00\x22", "flac"),
        (_id3(6) + b"\xff\xf1\x50\x80", "aac"),
        (_id3(4000)[:MAGIC_BYTES_NEEDED], "mp3"),
    ],
)
def test_ext_from_magic(head: bytes, ext: str) -> None:
    assert ext_from_magic(head) == ext


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"RIFF",
        b"RIFF\x00\x00\x00\x00AVI LIST",
        b"FORM\x00\x00\x00\x00ILBM",
        b"\x00\x00\x00\x20ftypqt  \x00\x00\x00\x00",
        b"<!DOCTYPE html><html>",
        b'{"error": "nope"}',
        b"\xff\xff\xff\xff" + bytes(8),  # bad bitrate index: not a frame header
        b"\xff\xeb\x90\x64" + bytes(8),  # reserved MPEG version
        b"\xff\xfb\x9c\x64" + bytes(8),  # reserved sample-rate index
        b"\x00" * 12,
    ],
)
def test_ext_from_magic_unknown_is_none(head: bytes) -> None:
    assert ext_from_magic(head) is None


def test_magic_bytes_needed_covers_every_signature() -> None:
    assert MAGIC_BYTES_NEEDED >= 12
    opus = _ogg_page(b"OpusHead\x01\x02" + bytes(9))
    assert ext_from_magic(opus[:MAGIC_BYTES_NEEDED]) == "opus"


# --- precedence ------------------------------------------------------------------

_WAV_HEAD = b"RIFF\x00\x00\x00\x00WAVE"


def test_choose_ext_manifest_content_type_wins() -> None:
    ext = choose_ext(
        manifest_content_type="audio/flac",
        file_path="/m/a.wav",
        stream_path="/s/a.mp3",
        server_content_type="audio/ogg",
        head=_WAV_HEAD,
    )
    assert ext == "flac"


def test_choose_ext_file_path_second() -> None:
    ext = choose_ext(
        manifest_content_type="application/octet-stream",
        file_path="/m/a.aiff",
        stream_path="/s/a.mp3",
        server_content_type="audio/ogg",
        head=_WAV_HEAD,
    )
    assert ext == "aiff"


def test_choose_ext_stream_path_third() -> None:
    ext = choose_ext(
        manifest_content_type=None,
        file_path="/m/a",
        stream_path="https://cdn/x/a.mp3?sig=1",
        server_content_type="audio/ogg",
        head=_WAV_HEAD,
    )
    assert ext == "mp3"


def test_choose_ext_server_content_type_fourth() -> None:
    ext = choose_ext(
        manifest_content_type=None,
        file_path=None,
        stream_path="/stream/c7",
        server_content_type="audio/ogg; codecs=vorbis",
        head=_WAV_HEAD,
    )
    assert ext == "ogg"


def test_choose_ext_magic_last() -> None:
    ext = choose_ext(
        manifest_content_type="",
        file_path=None,
        stream_path="/stream/c7",
        server_content_type="binary/octet-stream",
        head=_WAV_HEAD,
    )
    assert ext == "wav"


@pytest.mark.parametrize("head", [None, b"", b"garbage bytes here"])
def test_choose_ext_nothing_answers(head: bytes | None) -> None:
    ext = choose_ext(
        manifest_content_type=None,
        file_path=None,
        stream_path="/stream/c7",
        server_content_type="application/octet-stream",
        head=head,
    )
    assert ext is None
