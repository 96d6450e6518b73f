"""The report's write rule: an urgent update (a failure) returns only once the file shows it, whatever the
report's size; a repeated identical failure rewrites nothing; other events are batched."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

from mixvfs.vfs.fs import report as report_module
from mixvfs.vfs.fs.report import Report, Status, TrackRecord, record_dict
from tests.conftest import wait_until


def records(count: int) -> list[TrackRecord]:
    return [TrackRecord(f"t{i}", f"Artist - Track {i}.wav", "cloud", Status.PENDING) for i in range(count)]


def on_disk(report: Report, track_id: str) -> dict[str, object]:
    for record in json.loads(report.path.read_text())["tracks"]:
        if record["id"] == track_id:
            return dict(record)
    raise KeyError(track_id)


def test_urgent_failure_is_on_disk_when_update_returns_even_for_a_big_report(tmp_path: Path) -> None:
    report = Report(tmp_path / "r.json", session="s", mountpoint="/m", records=records(5000))
    try:
        for i in range(3):
            report.update(f"t{i}", urgent=True, status="failed", error=f"boom {i}", attempts=1)
            assert on_disk(report, f"t{i}")["status"] == "failed"
            assert on_disk(report, f"t{i}")["error"] == f"boom {i}"
    finally:
        report.close()


def test_repeated_identical_failure_rewrites_nothing(tmp_path: Path) -> None:
    report = Report(tmp_path / "r.json", session="s", mountpoint="/m", records=records(3))
    try:
        report.update("t0", urgent=True, status="failed", error="the server answered HTTP 404", attempts=1)
        first = report.path.stat().st_ino  # every write is a new file renamed into place
        for _ in range(50):
            report.update("t0", urgent=True, status="failed", error="the server answered HTTP 404", attempts=1)
        assert report.path.stat().st_ino == first
        report.update("t0", urgent=True, status="failed", error="the server answered HTTP 410", attempts=1)
        assert report.path.stat().st_ino != first  # a new cause is written at once
        assert on_disk(report, "t0")["error"] == "the server answered HTTP 410"
    finally:
        report.close()


def test_urgent_update_waits_for_a_change_another_thread_is_writing(tmp_path: Path) -> None:
    """The worker records the failure; a reader records the same failure a moment later and finds
    nothing changed: it must still not return before the file shows it."""
    report = Report(tmp_path / "r.json", session="s", mountpoint="/m", records=records(3000))
    try:
        worker = threading.Thread(target=report.update, args=("t1",),
                                  kwargs={"urgent": True, "status": "failed", "error": "gone"})
        worker.start()
        # Spinning: the worker's change is made while its write may still be running.
        assert wait_until(lambda: report.record("t1").status == "failed", 30, interval=0)
        report.update("t1", urgent=True, status="failed", error="gone")
        assert on_disk(report, "t1")["status"] == "failed"
        worker.join()
    finally:
        report.close()


def test_non_urgent_updates_are_batched(tmp_path: Path) -> None:
    report = Report(tmp_path / "r.json", session="s", mountpoint="/m", records=records(3))
    try:
        first = report.path.stat().st_ino
        report.update("t0", status="fetching", attempts=1)
        assert report.path.stat().st_ino == first  # not written by the update itself
    finally:
        report.close()
    assert on_disk(report, "t0")["status"] == "fetching"


def test_a_report_that_cannot_be_written_never_raises_into_the_reader(tmp_path: Path) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    report = Report(folder / "r.json", session="s", mountpoint="/m", records=records(2))
    shutil.rmtree(folder)  # the folder is gone: every write fails
    report.update("t0", urgent=True, status="failed", error="boom")
    report.close(finished=True)


def test_a_readers_eio_stays_in_the_report_after_the_track_is_whole_again(tmp_path: Path) -> None:
    """A reader refused with EIO while the track itself did not fail (it changed under another reader): the
    download that ends well later clears ``error``, but that reader's copy may be missing, so the report keeps
    ``reader_error``, shows it, and `mixvfs report` / the unmount summary count it as a problem."""
    from mixvfs.vfs.commands.cli import served_summary
    from mixvfs.vfs.fs.report import format_report, has_problem, load_report

    report = Report(tmp_path / "r.json", session="s", mountpoint="/m", records=records(2))
    try:
        why = "the file changed while another program is reading it"
        report.update("t0", urgent=True, error=why, reader_error=why)
        report.update("t0", urgent=True, status=Status.CACHED, error=None, bytes=10)
        report.update("t1", urgent=True, status=Status.CACHED, bytes=10)
        assert on_disk(report, "t0")["reader_error"] == why and on_disk(report, "t0")["error"] is None
        data = load_report(report.path)
        assert [has_problem(t) for t in data["tracks"]] == [True, False]
        assert f"a reader got an input/output error: {why}" in format_report(data)
        summary = served_summary(report.path)
        assert summary[0].startswith("2 tracks whole (local or cached), 1 refused to a reader (input/output error)")
        assert "check-export" in summary[1]
    finally:
        report.close()


def test_a_report_written_in_chunks_is_the_whole_document(tmp_path: Path, monkeypatch: Any) -> None:
    """The file is encoded a chunk of records at a time; it is still one JSON document holding every record
    in session order, its header and what ``close`` adds, for an empty report and at the chunk boundaries."""
    monkeypatch.setattr(report_module, "WRITE_CHUNK", 3)
    for count in (0, 1, 3, 7):
        path = tmp_path / f"r{count}.json"
        report = Report(path, session="s\u00e9", mountpoint="/m", records=records(count), manifest="/x.json")
        if count:
            report.update("t0", status="failed", error="the server answered HTTP 404 \u2014 gone")
        report.close(finished=True)
        doc = json.loads(path.read_text())
        assert {k: v for k, v in doc.items() if k != "started"} == {
            "session": "s\u00e9", "mountpoint": "/m", "manifest": "/x.json", "finished": True, "eio_answers": {},
            "tracks": [record_dict(r) for r in report.records()]}
        assert [t["id"] for t in doc["tracks"]] == [f"t{i}" for i in range(count)]
        assert not count or doc["tracks"][0]["error"] == "the server answered HTTP 404 \u2014 gone"


def test_a_track_held_for_its_record_reads_and_writes_as_the_record_its_listing_implies(tmp_path: Path) -> None:
    """A pending, local or missing track costs the report no record of its own until something happens to it:
    the track stands for its record, which reads, updates and writes exactly as that record would."""
    from mixvfs.vfs.fs.report import listed_record
    from mixvfs.vfs.session.manifest import load_manifest
    from mixvfs.vfs.session.tracks import build_tracks
    from tests.conftest import write_session

    (tmp_path / "here.wav").write_bytes(b"RIFF" + bytes(96))
    session = load_manifest(write_session(tmp_path / "s.json", [
        {"id": "l", "title": "here", "file_path": "here.wav"},
        {"id": "c", "title": "there", "cloud_stream_path": "/c.wav", "size": 4000},
        {"id": "m", "title": "gone", "file_path": "gone.wav"},
    ], server="http://127.0.0.1:9"))
    tracks = build_tracks(session, http=None, index=None)
    held = Report(tmp_path / "held.json", session="s", mountpoint="/m", records=tracks)
    made = Report(tmp_path / "made.json", session="s", mountpoint="/m", records=[listed_record(t) for t in tracks])
    try:
        written = json.loads(held.path.read_text())["tracks"]
        assert written == json.loads(made.path.read_text())["tracks"]
        assert [(t["id"], t["source"], t["status"], t["bytes"]) for t in written] == [
            ("l", "local", "local", 100), ("c", "cloud", "pending", 4000), ("m", "missing", "missing", None)]
        assert written[2]["error"] == tracks[2].reason and "gone.wav" in written[2]["error"]
        assert held.records() == made.records() == [held.record(t.id) for t in tracks]

        for report in (held, made):
            report.update("c", urgent=True, status=Status.FAILED, error="boom", attempts=1)
        assert held.record("c") == made.record("c") and held.record("c").status is Status.FAILED
        assert json.loads(held.path.read_text())["tracks"] == json.loads(made.path.read_text())["tracks"]
        assert held.record("l") == listed_record(tracks[0])  # the others still as listed
    finally:
        held.close()
        made.close()


def test_a_report_published_later_writes_nothing_until_then_and_nothing_at_all_if_never(tmp_path: Path) -> None:
    """A mount's report is published once its folder is live: a mount that never happened leaves none, and
    the last mount's report at that path stays as it was."""
    path = tmp_path / "reports" / "r.json"
    path.parent.mkdir()
    path.write_text('{"the last mount": true}')
    never = Report(path, session="s", mountpoint="/m", records=records(3), publish_later=True)
    never.update("t1", status=Status.FAILED, error="boom", urgent=True)
    never.close(finished=True)
    assert json.loads(path.read_text()) == {"the last mount": True}
    assert list(path.parent.iterdir()) == [path]  # the writability probe left nothing
    live = Report(path, session="s", mountpoint="/m", records=records(3), publish_later=True)
    live.publish()
    assert on_disk(live, "t1")["status"] == "pending"
    live.update("t1", status=Status.FAILED, error="boom", urgent=True)
    assert on_disk(live, "t1")["error"] == "boom"
    live.close()


