"""File-name rules: format, cleaning, length limit, collisions, determinism."""

from __future__ import annotations

import unicodedata

import pytest

from mixvfs.vfs.session.naming import (
    MAX_NAME_BYTES,
    assign_names,
    base_name,
    clean_part,
    collision_key,
    file_name,
    truncate_utf8,
)


def _name(artist: str | None, title: str | None, ext: str | None = "wav", track_id: str = "t1") -> str:
    return file_name(artist=artist, title=title, track_id=track_id, ext=ext)


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


# --- format ----------------------------------------------------------------------


def test_format_artist_dash_title_ext() -> None:
    assert _name("Daft Punk", "One More Time", "flac") == "Daft Punk - One More Time.flac"


def test_base_name_has_no_extension() -> None:
    assert base_name(artist="Daft Punk", title="Aerodynamic", track_id="t1") == "Daft Punk - Aerodynamic"


@pytest.mark.parametrize("ext", [None, "", " ", "."])
def test_no_extension_means_no_dot(ext: str | None) -> None:
    assert _name("A", "B", ext) == "A - B"


def test_extension_leading_dot_is_not_doubled() -> None:
    assert _name("A", "B", ".mp3") == "A - B.mp3"


def test_absurd_extension_is_ignored() -> None:
    assert _name("A", "B", "x" * 40) == "A - B"


# --- cleaning --------------------------------------------------------------------


def test_slash_becomes_underscore() -> None:
    assert _name("AC/DC", "Back/In/Black") == "AC_DC - Back_In_Black.wav"


def test_nul_is_dropped() -> None:
    assert _name("A\x00B", "C\x00", "wav", "t\x001") == "AB - C.wav"
    assert _name("A", None, None, "id\x00x") == "A - idx"


def test_control_characters_are_dropped() -> None:
    assert _name("A\x07\x1bB", "Ti\x7ftle\x9f", None) == "AB - Title"


def test_tabs_and_line_breaks_become_one_space() -> None:
    assert _name("First\r\nLast", "Tab\there\u2028x", None) == "First Last - Tab here x"


def test_bidi_overrides_and_bom_are_dropped() -> None:
    assert _name("\ufeffArtist", "evil\u202egnp.exe", None) == "Artist - evilgnp.exe"
    assert _name("A\u2066B\u2069", "C\u200eD", None) == "AB - CD"


def test_zero_width_joiner_is_kept_for_emoji() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert _name("A", family, None) == f"A - {family}"


def test_lone_surrogate_becomes_replacement_character() -> None:
    name = _name("A\udcff", "B", None)
    assert name == "A\ufffd - B"
    assert _nbytes(name) == len(name.encode())


def test_text_is_nfc_normalized() -> None:
    name = _name("Cafe\u0301", "Ame\u0301lie", None)
    assert name == "Caf\u00e9 - Am\u00e9lie"
    assert unicodedata.is_normalized("NFC", name)


@pytest.mark.parametrize(
    ("artist", "title", "expected"),
    [
        ("  Artist  ", "  Title  ", "Artist - Title.wav"),
        (". .Artist. .", "..Title...", "Artist - Title.wav"),
        ("\u00a0Artist\u3000", "Title\u00a0", "Artist - Title.wav"),
        ("Mr. Big", "St. Elsewhere Vol. 2", "Mr. Big - St. Elsewhere Vol. 2.wav"),
    ],
)
def test_spaces_and_dots_trimmed_at_ends_only(artist: str, title: str, expected: str) -> None:
    assert _name(artist, title) == expected


@pytest.mark.parametrize("artist", [None, "", "   ", "...", " . ", "\x00\x01", "\u202e", "\t\n"])
def test_empty_artist_is_unknown_artist(artist: str | None) -> None:
    assert _name(artist, "Title") == "Unknown Artist - Title.wav"


