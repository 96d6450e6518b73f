"""`mixvfs check-export`: an export folder checked against the session, byte for byte, after a real export
through a real mount (issue 13)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from mixvfs.vfs.fs.mount_key import mount_key
from mixvfs.vfs.fs.report import default_report_path
from tests.conftest import CACHECTL, MIXVFS, Mount, run, write_session
from tools.make_audio import write_sized, write_wav

FAILING, GONE = "Gone - Track.wav", "No - File.wav"


def session_with_two_failures(tmp_path: Path, server_root: Path, url: str) -> Path:
    """Two local and two cloud tracks that work (two of them with the same name: collision numbering), a
    cloud track the server does not have and a local file that does not exist."""
    local = tmp_path / "local"
    local.mkdir()
    write_wav(local / "intro.wav", 0.5, 440)
    write_sized(local / "outro.wav", 300_000, kind="wav", seed=3)
    (server_root / "stream").mkdir()
    write_sized(server_root / "stream" / "big", 3 << 20, kind="wav", seed=1)
    write_sized(server_root / "stream" / "hook", 200_000, kind="wav", seed=2)
    return write_session(tmp_path / "session.json", [
        {"id": "a1", "artist": "Nina", "title": "Intro", "file_path": "local/intro.wav"},
        {"id": "a2", "artist": "Nina", "title": "Intro", "file_path": "local/outro.wav"},
        {"id": "c1", "artist": "Big", "title": "Tune", "cloud_stream_path": "/stream/big",
         "content_type": "audio/wav"},
        {"id": "c2", "artist": "Kid A", "title": "Hook", "cloud_stream_path": "/stream/hook"},
        {"id": "x1", "artist": "Gone", "title": "Track", "cloud_stream_path": "/stream/missing.wav",
         "size": 1000, "content_type": "audio/wav"},
        {"id": "m1", "artist": "No", "title": "File", "file_path": "/nonexistent/x.wav"},
    ], server=url)


GOOD = {"Nina - Intro.wav", "Nina - Intro (2).wav", "Big - Tune.wav", "Kid A - Hook.wav"}


def check(target: Path, export: Path, *extra: str, cache_dir: Path | None = None) -> tuple[int, dict[str, Any]]:
    flags = ["--cache-dir", str(cache_dir)] if cache_dir else []
    done = run([MIXVFS, "check-export", str(target), str(export), "--json", *flags, *extra])
    assert done.returncode in (0, 1), done
    return done.returncode, json.loads(done.stdout)


def states(doc: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t["state"] for t in doc["tracks"]}


def export_with_cp(mount: Mount, dest: Path) -> None:
    done = run(["cp", "-r", f"{mount.path}/.", str(dest)])
    assert done.returncode != 0 and "Input/output error" in done.stderr  # the two failures


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def test_a_cp_export_with_a_failing_and_a_missing_track_names_exactly_those_two_missing(
        tmp_path, server_root, devserver, mounter):
    session = session_with_two_failures(tmp_path, server_root, devserver.url)
    mount = mounter(session)
    export = tmp_path / "export"
    export_with_cp(mount, export)  # cp leaves an empty file for each track whose first read failed
    unmounted = run([MIXVFS, "unmount", str(mount.path)], check=True)
    mount.mounted = False
    lines = unmounted.stdout.splitlines()
    assert lines[1] == f"4 tracks whole (local or cached), 2 failed: see the report (mixvfs report {mount.report_path})"
    assert lines[2] == f"did the export get everything? mixvfs check-export {mount.report_path} EXPORT_DIR"

    for target, cache in ((mount.report_path, None), (session, mount.cache_dir)):
        code, doc = check(target, export, cache_dir=cache)
        assert code == 1
        assert states(doc) == {**dict.fromkeys(GOOD, "ok"), FAILING: "missing", GONE: "missing"}, target
        assert doc["extra"] == [] and doc["complete"] is False

    text = run([MIXVFS, "check-export", str(mount.report_path), str(export)])
    assert text.returncode == 1
    problems = [line for line in text.stdout.splitlines() if not line.startswith("INCOMPLETE")]
    assert len(problems) == 2  # not a terminal: one line per problem, then the summary
    assert any(line.startswith(f"missing        {FAILING}: ") and "404" in line for line in problems)
    assert any(line.startswith(f"missing        {GONE}: ") and "/nonexistent/x.wav" in line for line in problems)
    assert text.stdout.splitlines()[-1].startswith("INCOMPLETE: 4 of 6 tracks ok; 2 missing")


def test_one_flipped_byte_is_wrong_content_and_a_cut_file_wrong_size(tmp_path, server_root, devserver, mounter):
    session = session_with_two_failures(tmp_path, server_root, devserver.url)
    mount = mounter(session)
    export = tmp_path / "export"
    export_with_cp(mount, export)
    mount.unmount()
    flip_byte(export / "Big - Tune.wav", (3 << 20) - 7)  # cloud: against the report's digest
    flip_byte(export / "Nina - Intro (2).wav", 1000)  # local: against its source file
    with (export / "Kid A - Hook.wav").open("r+b") as handle:
        handle.truncate(100_000)
    code, doc = check(mount.report_path, export)
    assert code == 1
    got = states(doc)
    assert got["Big - Tune.wav"] == "wrong_content" and got["Nina - Intro (2).wav"] == "wrong_content"
    assert got["Kid A - Hook.wav"] == "wrong_size" and got["Nina - Intro.wav"] == "ok"
    details = {t["name"]: t["detail"] for t in doc["tracks"]}
    assert "digest in the report" in details["Big - Tune.wav"]
    assert str(tmp_path / "local" / "outro.wav") in details["Nina - Intro (2).wav"]
    assert details["Kid A - Hook.wav"] == "97.7 KiB (100000 bytes), expected 195.3 KiB (200000 bytes)"
    # Given the manifest, the cloud digests come from the cache index.
    code, doc = check(session, export, cache_dir=mount.cache_dir)
    assert states(doc)["Big - Tune.wav"] == "wrong_content"
    assert "cache index" in {t["name"]: t["detail"] for t in doc["tracks"]}["Big - Tune.wav"]


def clean_session(tmp_path: Path, server_root: Path, url: str) -> Path:
    doc = json.loads(session_with_two_failures(tmp_path, server_root, url).read_text())
    doc["tracks"] = [t for t in doc["tracks"] if t["id"] not in ("x1", "m1")]
    (tmp_path / "session.json").write_text(json.dumps(doc))
    return tmp_path / "session.json"


def test_a_clean_export_exits_0(tmp_path, server_root, devserver, mounter):
    session = clean_session(tmp_path, server_root, devserver.url)
    mount = mounter(session)
    export = tmp_path / "export"
    run(["cp", "-r", f"{mount.path}/.", str(export)], check=True)
    unmounted = run([MIXVFS, "unmount", str(mount.path)], check=True)
    mount.mounted = False
    assert unmounted.stdout.splitlines()[1:] == ["4 tracks whole (local or cached)"]  # nothing failed: no suggestion
    for target, cache in ((mount.report_path, None), (session, mount.cache_dir)):
        code, doc = check(target, export, cache_dir=cache)
        assert code == 0, doc
        assert states(doc) == dict.fromkeys(GOOD, "ok")
    text = run([MIXVFS, "check-export", str(mount.report_path), str(export)])
    assert text.returncode == 0
    assert text.stdout.startswith(f"ok: all 4 tracks of 'Test Session' are in {export}, byte for byte")


def test_an_exporter_that_skipped_one_file_is_caught(tmp_path, server_root, devserver, mounter):
    session = clean_session(tmp_path, server_root, devserver.url)
    mount = mounter(session)
    export = tmp_path / "export"
    export.mkdir()
    for name in sorted(os.listdir(mount.path)):  # same names, one file left out, no error said
        if name != "Kid A - Hook.wav":
            shutil.copyfile(mount.path / name, export / name)
    (export / "notes.txt").write_text("not a track")
    mount.unmount()
    code, doc = check(mount.report_path, export)
    assert code == 1
    assert states(doc) == {**dict.fromkeys(GOOD - {"Kid A - Hook.wav"}, "ok"), "Kid A - Hook.wav": "missing"}
    assert doc["extra"] == [{"name": "notes.txt", "size": 11}]  # informational: not a failure by itself
    assert doc["counts"] == {"ok": 3, "missing": 1, "wrong_size": 0, "wrong_content": 0, "not_verifiable": 0}


def test_json_shape(tmp_path, server_root, devserver, mounter):
    session = clean_session(tmp_path, server_root, devserver.url)
    mount = mounter(session)
    export = tmp_path / "export"
    run(["cp", "-r", f"{mount.path}/.", str(export)], check=True)
    mount.unmount()
    code, doc = check(mount.report_path, export)
    assert code == 0
    assert set(doc) == {"session", "checked_against", "manifest", "report", "export_dir", "tracks", "extra",
                        "counts", "bytes_hashed", "seconds", "notes", "complete", "exit_code"}
    assert doc["checked_against"] == "report" and doc["report"] == str(mount.report_path)
    assert doc["manifest"] == str(session) and doc["export_dir"] == str(export)
    assert doc["complete"] is True and doc["exit_code"] == 0 and doc["notes"] == []
    for track in doc["tracks"]:
        assert set(track) == {"id", "name", "source", "state", "size", "expected_size", "detail"}
        assert track["size"] == track["expected_size"] == (export / track["name"]).stat().st_size
    # Each exported file hashed once; the two local sources once each.
    sizes = {t["name"]: t["size"] for t in doc["tracks"]}
    local = sizes["Nina - Intro.wav"] + sizes["Nina - Intro (2).wav"]
    assert doc["bytes_hashed"] == sum(sizes.values()) + local


def test_links_and_the_mount_itself_are_not_an_export(tmp_path, server_root, devserver, mounter):
    """Found by trying it: `cp -rs` (links into the mount) and the mount folder itself looked complete —
    until the unmount, when every file is gone."""
    session = session_with_two_failures(tmp_path, server_root, devserver.url)
    mount = mounter(session)
    links = tmp_path / "links"
    run(["cp", "-rs", f"{mount.path}/.", str(links)])
    code, doc = check(mount.report_path, links)
    assert code == 1 and all(t["state"] == "missing" for t in doc["tracks"])
    assert {t["detail"] for t in doc["tracks"] if t["name"] in GOOD} == {"a symbolic link, not a copy"}
    done = run([MIXVFS, "check-export", str(mount.report_path), str(mount.path)])
    assert done.returncode == 2 and "is a mixvfs mount, not an export" in done.stderr


def test_the_last_report_of_another_manifest_of_the_same_name_is_not_used(tmp_path, server_root, devserver,
                                                                         mounter):
    session = session_with_two_failures(tmp_path, server_root, devserver.url)
    mount = mounter(session)
    export = tmp_path / "export"
    export_with_cp(mount, export)
    mount.unmount()
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(session, other / "session.json")  # another manifest file, same session name
    shutil.copytree(tmp_path / "local", other / "local")
    # The blobs (and their index rows) go; the session's last report stays in the cache's reports folder.
    run([CACHECTL, "--cache-dir", str(mount.cache_dir), "prune", "--max-size", "0"], check=True)
    # Where a mount without --report keeps it (the fixture's mounts write theirs elsewhere).
    last = default_report_path(mount.cache_dir, "Test Session", mount_key(mount.path))
    last.parent.mkdir(exist_ok=True)
    shutil.copy(mount.report_path, last)
    _, doc = check(other / "session.json", export, cache_dir=mount.cache_dir)
    assert states(doc)["Kid A - Hook.wav"] == "not_verifiable"  # not verified with another session's digests
    _, doc = check(session, export, cache_dir=mount.cache_dir)
    assert states(doc)["Kid A - Hook.wav"] == "ok"  # this manifest's own last report does verify it
