"""Decide a track's file extension from whatever evidence is available.

The evidence, best first: the content type the session manifest declares, the
extension of the track's original file path, the extension of its stream URL,
the content type the server sent, and finally the leading bytes of the body.
Each helper answers ``None`` when its evidence says nothing useful, so the
caller can fall through to the next one (see :func:`choose_ext`).
"""

from __future__ import annotations

import functools
from pathlib import PurePosixPath
from urllib.parse import urlsplit

# Leading bytes ext_from_magic looks at. 12 is enough for every container
# signature; the extra room lets it look inside the first Ogg page (to tell Opus
# from Vorbis) and past a short ID3v2 tag.
MAGIC_BYTES_NEEDED = 64

# Media type (lower-case, without parameters) -> extension. Only types that name
# one concrete file format are listed; anything else is "no opinion".
_CONTENT_TYPE_EXT: dict[str, str] = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/vnd.wav": "wav",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mpeg3": "mp3",
    "audio/x-mpeg-3": "mp3",
    "audio/x-mp3": "mp3",
    # MPEG-4 audio lives in an MP4 container; players expect ".m4a" for that.
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "audio/m4a": "m4a",
    "audio/mp4a-latm": "m4a",
    # audio/aac is a raw ADTS stream, not an MP4 container, so it keeps ".aac".
    "audio/aac": "aac",
    "audio/x-aac": "aac",
    "audio/aacp": "aac",
    "audio/aiff": "aiff",
    "audio/x-aiff": "aiff",
    "audio/ogg": "ogg",
    "audio/vorbis": "ogg",
    "audio/x-vorbis+ogg": "ogg",
    "application/ogg": "ogg",
    "audio/opus": "opus",
    "audio/x-ms-wma": "wma",
}

# Extensions accepted from a path. They are returned as written (lower-cased),
# not normalized, so "track.aif" stays "aif" like the user's original file.
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        "wav",
        "flac",
        "mp3",
        "m4a",
        "aac",
        "aif",
        "aiff",
        "aifc",
        "ogg",
        "oga",
        "opus",
        "alac",
        "wma",
        "ape",
        "wv",
    }
)

# MP4 "ftyp" major brands that we treat as an audio file (.m4a).
_M4A_BRANDS: frozenset[bytes] = frozenset(
    {b"M4A ", b"M4B ", b"M4P ", b"mp41", b"mp42", b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"dash"}
)


def _media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type value: lower-case, no parameters."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


@functools.lru_cache(maxsize=256)  # a session names a handful of types, each once per track
def ext_from_content_type(content_type: str | None) -> str | None:
    """Extension named by a Content-Type value, or None for generic/unknown types."""
    return _CONTENT_TYPE_EXT.get(_media_type(content_type))


def _known_suffix(path: str) -> str | None:
    suffix = PurePosixPath(path).suffix[1:].lower()
    return suffix if suffix in AUDIO_EXTENSIONS else None


def ext_from_path(path: str | None) -> str | None:
    """Known audio extension of a file path or URL, ignoring query and fragment.

    A full URL (with a scheme) is parsed as one. A bare path is first tried with
    anything after "?" or "#" cut off (a URL path with a query), then as written,
    because local file names may legitimately contain "#" ("Track #1.wav").
    """
    if not path:
        return None
    if "://" in path:
        return _known_suffix(urlsplit(path).path)
    without_query = path.split("?", 1)[0].split("#", 1)[0]
    return _known_suffix(without_query) or _known_suffix(path)


def _mpeg_audio_ext(head: bytes) -> str | None:
    """mp3 for an MPEG audio frame header, aac for an ADTS header, else None.

    Both start with an 11-bit frame sync; ADTS uses the "layer 0" value MPEG
    audio reserves. The reserved version, bitrate and sample-rate values are
    rejected so that random binary starting with 0xFF is not called mp3.
    """
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    if head[1] & 0xF6 == 0xF0:
        return "aac"
    version, layer = (head[1] >> 3) & 0b11, (head[1] >> 1) & 0b11
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 0b11
    if version == 0b01 or layer == 0b00 or bitrate == 0b1111 or rate == 0b11:
        return None
    return "mp3"


def _after_id3_ext(head: bytes) -> str:
    """Extension for a body that starts with an ID3v2 tag.

    ID3 usually means mp3, but some tools also prepend it to FLAC or ADTS AAC;
    when the tag is short enough to see past, believe what follows it.
    """
    if len(head) >= 10:
        # The tag size is "syncsafe": four 7-bit groups; +10 for the tag header.
        size = 10 + ((head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9])
        rest = head[size:]
        if rest.startswith(b"fLaC"):
            return "flac"
        if _mpeg_audio_ext(rest) == "aac":
            return "aac"
    return "mp3"


def _ogg_ext(head: bytes) -> str:
    """opus when the first Ogg page carries an Opus header, else ogg."""
    # Page header is 27 bytes plus one lacing byte per segment, then the packet.
    if len(head) > 26:
        packet = head[27 + head[26] :]
        if packet.startswith(b"OpusHead"):
            return "opus"
    return "ogg"


def ext_from_magic(head: bytes) -> str | None:
    """Extension recognised from the first bytes of a file, or None."""
    if head[0:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head[0:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] == b"ftyp" and head[8:12] in _M4A_BRANDS:
        return "m4a"
    if head.startswith(b"OggS"):
        return _ogg_ext(head)
    if head.startswith(b"ID3"):
        return _after_id3_ext(head)
    return _mpeg_audio_ext(head)


def choose_ext(
    *,
    manifest_content_type: str | None,
    file_path: str | None,
    stream_path: str | None,
    server_content_type: str | None,
    head: bytes | None,
) -> str | None:
    """The first extension the evidence yields, most trustworthy evidence first."""
    # In that order, each looked at only when everything before it said nothing (called per track at mount).
    ext = ext_from_content_type(manifest_content_type)
    if ext is None:
        ext = ext_from_path(file_path)
    if ext is None:
        ext = ext_from_path(stream_path)
    if ext is None:
        ext = ext_from_content_type(server_content_type)
    if ext is None and head:
        ext = ext_from_magic(head)
    return ext
