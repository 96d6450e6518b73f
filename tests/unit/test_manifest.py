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
        {"id": "a2", "file_path": "rel/x.wav"},
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


def test_the_stream_path_reads_as_written_and_costs_no_string_of_its_own_where_the_url_ends_with_it():
    session = parse({"server": "https://music.example.com/", "tracks": [
        {"id": "a", "cloud_stream_path": "/stream/a.flac"},
        {"id": "b", "cloud_stream_path": "stream/b.flac"},
        {"id": "c", "cloud_stream_path": "//stream/c.flac"},  # joined as "/stream/c.flac": kept as written
        {"id": "d", "cloud_stream_path": "http://other.example.com/s/d.mp3"},
        {"id": "e", "cloud_stream_path": ""},
        {"id": "f", "file_path": "/x/f.wav"},
    ]})
    a, b, c, d, e, f = session.tracks
    assert [t.stream_path for t in session.tracks] == [
        "/stream/a.flac", "stream/b.flac", "//stream/c.flac", "http://other.example.com/s/d.mp3", "", None]
    assert (a.cloud_url, b.cloud_url, c.cloud_url) == ("https://music.example.com/stream/a.flac",
                                                        "https://music.example.com/stream/b.flac",
                                                        "https://music.example.com/stream/c.flac")
    assert (a.stream, b.stream, d.stream) == (14, 13, 32)  # its length only: the URL's end is the path
    assert (c.stream, e.stream, f.stream) == ("//stream/c.flac", "", None)


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


@pytest.mark.parametrize(("doc", "expected"), [
    ({"tracks": [{"id": "a", "cloud_stream_pth": "/a"}]},
     "s.json: track 0 (id 'a'): unknown field 'cloud_stream_pth' (did you mean 'cloud_stream_path'?)"),
    ({"tracks": [{"id": "a"}, {"id": "b", "titel": "B", "artst": "X"}]},
     "s.json: track 1 (id 'b'): unknown fields 'artst' (did you mean 'artist'?), 'titel' (did you mean 'title'?)"),
    ({"tracks": [{"ID": "a"}]}, "s.json: track 0: unknown field 'ID' (did you mean 'id'?)"),
    ({"tracks": [{"id": "a", "bpm": 120}]}, "s.json: track 0 (id 'a'): unknown field 'bpm'; known: artist, "),
    ({"servr": "http://x", "tracks": []}, "s.json: session: unknown field 'servr' (did you mean 'server'?)"),
])
def test_an_unknown_key_is_refused_naming_the_track_the_key_and_the_closest_known_key(doc, expected):
    with pytest.raises(ManifestError) as info:
        parse(doc)
    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)


def test_a_json_syntax_error_gives_line_and_column_once_and_the_line():
    data = b'{"tracks": [\n  {"id": "a",}\n]}'
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, base_dir=Path("/"), origin="s.json")
    message = str(info.value)
    assert message == ("s.json: not valid JSON at line 2 column 14: Expecting property name enclosed in double "
                       "quotes; the line reads '  {\"id\": \"a\",}'")


def test_the_line_of_a_json_error_in_a_one_line_manifest_is_cut_around_the_error():
    good = json.dumps({"tracks": [{"id": f"t{i}"} for i in range(2000)]})
    data = (good[:-2] + ",]}").encode()  # a trailing comma at the very end of a 30 kB line
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, base_dir=Path("/"), origin="s.json")
    message = str(info.value)
    assert message.count(" at line ") == 1 and " at line 1 column " in message
    excerpt = message.split("the line reads ", 1)[1]
    assert excerpt.startswith("'...") and excerpt.endswith(',]}\'')
    assert len(excerpt) < 120


def test_load_manifest_names_unreadable_file(tmp_path):
    with pytest.raises(ManifestError, match="cannot read the manifest"):
        load_manifest(tmp_path / "absent.json")