@pytest.mark.parametrize("title", [None, "", "  ", "..", "\x00"])
def test_empty_title_is_track_id(title: str | None) -> None:
    assert _name("Artist", title, "flac", "trk-42") == "Artist - trk-42.flac"


def test_track_id_used_as_title_is_cleaned() -> None:
    assert _name("Artist", None, "flac", " ./a/b\x00c. ") == "Artist - _a_bc.flac"


def test_title_and_id_both_empty_gives_placeholder() -> None:
    assert _name(None, None, None, "..") == "Unknown Artist - Unknown Title"


@pytest.mark.parametrize(
    ("artist", "title", "track_id"),
    [(".", ".", "."), ("..", "..", ".."), (None, None, ""), ("/", "/", "/"), ("\x00", ".", "..")],
)
def test_dot_names_are_impossible(artist: str | None, title: str | None, track_id: str) -> None:
    for ext in (None, "", "wav"):
        name = file_name(artist=artist, title=title, track_id=track_id, ext=ext)
        assert name not in ("", ".", "..")
        assert "/" not in name
        assert "\x00" not in name


def test_clean_part_rules_together() -> None:
    assert clean_part("  a/b\x00\u202ec\u0301.  ") == "a_b\u0107"


# --- length ----------------------------------------------------------------------


def _assert_valid(name: str) -> None:
    raw = name.encode("utf-8")
    assert len(raw) <= MAX_NAME_BYTES
    assert raw.decode("utf-8") == name
    assert "/" not in name
    assert "\x00" not in name
    assert name == name.strip(" .")


def test_long_two_byte_title_is_cut_to_fit_keeping_extension() -> None:
    title = "\u00e9" * 150  # 300 bytes
    name = _name("Artist", title, "flac")
    _assert_valid(name)
    # "Artist - " (9) + ".flac" (5) leave 241 bytes: 120 two-byte characters.
    assert name == "Artist - " + "\u00e9" * 120 + ".flac"
    assert _nbytes(name) == 254


@pytest.mark.parametrize(("char", "count"), [("\u65e5", 80), ("\U0001f600", 60), ("a", 241)])
def test_long_title_cut_never_splits_a_character(char: str, count: int) -> None:
    name = _name("Artist", char * 300, "flac")
    _assert_valid(name)
    assert name == "Artist - " + char * count + ".flac"


def test_cut_does_not_separate_a_combining_mark() -> None:
    # "q" + combining acute has no precomposed form, so NFC keeps two code points.
    # Budget is 255 - 9 - 4 = 242 bytes: a code-point cut would end on a bare "q".
    title = "q\u0301" * 100
    name = _name("Artist", title, "wav")
    _assert_valid(name)
    assert name == "Artist - " + "q\u0301" * 80 + ".wav"


def test_cut_does_not_split_a_flag() -> None:
    flag = "\U0001f1eb\U0001f1f7"  # two regional indicators, 8 bytes
    name = base_name(artist="Artist", title=flag * 50, track_id="t")
    _assert_valid(name)
    # 246 bytes for the title: 30 flags (240) plus one lone indicator would fit.
    assert name == "Artist - " + flag * 30


def test_cut_does_not_split_a_zwj_sequence() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # 18 bytes
    name = _name("Artist", family * 20, "wav")
    _assert_valid(name)
    assert name == "Artist - " + family * 13 + ".wav"


def test_cut_end_is_trimmed_of_spaces_and_dots() -> None:
    name = _name("Artist", "ab. " * 100, "wav")
    _assert_valid(name)
    assert not name.removesuffix(".wav").endswith((" ", "."))


def test_long_artist_is_shortened_too() -> None:
    name = _name("A" * 300, "Short Title", "flac")
    _assert_valid(name)
    assert name.endswith(" - Short Title.flac")
    assert _nbytes(name) == MAX_NAME_BYTES