def test_a_track_finds_its_record_by_its_place_with_no_map_by_id_and_by_id_when_the_place_moved(
        tmp_path: Path) -> None:
    """The report finds a track's record at the track's place in its manifest: a 10 000-track report keeps no
    map by id (a pointer per track, not a dict's ~40 bytes). A track whose place now holds another track (a
    reload moved it) is still found by its id, and one the session no longer has is left alone."""
    import gc
    import tracemalloc

    from mixvfs.vfs.fs.report import listed_record
    from mixvfs.vfs.session.manifest import load_manifest
    from mixvfs.vfs.session.tracks import build_tracks
    from tests.conftest import write_session

    count = 10_000
    session = load_manifest(write_session(tmp_path / "s.json", [
        {"id": f"c{i}", "title": f"T{i}", "cloud_stream_path": f"/{i}.wav", "size": 10} for i in range(count)],
        server="http://127.0.0.1:9"))
    tracks = build_tracks(session, http=None, index=None)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        report = Report(tmp_path / "r.json", session="s", mountpoint="/m", records=tracks)
        for track in tracks[::100]:
            assert report.has(track) and report.record(track) == listed_record(track)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    try:
        assert kept < 12 * count, f"{kept / count:.0f} bytes per track"
        report.update(tracks[5], status=Status.FAILED, error="boom", attempts=1)
        assert report.record("c5").status is Status.FAILED and report.record(tracks[6]).status is Status.PENDING

        moved = [tracks[1], tracks[0], *tracks[2:5]]  # a reload: c1 now first, c0 second, the rest gone
        report.replace_records(moved)
        report.update(tracks[0], status=Status.FAILED, error="moved", attempts=1)
        assert report.record(tracks[0]).error == "moved" and report.record("c1").error is None
        assert [r.id for r in report.records()] == ["c1", "c0", "c2", "c3", "c4"]
        report.update(tracks[7], status=Status.FAILED, error="gone")  # no longer in the session: nothing
        assert not report.has(tracks[7]) and not report.has("c7")
        assert [r.error for r in report.records()] == [None, "moved", None, None, None]
    finally:
        report.close()


