"""The prefetch pass keeps a few more downloads queued than the fetcher's ``jobs`` and is woken to queue more only
once that many have ended (mixvfs/vfs/fs/prefetch.py, ``REFILL``): the fetcher never waits for it, and an ending
download does not wake it each time."""

from __future__ import annotations

import functools
from pathlib import Path

from mixvfs.cache.store import BlobStore
from mixvfs.vfs.fs.prefetch import REFILL, Prefetcher
from mixvfs.vfs.fs.recorder import Recorder
from mixvfs.vfs.fs.report import Report
from mixvfs.vfs.session.manifest import load_manifest
from mixvfs.vfs.session.tracks import build_tracks
from tests.conftest import wait_until, write_session
from tests.unit.conftest import MakeFetcher
from tools.devserver import DevServer
from tools.make_audio import write_sized

COUNT = 16
JOBS = 2


def test_the_pass_queues_refill_more_than_jobs_and_refills_only_when_that_many_ended(
        tmp_path: Path, server_root: Path, devserver: DevServer, store: BlobStore,
        make_fetcher: MakeFetcher) -> None:
    specs = []
    for i in range(COUNT):
        write_sized(server_root / f"t{i}.wav", 20_000, seed=i)
        specs.append({"id": f"t{i}", "artist": "A", "title": f"T{i}", "cloud_stream_path": f"/t{i}.wav",
                      "size": 20_000})
    devserver.set_faults({f"/t{i}.wav": {"hold": f"t{i}"} for i in range(COUNT)})
    session = load_manifest(write_session(tmp_path / "s.json", specs, server=devserver.url))
    tracks = build_tracks(session, http=None, index=None)
    fetcher = make_fetcher(store, jobs=JOBS)
    report = Report(tmp_path / "report.json", session=session.name, mountpoint="-", records=[])
    recorder = Recorder(report, fetcher)
    report.replace_records(recorder.initial_records(tracks))
    prefetcher = Prefetcher(fetcher, recorder)
    assert prefetcher.slots == JOBS + REFILL
    try:
        prefetcher.start(tracks)
        in_flight = JOBS + REFILL
        assert wait_until(lambda: len(fetcher.active()) == in_flight)  # two running, REFILL queued behind them
        devserver.wait_held("t0")
        devserver.wait_held("t1")

        def cached(count: int) -> bool:
            return sum(t.source is not None and fetcher.cached(t.source) is not None for t in tracks) == count

        for ended in range(1, REFILL):  # fewer than REFILL ended: the pass queues nothing more
            devserver.release(f"t{ended - 1}")
            assert wait_until(functools.partial(cached, ended))
            devserver.wait_held(f"t{ended + 1}")  # the fetcher runs the next queued one
            assert {d.source.url.rsplit("/", 1)[1] for d in fetcher.active()} == {
                f"t{i}.wav" for i in range(ended, in_flight)}
        devserver.release(f"t{REFILL - 1}")  # the REFILL-th: REFILL more are queued at once
        assert wait_until(lambda: cached(REFILL))
        assert wait_until(lambda: len(fetcher.active()) == in_flight)
        assert {d.source.url.rsplit("/", 1)[1] for d in fetcher.active()} == {
            f"t{i}.wav" for i in range(REFILL, REFILL + in_flight)}
        for i in range(REFILL, COUNT):
            devserver.release(f"t{i}")
        assert wait_until(lambda: cached(COUNT))
    finally:
        prefetcher.stop()
        recorder.close()
        report.close()