def test_long_artist_and_long_title_share_the_room() -> None:
    name = _name("A" * 300, "T" * 300, "flac")
    _assert_valid(name)
    artist, title = name.removesuffix(".flac").split(" - ")
    assert set(artist) == {"A"}
    assert set(title) == {"T"}
    assert len(title) >= len(artist)
    assert len(title) >= 100


def test_truncate_utf8_direct() -> None:
    assert truncate_utf8("abc", 10) == "abc"
    assert truncate_utf8("a\u00e9b", 2) == "a"
    assert truncate_utf8("\u00e9\u00e9", 3) == "\u00e9"
    # One cluster larger than the budget: cut at a code point rather than return "".
    assert truncate_utf8("e" + "\u0301" * 10, 5) == "e\u0301\u0301"


# --- collisions ------------------------------------------------------------------


def _entries(*titles: str, artist: str = "A", ext: str | None = "wav") -> list[tuple[str, str, str, str | None]]:
    return [(f"t{index}", artist, title, ext) for index, title in enumerate(titles)]


def test_distinct_names_unchanged() -> None:
    assert assign_names(_entries("B", "C")) == ["A - B.wav", "A - C.wav"]


def test_duplicates_get_numbered_suffix_before_extension() -> None:
    names = assign_names(_entries("B", "B", "B"))
    assert names == ["A - B.wav", "A - B (2).wav", "A - B (3).wav"]


def test_duplicates_without_extension() -> None:
    assert assign_names(_entries("B", "B", ext=None)) == ["A - B", "A - B (2)"]


def test_collision_is_case_insensitive() -> None:
    entries = [("t1", "Artist", "Title", "wav"), ("t2", "ARTIST", "title", "WAV")]
    assert assign_names(entries) == ["Artist - Title.wav", "ARTIST - title (2).WAV"]


def test_collision_uses_casefold() -> None:
    entries = [("t1", "A", "Stra\u00dfe", "wav"), ("t2", "A", "STRASSE", "wav")]
    assert assign_names(entries) == ["A - Stra\u00dfe.wav", "A - STRASSE (2).wav"]


def test_collision_after_nfc() -> None:
    entries = [("t1", "A", "Caf\u00e9", "wav"), ("t2", "A", "Cafe\u0301", "wav")]
    assert assign_names(entries) == ["A - Caf\u00e9.wav", "A - Caf\u00e9 (2).wav"]


def test_different_extensions_do_not_collide() -> None:
    entries = [("t1", "A", "B", "wav"), ("t2", "A", "B", "flac")]
    assert assign_names(entries) == ["A - B.wav", "A - B.flac"]


def test_suffix_never_takes_a_later_tracks_natural_name() -> None:
    names = assign_names(_entries("B", "B", "B (2)"))
    assert names == ["A - B.wav", "A - B (3).wav", "A - B (2).wav"]


def test_suffix_never_takes_an_earlier_tracks_natural_name() -> None:
    names = assign_names(_entries("B (2)", "B", "B"))
    assert names == ["A - B (2).wav", "A - B.wav", "A - B (3).wav"]


def test_natural_name_equal_to_earlier_suffix_is_impossible() -> None:
    names = assign_names(_entries("B", "B", "B (2)", "B (2)"))
    assert names == ["A - B.wav", "A - B (3).wav", "A - B (2).wav", "A - B (2) (2).wav"]
    assert len({collision_key(n) for n in names}) == 4


def test_suffixed_long_name_still_fits() -> None:
    title = "\u00e9" * 200
    names = assign_names(_entries(title, title, ext="flac"))
    for name in names:
        _assert_valid(name)
    assert names[1].endswith(" (2).flac")
    assert names[0] != names[1]


def test_long_titles_equal_after_truncation_get_suffix() -> None:
    prefix = "x" * 300
    names = assign_names(_entries(prefix + "one", prefix + "two"))
    for name in names:
        _assert_valid(name)
    assert names[0] == "A - " + "x" * (MAX_NAME_BYTES - 8) + ".wav"
    assert names[1].endswith(" (2).wav")