def whole_document(text: str, base: Path = Path("/base"), default_server: str | None = None):
    """What the manifest means, read the plain way: every error and value as json.loads sees the document."""
    from mixvfs.vfs.session.manifest import _parse_document
    return _parse_document(json.loads(text), base, "s.json", 0.0, default_server)


TRACKS = [{"id": "a1", "artist": "Nina", "title": "Intro", "file_path": "rel/intro.wav"},
          {"id": "c7", "cloud_stream_path": "/stream/c7", "size": 48213.0, "content_type": "audio/flac"},
          {"id": "c8", "cloud_stream_path": "https://other.example.com/s/c8", "title": "Caf\u00e9 \ud83c\udfb5"}]


@pytest.mark.parametrize("text", [
    json.dumps({"name": "Friday", "server": "https://m.example.com", "tracks": TRACKS}),
    json.dumps({"name": "Friday", "server": "https://m.example.com", "tracks": TRACKS}, indent=4),
    json.dumps({"name": "Friday", "server": "https://m.example.com", "tracks": TRACKS}, separators=(",", ":")),
    json.dumps({"server": "https://m.example.com", "tracks": TRACKS, "name": "After the tracks"}),
    json.dumps({"tracks": TRACKS, "server": "https://m.example.com"}),  # the server after the tracks
    json.dumps({"server": None, "tracks": TRACKS[::2]}),
    json.dumps({"tracks": []}),
    '\r\n\t {"server": "https://m.example.com", "tracks": [] } \n',
    '{"tracks": [{"id": "x"}], "tracks": ' + json.dumps(TRACKS) + ', "server": "http://a.example"}',  # last wins
])
def test_a_manifest_read_track_by_track_means_what_the_whole_document_means(text):
    for default_server in (None, "http://default.example"):
        session = parse_manifest(text.encode(), base_dir=Path("/base"), origin="s.json",
                                 default_server=default_server)
        assert session == whole_document(text, default_server=default_server)


@pytest.mark.parametrize("text", [
    '{"tracks": [{"id": "a"}, {"id": "a"}]}',
    '{"tracks": [{"id": "a"}, ]}',
    '{"tracks": [{"id": "a"}]} x',
    '{"tracks": [{"id": "a"}], "server": 7}',
    '{"server": "ftp://x", "tracks": [{"id": "a"}]}',
    '{"name": 3, "tracks": [{"id": "a"}]}',
    '{"tracks": [{"id": "a", "cloud_stream_path": "/s"}, {"id": 3}], "bogus": 1, }',
    '{"tracks": [{"id": "a"}, {"id": "b", "size": -1}], "server": "http://a.example", "name": [',
])
def test_a_bad_manifest_read_track_by_track_is_refused_with_the_whole_documents_error(text):
    try:
        whole_document(text)
    except json.JSONDecodeError as exc:
        from mixvfs.vfs.session.manifest import json_error_text
        expected = f"s.json: {json_error_text(exc)}"
    except ManifestError as exc:
        expected = str(exc)
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text.encode(), base_dir=Path("/base"), origin="s.json")
    assert str(caught.value) == expected


def test_a_big_manifest_is_decoded_without_holding_every_track_as_a_dict_at_once():
    """The parse's peak (traced by tracemalloc) is the decoded text and the parsed tracks, plus one track's dict:
    the whole document as dicts would add several hundred bytes per track."""
    import gc
    import tracemalloc
    count = 20_000
    text = json.dumps({"name": "big", "server": "https://m.example.com", "tracks": [
        {"id": f"c{i}", "artist": f"Artist {i % 97}", "title": f"Track {i:06d}", "cloud_stream_path": f"/s/{i}.wav",
         "size": 4096 + i, "content_type": "audio/wav"} for i in range(count)]}).encode()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        session = parse_manifest(text, base_dir=Path("/base"), origin="s.json")
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(session.tracks) == count
    overhead = peak - before - kept - len(text)  # above what stays and the text decoded (ASCII: a byte a character)
    assert overhead < 80 * count, f"the parse's peak was {overhead / count:.0f} bytes per track above what it kept"
