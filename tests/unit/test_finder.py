"""vfs/fs/finder.py: Finder's probe names and the previewer processes, as rules."""

from __future__ import annotations

from mixvfs.vfs.fs import finder
from mixvfs.vfs.session.naming import assign_names


def test_probe_names_are_never_track_names() -> None:
    hostile = [(str(i), artist, title, "wav") for i, (artist, title) in enumerate([
        ("._x", "y"), (".DS_Store", ""), ("", ".localized"), (".", ".hidden"), ("..", "._")])]
    for name in assign_names(hostile):
        assert not finder.is_probe(name) and name != finder.NEVER_INDEX


def test_probe_names() -> None:
    for name in ("._Artist - a.wav", "._", ".DS_Store", ".Trashes", ".fseventsd", ".Spotlight-V100", "Icon\r"):
        assert finder.is_probe(name)
    for name in ("Artist - a.wav", "DS_Store", ".metadata_never_index"):
        assert not finder.is_probe(name)


def test_previewers_by_their_macos_and_their_linux_length_names() -> None:
    assert finder.is_previewer("mdworker_shared") and finder.is_previewer("QuickLookUIService")
    assert finder.is_previewer("QuickLookUIServ") and finder.is_previewer("com.apple.quick")  # Linux: 15 chars
    assert not finder.is_previewer("cp") and not finder.is_previewer(None) and not finder.is_previewer("")
    assert not finder.is_previewer("Music")