def test_many_duplicates_are_unique_and_fit() -> None:
    title = "T" * 300
    names = assign_names(_entries(*([title] * 1000)))
    assert len(names) == 1000
    assert len({collision_key(n) for n in names}) == 1000
    for name in names:
        _assert_valid(name)
    assert names[-1].endswith(" (1000).wav")


def test_assign_names_is_deterministic_and_keeps_order() -> None:
    entries = [
        ("t1", "A", "B", "wav"),
        ("t2", None, None, None),
        ("t3", "a", "b", "WAV"),
        ("t4", "A", "B (2)", "wav"),
        ("t5", "X/Y", "Z", "mp3"),
    ]
    first = assign_names(entries)
    assert first == assign_names(list(entries))
    assert first == assign_names(tuple(entries))
    assert first == ["A - B.wav", "Unknown Artist - t2", "a - b (3).WAV", "A - B (2).wav", "X_Y - Z.mp3"]


def test_assign_names_empty() -> None:
    assert assign_names([]) == []


def test_collision_key_folds_case_and_normalization() -> None:
    assert collision_key("CAFE\u0301.WAV") == collision_key("caf\u00e9.wav")
    assert collision_key("a") != collision_key("b")


# --- names every Mac destination accepts (exFAT/FAT32 sticks, APFS) ---------------------------------------

FAT_REFUSES = set('\\:*?"<>|') | {chr(c) for c in range(32)} | {"\x7f"}


def fat_accepts(name: str) -> bool:
    """exFAT's and FAT32's rules (Microsoft's exFAT specification, 7.7.3; FAT's long names): none of
    ``\\ / : * ? " < > |`` nor a control character, no trailing dot or space, at most 255 UTF-16 units."""
    return (not (set(name) & (FAT_REFUSES | {"/"})) and not name.endswith((".", " "))
            and len(name.encode("utf-16-le")) // 2 <= 255 and name not in ("", ".", ".."))


def test_a_title_fat_refuses_becomes_readable_look_alikes() -> None:
    assert _name("Nina", 'Why? "A" <B>') == "Nina - Why？ ＂A＂ ＜B＞.wav"
    assert _name("AC\\DC", "a:b*c|d") == "AC_DC - a：b＊c｜d.wav"


@pytest.mark.parametrize("title", ['Why? "A" <B>', "trailing dot.", "trailing space ", "a\\b", "x:y", "*|*",
                                   "???", "ends with ?", ". . .", "\x01\x7f", "Tab\there", "<>" * 200, "é" * 300,
                                   "🎧" * 100])
def test_every_name_is_one_fat_accepts(title: str) -> None:
    for ext in ("wav", "fl?ac", None, "x:"):
        name = _name('Art "ist"', title, ext)
        assert fat_accepts(name), name
        assert _nbytes(name) <= MAX_NAME_BYTES


def test_names_equal_after_the_mapping_are_numbered() -> None:
    names = assign_names([("1", "A", "Why?", "wav"), ("2", "A", "Why？", "wav"), ("3", "a", "WHY?", "wav")])
    assert names == ["A - Why？.wav", "A - Why？ (2).wav", "a - WHY？ (3).wav"]
    assert len({collision_key(n) for n in names}) == 3


def test_names_stay_unique_under_case_folding_and_normalization() -> None:
    decomposed = unicodedata.normalize("NFD", "Café")
    names = assign_names([("1", "X", "Café", "wav"), ("2", "X", decomposed, "wav"), ("3", "x", "CAFÉ", "wav"),
                          ("4", "X", "Cafe\u0301?", "wav"), ("5", "X", "café？", "wav")])
    assert len({unicodedata.normalize("NFD", n).casefold() for n in names}) == 5
    assert all(n == unicodedata.normalize("NFC", n) and fat_accepts(n) for n in names)