def test_a_report_that_cannot_be_written_is_said_once_in_the_log_then_once_when_written_again(
        tmp_path: Path, caplog: Any) -> None:
    """A report folder unusable through an export (the cache folder made unreadable): one log line, not one per
    track failing meanwhile; one line when a write succeeds again, and the file then holds every failure."""
    caplog.set_level("INFO", logger="mixvfs.vfs.fs.report")
    folder = tmp_path / "reports"
    folder.mkdir()
    report = Report(folder / "r.json", session="s", mountpoint="/m", records=records(40))
    try:
        shutil.rmtree(folder)
        folder.write_text("a file where the report's folder was\n")  # every write fails: it cannot be made again
        for n in range(40):
            report.update(f"t{n}", urgent=True, status="failed", error="boom")
        said = [r.getMessage() for r in caplog.records if "cannot write the report" in r.getMessage()]
        assert len(said) == 1, said
        folder.unlink()
        folder.mkdir()
        report.update("t0", urgent=True, status="failed", error="boom again")
        assert on_disk(report, "t39")["status"] == "failed" and on_disk(report, "t0")["error"] == "boom again"
        again = [r.getMessage() for r in caplog.records if r.getMessage().endswith("is written again")]
        assert len(again) == 1, again
    finally:
        report.close(finished=True)


