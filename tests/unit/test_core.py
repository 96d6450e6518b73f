"""SessionFS without a kernel, against a real dev server process."""

from __future__ import annotations

import json
import sys

import pytest

from mixvfs.cache.errors import FetchError
from mixvfs.cache.store import BlobStore
from mixvfs.vfs.fs.handles import StreamHandle
from mixvfs.vfs.fs.report import Report
from mixvfs.vfs.fs.sessionfs import SessionFS
from mixvfs.vfs.session.manifest import load_manifest
from mixvfs.vfs.session.tracks import build_tracks
from tests.conftest import wait_until, write_session
from tools.make_audio import write_sized

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def settle(fs: SessionFS) -> None:
    """Wait (bounded) until no download is in flight, i.e. finished ones are committed."""
    assert wait_until(lambda: not fs.fetcher.active()), fs.fetcher.active()


def read_all(fs: SessionFS, name: str, chunk: int = 128 * 1024) -> bytes:
    track = fs.lookup(name)
    assert track is not None
    opened = fs.open(track)
    data = b""
    try:
        while True:
            piece = fs.read(opened.handle, chunk, len(data))
            if not piece:
                return data
            data += piece
    finally:
        fs.release(opened.handle)


def test_reads_wait_only_for_the_bytes_they_need(make_fs, server_root, devserver):
    body = bytes(range(256)) * (4 * MiB // 256)
    (server_root / "slow.wav").write_bytes(body)
    devserver.set_faults({"/slow.wav": {"hold": "slow", "hold_after": MiB}})  # parks after 1 MiB until released
    fs = make_fs([{"id": "s", "artist": "A", "title": "Slow", "cloud_stream_path": "/slow.wav",
                   "size": len(body)}], devserver.url)
    opened = fs.open(fs.lookup("A - Slow.wav"))
    assert isinstance(opened.handle, StreamHandle)
    first = fs.read(opened.handle, 65536, 0)
    assert first == body[:65536]
    assert opened.handle.download.available <= MiB  # served while the rest of the download was held back
    devserver.release("slow")
    fs.release(opened.handle)
    assert read_all(fs, "A - Slow.wav") == body


def test_two_readers_share_one_download(make_fs, server_root, devserver):
    body = b"x" * (2 * MiB)
    (server_root / "t.wav").write_bytes(body)
    devserver.set_faults({"/t.wav": {"hold": "t", "hold_after": 64 * 1024}})  # in flight until both are open
    fs = make_fs([{"id": "t", "artist": "A", "title": "T", "cloud_stream_path": "/t.wav", "size": len(body)}],
                 devserver.url)
    one = fs.open(fs.lookup("A - T.wav"))
    two = fs.open(fs.lookup("A - T.wav"))
    assert isinstance(one.handle, StreamHandle) and isinstance(two.handle, StreamHandle)
    assert one.handle.download is two.handle.download
    devserver.release("t")
    assert fs.read(two.handle, 64 * 1024, MiB) == body[MiB : MiB + 64 * 1024]
    fs.release(one.handle)
    fs.release(two.handle)
    assert read_all(fs, "A - T.wav") == body
    assert len(devserver.requests("GET", "/t.wav")) == 1


def test_identical_content_behind_two_tracks_is_stored_once(make_fs, server_root, devserver):
    for name in ("one.wav", "two.wav"):
        (server_root / name).write_bytes(b"same audio" * 5000)
    fs = make_fs([{"id": "1", "artist": "A", "title": "One", "cloud_stream_path": "/one.wav"},
                  {"id": "2", "artist": "A", "title": "Two", "cloud_stream_path": "/two.wav"}], devserver.url)
    assert read_all(fs, "A - One.wav") == read_all(fs, "A - Two.wav") == b"same audio" * 5000
    settle(fs)
    assert len(fs.fetcher.store.infos()) == 1


def test_failure_is_remembered_until_failed_for(make_fs, server_root, devserver):
    (server_root / "e.wav").write_bytes(b"e" * 1000)
    devserver.set_faults({"/e.wav": {"status": 404}})
    clock = Clock()
    fs = make_fs([{"id": "e", "artist": "A", "title": "E", "cloud_stream_path": "/e.wav", "size": 1000}],
                 devserver.url, failed_for=60, now=clock)
    with pytest.raises(FetchError, match="404"):
        read_all(fs, "A - E.wav")
    record = json.loads(fs.report.path.read_text())["tracks"][0]
    assert (record["status"], record["attempts"]) == ("failed", 1)
    assert "HTTP 404" in record["error"]
    with pytest.raises(FetchError, match="404"):  # the open fails at once, no new GET: no empty copy is made
        fs.open(fs.lookup("A - E.wav"))
    assert len(devserver.requests("GET", "/e.wav")) == 1
    devserver.set_faults({})
    clock.t += 59  # still inside the window: the fixed server is not asked yet
    with pytest.raises(FetchError, match="404"):
        fs.open(fs.lookup("A - E.wav"))
    assert len(devserver.requests("GET", "/e.wav")) == 1
    clock.t += 2
    assert read_all(fs, "A - E.wav") == b"e" * 1000
    assert len(devserver.requests("GET", "/e.wav")) == 2


def test_a_size_that_could_not_be_learned_answers_0_from_memory_and_opens_fail_while_the_kernel_may_hold_it(
        make_fs, server_root, devserver):
    (server_root / "u.wav").write_bytes(b"u" * 1000)
    devserver.set_faults({"/u.wav": {"status": 503, "head": True}})
    clock = Clock()
    fs = make_fs([{"id": "u", "artist": "A", "title": "U", "cloud_stream_path": "/u.wav"}], devserver.url,
                 failed_for=60, attr_timeout=1.0, now=clock)
    track = fs.lookup("A - U.wav")
    assert track is not None and track.size is None
    with pytest.raises(FetchError, match="503"):
        fs.attributes(track)  # asked of the server, which cannot say
    asked = len(devserver.requests())
    assert fs.attributes(track)[0] == 0  # from memory: no request
    assert fs.track_xattrs(track)["status"] == "failed"
    with pytest.raises(FetchError, match="size is unknown"):
        fs.open(track)  # never opened as an empty file
    assert len(devserver.requests()) == asked
    devserver.set_faults({})
    clock.t += 59.5
    assert fs.attributes(track)[0] == 0  # the kernel may hold this 0 until 60.5
    fs.state.learn_size(track, 1000)  # learned meanwhile (the background probe)
    clock.t += 0.7  # failed_for is over, but the 0 answered at 59.5 may sit in the kernel until 60.5
    with pytest.raises(FetchError, match="may still say 0 bytes"):
        fs.open(track)
    clock.t += 0.4
    assert read_all(fs, "A - U.wav") == b"u" * 1000


def test_length_mismatch_is_a_failure_and_nothing_is_stored(make_fs, server_root, devserver):
    (server_root / "m.wav").write_bytes(b"m" * 1000)
    fs = make_fs([{"id": "m", "artist": "A", "title": "M", "cloud_stream_path": "/m.wav", "size": 999}],
                 devserver.url)
    with pytest.raises(FetchError, match="length mismatch"):
        read_all(fs, "A - M.wav")
    settle(fs)
    assert fs.fetcher.store.infos() == []
    assert list(fs.fetcher.store.staging.iterdir()) == []


def test_missing_track_reads_fail_and_report_says_why(make_fs, devserver, tmp_path):
    fs = make_fs([{"id": "x", "artist": "A", "title": "X", "file_path": str(tmp_path / "nope.wav")}], devserver.url)
    with pytest.raises(FetchError, match=r"nope\.wav"):
        read_all(fs, "A - X.wav")
    record = json.loads(fs.report.path.read_text())["tracks"][0]
    assert (record["source"], record["status"]) == ("missing", "missing")


def test_a_track_another_process_cached_meanwhile_is_reported_cached_not_pending(
        make_fs, make_fetcher, server_root, devserver, tmp_path):
    """Two processes on one cache (a mount and `cachectl warm`, or two warms): B's report was made before A
    stored the track; B's prefetch then has nothing to fetch — the report must say cached, or a warm waiting
    for every track to settle waits forever."""
    write_sized(server_root / "t.wav", 200_000, seed=4)
    entry = [{"id": "t", "artist": "A", "title": "T", "cloud_stream_path": "/t.wav", "size": 200_000,
              "content_type": "audio/wav"}]
    first = make_fs(entry, devserver.url)  # process A (no prefetch)
    session = load_manifest(tmp_path / "s.json")
    store = BlobStore(tmp_path / "cache", max_size=100 * MiB, max_age=86400)  # process B: its own connections
    fetcher = make_fetcher(store, stall_timeout=5)
    report = Report(tmp_path / "report-b.json", session=session.name, mountpoint="-", records=[])
    second = SessionFS(build_tracks(session, http=None, index=store.index), fetcher, report, prefetch=True)
    report.replace_records(second.initial_records())
    assert report.record("t").status == "pending"
    assert len(read_all(first, "A - T.wav")) == 200_000  # A downloads and stores it
    settle(first)
    second.start_prefetch()
    assert wait_until(lambda: report.record("t").status == "cached"), report.record("t")
    assert len(devserver.requests("GET", "/t.wav")) == 1  # B did not download it again
    second.close()
    report.close()
    store.close()


def test_read_into_a_buffer_gives_the_bytes_read_gives(make_fs, server_root, devserver):
    """The mount answers reads by pread into libfuse's own buffer (one copy less than returning bytes): the
    same bytes, a short count at the end of the file, nothing past it — cloud and local tracks alike."""
    body = bytes(range(256)) * (3 * MiB // 256) + b"tail"
    (server_root / "c.wav").write_bytes(body)
    (server_root / "l.wav").write_bytes(body)
    fs = make_fs([{"id": "c", "artist": "A", "title": "Cloud", "cloud_stream_path": "/c.wav", "size": len(body)},
                  {"id": "l", "artist": "A", "title": "Local", "file_path": str(server_root / "l.wav")}],
                 devserver.url)
    for name in ("A - Cloud.wav", "A - Local.wav"):
        opened = fs.open(fs.lookup(name))
        try:
            buffer = bytearray(MiB)
            got = b""
            while count := fs.read_into(opened.handle, memoryview(buffer), len(got)):
                got += buffer[:count]
            assert got == body
            assert fs.read_into(opened.handle, memoryview(buffer), len(body) + 5) == 0
        finally:
            fs.release(opened.handle)


def test_the_look_ahead_walks_only_the_tracks_the_cache_holds(make_fs, server_root, devserver):
    # A cold mount has nothing to revalidate: its look-ahead starts no worker (each used to look every track up in
    # the index, twice, while the downloads needed the interpreter); a warm one asks about its stored tracks only.
    tracks = [{"id": n, "artist": "A", "title": n, "cloud_stream_path": f"/{n}.wav", "size": len(n) * 4000}
              for n in ("one", "two", "three")]
    for n in ("one", "two", "three"):
        (server_root / f"{n}.wav").write_bytes(n.encode() * 4000)
    cold = make_fs(tracks, devserver.url)
    cold.look_ahead.start(cold.tracks)
    assert cold.look_ahead.workers == 0
    assert read_all(cold, "A - two.wav") == b"two" * 4000
    settle(cold)
    warm = make_fs(tracks, devserver.url)
    warm.look_ahead.start(warm.tracks)
    assert warm.look_ahead.workers == 1
    two = warm.lookup("A - two.wav")
    assert two is not None
    assert wait_until(lambda: warm.state.fresh(two))  # the look-ahead confirmed it with the server
    assert [r["path"] for r in devserver.requests("HEAD")] == ["/two.wav"]


def test_a_readers_place_in_the_listing_is_its_manifest_index_and_none_once_a_reload_left_it_out(
        make_fs, server_root, devserver, tmp_path):
    names = ("one", "two", "three")
    tracks = [{"id": n, "artist": "A", "title": n, "cloud_stream_path": f"/{n}.wav", "size": 4000} for n in names]
    fs = make_fs(tracks, devserver.url)
    assert [fs._listed_at(t) for t in fs.tracks] == [0, 1, 2]
    old_three = fs.tracks[2]
    reloaded = load_manifest(write_session(tmp_path / "s2.json", tracks[::-1], server=devserver.url))
    fs.reload(build_tracks(reloaded, http=fs.fetcher.http, index=fs.fetcher.index))
    assert [t.id for t in fs.tracks] == ["three", "two", "one"]
    assert [fs._listed_at(t) for t in fs.tracks] == [0, 1, 2]
    assert fs._listed_at(old_three) == -1  # an open file of the listing before: the look-ahead stays where it is


def test_a_big_listing_keeps_no_string_or_list_per_track_beyond_its_own(make_fs, devserver):
    """What a mount keeps per track (the spec, the track, its source and name, the tracks sorted by name and by
    URL) traced by tracemalloc: no label string made for the log, no list per source, no map of places, no map
    by id, name or URL, no second string for the stream path, and no report record for a track nothing has
    happened to (826 bytes with one)."""
    import gc
    import tracemalloc
    count = 5000
    tracks = [{"id": f"c{i}", "artist": "A", "title": f"T{i:05d}", "cloud_stream_path": f"/s/{i}.wav",
               "size": 4096, "content_type": "audio/wav"} for i in range(count)]
    gc.collect()
    tracemalloc.start()
    try:
        fs = make_fs(tracks, devserver.url)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(fs.tracks) == count
    assert fs.tracks[7].source is not None and str(fs.tracks[7].source.label) == "A - T00007.wav"
    assert kept < 655 * count, f"{kept / count:.0f} bytes kept per track"  # 669 with a dict by name and by URL


def test_a_listing_with_attributes_keeps_a_size_per_file_and_nothing_more(make_fs, devserver):
    """``ls -l`` hands every file's attributes to the kernel; what the mount keeps of that is the size it told,
    per file (a size the next open compares with), not a page-table record per file (~150 bytes each)."""
    import gc
    import tracemalloc
    count = 5000
    fs = make_fs([{"id": f"c{i}", "title": f"T{i:05d}", "cloud_stream_path": f"/s/{i}.wav", "size": 4096}
                  for i in range(count)], devserver.url)
    listing = fs.listing()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        attributes = [fs.known_attributes(t) for t in listing]
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert {a[0] for a in attributes if a is not None} == {4096} and None not in attributes
    kept -= sys.getsizeof(attributes) + sum(sys.getsizeof(a) for a in attributes)  # the answers themselves
    assert kept < 50 * count, f"{kept / count:.0f} bytes kept per file listed"


def test_a_download_is_told_to_every_track_of_its_version_and_to_no_other(make_fs, server_root, devserver):
    # Two tracks of one URL and one size share the download; a third names the URL with another size: another
    # version, whose record the download must not touch.
    (server_root / "a.wav").write_bytes(b"a" * 4000)
    fs = make_fs([{"id": "one", "title": "one", "cloud_stream_path": "/a.wav", "size": 4000},
                  {"id": "two", "title": "two", "cloud_stream_path": "/a.wav", "size": 4000},
                  {"id": "odd", "title": "odd", "cloud_stream_path": "/a.wav", "size": 3999},
                  {"id": "b", "title": "b", "cloud_stream_path": "/b.wav", "size": 10}], devserver.url)
    one, two, odd, b = fs.tracks
    assert one.source is not None and odd.source is not None and b.source is not None
    assert fs._by_source.of(one.source) == (one, two)
    assert fs._by_source.of(odd.source) == (odd,)
    assert fs._by_source.of(b.source) == (b,)
    assert read_all(fs, one.name) == b"a" * 4000
    settle(fs)
    # The fetcher forgets a download before it tells the download's end, one track after the other: wait for
    # that telling to reach both tracks (on a loaded machine the report was read between the two).
    wait_until(lambda: {r.id: r.status.value for r in fs.report.records()}["two"] != "fetching")
    statuses = {r.id: r.status.value for r in fs.report.records()}
    assert statuses["one"] == statuses["two"] == "cached", statuses
    assert statuses["odd"] == "pending" and statuses["b"] == "pending", statuses


def test_a_track_just_downloaded_is_not_revalidated_while_its_end_is_being_told(make_fs, server_root, devserver):
    """Between a download's commit (its blob in the index) and the mount hearing DONE (the track noted as
    confirmed), an open found the track merely cached and asked the server about the bytes it had just sent: a
    HEAD, one round trip on the exporter's path (1-7 per cold export of 200 tracks over the emulated link). A
    subscriber told of DONE before the mount's own is inside that window."""
    import threading

    from mixvfs.cache.download import Event
    from mixvfs.cache.http import Freshness

    write_sized(server_root / "t.wav", 150_000, seed=4)
    fs = make_fs([{"id": "t", "artist": "A", "title": "t", "cloud_stream_path": "/t.wav", "size": 150_000}],
                 devserver.url)
    source = fs.tracks[0].source
    assert source is not None
    told = threading.Event()
    answers: list[Freshness] = []

    def inside_the_window(_download: object, event: Event) -> None:
        if event is Event.DONE:
            answers.append(fs.fetcher.revalidate(source))
            told.set()

    fs.fetcher._subscribers.insert(0, inside_the_window)  # heard before the mount's own subscriber
    assert len(read_all(fs, "A - t.wav")) == 150_000
    assert told.wait(30)
    assert answers == [Freshness.UNCHANGED]
    assert devserver.requests("HEAD", "/t.wav") == []
    # Once every subscriber was told, the track is confirmed for the mount; later, a revalidation asks the server
    # as before.
    assert wait_until(lambda: not fs.fetcher._downloading(source))
    assert fs.state.fresh(fs.tracks[0])
    assert fs.fetcher.revalidate(source) is Freshness.UNCHANGED
    assert len(devserver.requests("HEAD", "/t.wav")) == 1


def test_the_last_download_of_a_burst_is_in_the_report_file_when_its_event_is_told(make_fs, server_root, devserver):
    """A `mixvfs report` right after `cp` of the last track read the report file before the batch that says
    "cached" was written (up to a batch interval later). The last download to end, with a small report, is
    written through: on disk by the time its event has been told to every subscriber."""
    import threading

    from mixvfs.cache.download import Event

    write_sized(server_root / "t.wav", 150_000, seed=3)
    fs = make_fs([{"id": "t", "artist": "A", "title": "t", "cloud_stream_path": "/t.wav", "size": 150_000,
                   "content_type": "audio/wav"}], devserver.url)
    told = threading.Event()
    seen: dict[str, object] = {}

    def after_the_recorder(_download: object, event: Event) -> None:
        if event is Event.DONE:
            tracks = json.loads(fs.report.path.read_text())["tracks"]
            seen["on_disk"] = next(t for t in tracks if t["id"] == "t")["status"]
            told.set()

    fs.fetcher.subscribe(after_the_recorder)  # subscribers hear in order: the mount's recorder first
    assert len(read_all(fs, "A - t.wav")) == 150_000
    assert told.wait(30)
    assert seen["on_disk"] == "cached", seen
