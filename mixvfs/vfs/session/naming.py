"""File names for session tracks: ``{artist} - {title}.{ext}``.

Names must be legal on every destination a DJ copies them to — Linux, APFS,
and the exFAT or FAT32 USB sticks of a club's players, which refuse
``\\ : * ? " < > |``, control characters and trailing dots or spaces (at most
255 bytes of UTF-8, which is never more than FAT's 255 UTF-16 units) —,
readable (no control characters, no invisible direction overrides), unique
ignoring case and Unicode normalization (APFS, HFS+, exFAT, FAT and SMB are
case-insensitive; APFS is normalization-insensitive too), and deterministic:
the same session always yields the same names, so paths stay stable across
remounts.

Choices:

* "/" and "\\" become "_" (as beets and most taggers do); a Unicode look-alike
  slash would make the name visually lie about directories.
* The other characters FAT refuses become their fullwidth look-alikes
  (``：＊？＂＜＞｜``, as rclone encodes them for such destinations): a title
  like ``Why? "A" <B>`` stays readable as ``Why？ ＂A＂ ＜B＞``. Names that
  become equal that way (a title already holding ``？``) are numbered like any
  other collision.
* Control characters (category Cc, which includes NUL) are dropped, except that
  runs of tabs and line breaks become one space so the words they separated
  stay apart. Bidirectional overrides/isolates and the BOM are dropped too:
  they can make "x.wav" display as something else. Other format characters
  (ZWJ, ZWNJ, ...) are kept because emoji and several scripts need them.
* Lone surrogates (from undecodable bytes) become U+FFFD so the name encodes.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence

MAX_NAME_BYTES = 255
UNKNOWN_ARTIST = "Unknown Artist"
# Used only when both the title and the track id are empty after cleaning.
UNKNOWN_TITLE = "Unknown Title"
SEPARATOR = " - "
SLASH_REPLACEMENT = "_"
# What exFAT and FAT32 refuse in a name, beyond "/", NUL and control characters.
FAT_LOOKALIKES = str.maketrans({"\\": SLASH_REPLACEMENT, ":": "\uff1a", "*": "\uff0a", "?": "\uff1f", '"': "\uff02",
                                "<": "\uff1c", ">": "\uff1e", "|": "\uff5c"})
# An "extension" longer than this is not a real one; ignoring it keeps room for the name.
MAX_EXT_BYTES = 16

_LINE_BREAKS = re.compile("[\t\n\v\f\r\x85\u2028\u2029]+")
# Bidi marks, embeddings/overrides and isolates, plus the BOM (zero-width no-break space).
_INVISIBLE_FORMAT = frozenset(
    "\u061c\u200e\u200f"  # ALM, LRM, RLM
    "\u202a\u202b\u202c\u202d\u202e"  # LRE, RLE, PDF, LRO, RLO
    "\u2066\u2067\u2068\u2069"  # LRI, RLI, FSI, PDI
    "\ufeff"
)
_ZWJ = "\u200d"
_TRIM = " ."


def _keep_char(ch: str) -> bool:
    return unicodedata.category(ch) != "Cc" and ch not in _INVISIBLE_FORMAT


def _fix_surrogates(text: str) -> str:
    # U+D800..U+DFFF cannot be encoded as UTF-8; they only appear from
    # surrogateescape-decoded bytes, which carry no usable text anyway.
    return "".join("\ufffd" if unicodedata.category(ch) == "Cs" else ch for ch in text)


def _trim(text: str) -> str:
    """Strip spaces (any Unicode whitespace) and dots from both ends."""
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or text[start] in _TRIM):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in _TRIM):
        end -= 1
    return text[start:end]


def clean_part(text: str | None) -> str:
    """One name component made safe: NFC, no "/" nor what FAT refuses, no controls, trimmed."""
    if not text:
        return ""
    if text.isascii() and text.isprintable():
        # Most names: no control character (the only ASCII ones are Cc), nothing NFC changes, and " " is the
        # only ASCII whitespace left: the same answer as below, without a look at each character.
        return text.replace("/", SLASH_REPLACEMENT).translate(FAT_LOOKALIKES).strip(_TRIM)
    text = _LINE_BREAKS.sub(" ", _fix_surrogates(text))
    text = "".join(ch for ch in text if _keep_char(ch))
    # NFC first: a character whose decomposition holds none of them could not bring one back afterwards.
    text = unicodedata.normalize("NFC", text).replace("/", SLASH_REPLACEMENT).translate(FAT_LOOKALIKES)
    text = unicodedata.normalize("NFC", text)
    return _trim(text)


@functools.lru_cache(maxsize=256)  # a session has a handful of extensions, asked once per track
def _clean_ext(ext: str | None) -> str:
    cleaned = clean_part(ext)
    return cleaned if len(cleaned.encode()) <= MAX_EXT_BYTES else ""


def _utf8_len(text: str) -> int:
    return len(text.encode())


def _extends_previous(ch: str) -> bool:
    """True when ``ch`` belongs to the grapheme cluster before it."""
    cp = ord(ch)
    return (
        unicodedata.category(ch) in ("Mn", "Mc", "Me")
        or ch == _ZWJ
        or 0x1F3FB <= cp <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # emoji tag sequences (subdivision flags)
    )


def _is_regional_indicator(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _can_cut_at(text: str, index: int) -> bool:
    """Approximate grapheme boundary test (stdlib has no UAX #29)."""
    if index <= 0 or index >= len(text):
        return True
    if _extends_previous(text[index]) or text[index - 1] == _ZWJ:
        return False
    if _is_regional_indicator(text[index]) and _is_regional_indicator(text[index - 1]):
        # Flags are pairs of regional indicators: cut only after an even run.
        run = 0
        while index - 1 - run >= 0 and _is_regional_indicator(text[index - 1 - run]):
            run += 1
        return run % 2 == 0
    return True


def truncate_utf8(text: str, max_bytes: int) -> str:
    """Longest prefix of ``text`` within ``max_bytes`` of UTF-8.

    Cuts on code points (never inside a multibyte sequence) and, where
    possible, between grapheme clusters so no accent or emoji is split off.
    A single cluster larger than the budget is cut at a code point instead.
    """
    if _utf8_len(text) <= max_bytes:
        return text
    fit, used = 0, 0
    for ch in text:
        used += _utf8_len(ch)
        if used > max_bytes:
            break
        fit += 1
    cut = fit
    while cut > 0 and not _can_cut_at(text, cut):
        cut -= 1
    return text[:cut] if cut > 0 else text[:fit]


def _parts(artist: str | None, title: str | None, track_id: str) -> tuple[str, str]:
    clean_artist = clean_part(artist) or UNKNOWN_ARTIST
    clean_title = clean_part(title) or clean_part(track_id) or UNKNOWN_TITLE
    return clean_artist, clean_title


def _fit(artist: str, title: str, budget: int) -> tuple[str, str]:
    """Shorten the parts so that together they take at most ``budget`` bytes.

    The title is shortened first. The artist is shortened only when it would
    leave the title less than half the room: the title is what tells a
    session's tracks apart, the artist is often shared.
    """
    artist_bytes, title_bytes = _utf8_len(artist), _utf8_len(title)
    if artist_bytes + title_bytes <= budget:
        return artist, title
    # The title always keeps at least half the room (or all of itself if it is
    # shorter), so a giant artist name cannot squeeze the title to nothing.
    # Both parts start with a visible character (they were trimmed) and each
    # share is far above 4 bytes, so trimming the cut ends never empties them.
    title_floor = min(title_bytes, (budget + 1) // 2)
    artist = _trim(truncate_utf8(artist, budget - title_floor))
    title = _trim(truncate_utf8(title, budget - _utf8_len(artist)))
    return artist, title


def _compose(artist: str, title: str, ext: str, copy: int) -> str:
    """Assemble a name that fits MAX_NAME_BYTES; ``copy`` > 1 adds " (copy)"."""
    tail = (f" ({copy})" if copy > 1 else "") + (f".{ext}" if ext else "")
    budget = MAX_NAME_BYTES - _utf8_len(SEPARATOR) - _utf8_len(tail)
    if 4 * (len(artist) + len(title)) > budget:  # else it fits whatever the characters (4 bytes at most each)
        artist, title = _fit(artist, title, budget)
    return f"{artist}{SEPARATOR}{title}{tail}"


def _name(artist: str | None, title: str | None, track_id: str, ext: str | None, copy: int) -> str:
    clean_artist, clean_title = _parts(artist, title, track_id)
    return _compose(clean_artist, clean_title, _clean_ext(ext), copy)


def base_name(*, artist: str | None, title: str | None, track_id: str) -> str:
    """``{artist} - {title}`` cleaned and fitted to MAX_NAME_BYTES (no extension)."""
    return _name(artist, title, track_id, None, 1)


def file_name(*, artist: str | None, title: str | None, track_id: str, ext: str | None) -> str:
    """``{artist} - {title}.{ext}`` cleaned and fitted; no ``.ext`` when ext is empty."""
    return _name(artist, title, track_id, ext, 1)


def collision_key(name: str) -> str:
    """Key under which two names count as the same file (case-insensitive)."""
    if name.isascii():  # casefold() is lower() on ASCII, which NFC leaves as it is
        return name.lower()
    # casefold() can denormalize (e.g. "ǰ"), so normalize again afterwards.
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def assign_names(entries: Sequence[tuple[str, str | None, str | None, str | None]]) -> list[str]:
    """Unique names for ``(track_id, artist, title, ext)`` entries, in session order.

    The first track with a given name keeps it; later ones get " (2)", " (3)"...
    before the extension. A suffixed name never takes another track's natural
    name, so "A - B", "A - B", "A - B (2)" become "A - B", "A - B (3)", "A - B (2)".
    """
    natural = [_name(artist, title, track_id, ext, 1) for track_id, artist, title, ext in entries]
    keys = [collision_key(name) for name in natural]
    # A suffixed name must avoid every natural name (even of later tracks) and
    # every name already handed out.
    taken = set(keys)
    used: set[str] = set()
    # Next suffix to try per natural name: keeps many duplicates linear, not quadratic.
    next_copy: dict[str, int] = {}
    names: list[str] = []
    for (track_id, artist, title, ext), name, key in zip(entries, natural, keys, strict=True):
        if key in used:
            name = _next_free(track_id, artist, title, ext, next_copy, key, taken)
            key = collision_key(name)
            taken.add(key)
        used.add(key)
        names.append(name)
    return names


def _next_free(
    track_id: str,
    artist: str | None,
    title: str | None,
    ext: str | None,
    next_copy: dict[str, int],
    natural_key: str,
    taken: set[str],
) -> str:
    """The first " (N)" variant whose key is not taken; remembers N for the next duplicate."""
    copy = next_copy.get(natural_key, 2)
    while True:
        candidate = _name(artist, title, track_id, ext, copy)
        copy += 1
        if collision_key(candidate) not in taken:
            next_copy[natural_key] = copy
            return candidate