def test_the_status_of_a_failed_track_downloaded_again_shows_it_once_as_downloading() -> None:
    """`mixvfs status` during a silent server: tracks that failed (stalled) and are queued again were counted as
    downloading in the header and listed under "failed" too. Each track is shown once: its download's row."""
    from mixvfs.vfs.fs.live_status import report_summary

    report = Report(Path("/nonexistent/r.json"), session="s", mountpoint="/m", records=records(4),
                    publish_later=True)  # nothing is written: the summary reads the records in memory
    report.update("t0", status="failed", error="no answer")
    report.update("t1", status="failed", error="no answer")
    report.update("t2", status="cached")
    summary = report_summary(report, downloading_ids={"t1", "t3"})
    assert summary["counts"] == {"failed": 1, "downloading": 2, "cached": 1}, summary
    assert summary["failed"] == [{"name": "Artist - Track 0.wav", "error": "no answer"}], summary
    assert summary["failed_total"] == 1, summary
    report.close()


def test_the_status_counts_a_track_whose_reader_got_eio_as_the_report_does() -> None:
    """A reader given EIO (a server down, the track's download retrying in the background, or had later): the
    report counts it as a problem and `mixvfs report` exits 1; `mixvfs status` said "failed: 0" and exited 0
    while readers were getting EIO. The row stays where its state puts it (downloading, cached)."""
    from mixvfs.vfs.fs.live_status import report_summary

    report = Report(Path("/nonexistent/r.json"), session="s", mountpoint="/m", records=records(3),
                    publish_later=True)
    report.update("t0", status="failed", error="server unreachable", reader_error="server unreachable")
    report.update("t1", status="cached", reader_error="server unreachable")
    summary = report_summary(report, downloading_ids={"t0"})
    assert summary["counts"] == {"downloading": 1, "cached": 1, "pending": 1}, summary
    assert summary["failed_total"] == 2, summary
    failed = summary["failed"]
    assert isinstance(failed, list)
    assert {f["name"]: f["error"] for f in failed} == {
        "Artist - Track 0.wav": "a reader got an input/output error: server unreachable",
        "Artist - Track 1.wav": "a reader got an input/output error: server unreachable"}
    report.close()


def test_the_servers_word_for_a_certificate_not_trusted_says_what_will_help() -> None:
    """A certificate not trusted is no connection, but no answer will ever come by waiting: the line says what to
    set (the mount used to say the tracks "will fail until it answers")."""
    from mixvfs.cache.errors import CertificateNotTrusted, ServerUnreachable
    from mixvfs.vfs.fs.server_word import ServerWord

    word = ServerWord(lambda _track: False)
    word.hear(ServerUnreachable("server unreachable: cannot connect to music.example"))
    assert (word.text([]) or "").endswith("will fail until it answers")
    word.hear(CertificateNotTrusted("certificate not trusted: music.example:443: self-signed certificate"))
    assert (word.text([]) or "").endswith(
        "will fail until its certificate is trusted (SSL_CERT_FILE names the certificates to trust)")
