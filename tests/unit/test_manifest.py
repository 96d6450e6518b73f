"""Manifest validation: each problem is one line naming the track (index and id) and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixvfs.vfs.session.manifest import ManifestError, load_manifest, parse_manifest


def parse(doc: object, base: Path = Path("/base")):
    return parse_manifest(json.dumps(doc).encode(), base_dir=base, origin="s.json")


def test_valid_manifest_resolves_paths_and_urls(tmp_path):
    session = parse({"name": "Friday Mix", "server": "https://music.example.com/", "tracks": [
        {"id": "a1", "artist": "Nina", "title": "Intro", "file_path": "/Users/me/intro.wav"},
        {"id": "a2", "file_path": "rel/x.wav", "unknown": {"ignored": True}},
        {"id": "c7", "cloud_stream_path": "/stream/c7", "size": 48213, "content_type": "audio/flac"},
        {"id": "c8", "cloud_stream_path": "http://other.example.com/s/c8"},
    ]}, tmp_path)
    assert session.name == "Friday Mix"
    a1, a2, c7, c8 = session.tracks
    assert a1.file_path == Path("/Users/me/intro.wav")
    assert a2.file_path == tmp_path / "rel/x.wav"
    assert c7.cloud_url == "https://music.example.com/stream/c7"
    assert (c7.size, c7.content_type) == (48213, "audio/flac")
    assert c8.cloud_url == "http://other.example.com/s/c8"


@pytest.mark.parametrize(("doc", "expected"), [
    ([], "must be a JSON object"),
    ({"name": "x"}, "field 'tracks' must be a list"),
    ({"tracks": {}}, "field 'tracks' must be a list"),
    ({"tracks": ["a"]}, "track 0: must be an object"),
    ({"tracks": [{"title": "x"}]}, "track 0: field 'id' is required"),
    ({"tracks": [{"id": ""}]}, "track 0: field 'id' is required"),
    ({"tracks": [{"id": 7}]}, "track 0: field 'id' is required and must be a non-empty string"),
    ({"tracks": [{"id": "a"}, {"id": "b", "size": "12"}]}, "track 1 (id 'b'): field 'size' must be a non-negative"),
    ({"tracks": [{"id": "a", "size": -1}]}, "track 0 (id 'a'): field 'size'"),
    ({"tracks": [{"id": "a", "size": True}]}, "track 0 (id 'a'): field 'size'"),
    ({"tracks": [{"id": "a", "artist": 5}]}, "track 0 (id 'a'): field 'artist' must be a string, not int"),
    ({"tracks": [{"id": "a", "file_path": ["x"]}]}, "track 0 (id 'a'): field 'file_path' must be a string"),
    ({"tracks": [{"id": "a"}, {"id": "a"}]}, "track 1 (id 'a'): field 'id' duplicates track 0"),
    ({"tracks": [{"id": "a", "cloud_stream_path": "/s/a"}]}, "field 'cloud_stream_path' is a relative path but"),
    ({"server": "ftp://x", "tracks": []}, "session field 'server': must be an http:// or https:// URL"),
    ({"tracks": [{"id": "a", "cloud_stream_path": "file:///etc/passwd"}]}, "field 'cloud_stream_path': must be"),
    ({"tracks": [{"id": "a", "file_path": "x\u0000y"}]}, "field 'file_path' contains a NUL"),
])
def test_invalid_manifests_name_track_and_field(doc, expected):
    with pytest.raises(ManifestError) as info:
        parse(doc)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_not_json_and_not_utf8():
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"{nope", base_dir=Path("/"), origin="s.json")
    with pytest.raises(ManifestError, match="not UTF-8"):
        parse_manifest(b'{"tracks": ["\xff"]}', base_dir=Path("/"), origin="s.json")


def test_load_manifest_names_unreadable_file(tmp_path):
    with pytest.raises(ManifestError, match="cannot read the manifest"):
        load_manifest(tmp_path / "absent.json")
