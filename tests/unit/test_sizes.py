"""The sizes the mount-time probe could not learn, asked again in the background (vfs/fs/sizes.py)."""

from __future__ import annotations

import sys
import threading

from mixvfs.vfs.fs.sizes import learn_sizes
from tests.conftest import wait_until
from tools.make_audio import write_sized


def test_a_stat_while_the_background_asks_for_a_size_waits_for_that_answer(make_fs, server_root, devserver):
    """The background's question and a stat's are one question: the stat waits on the track's question lock for
    the answer under way instead of sending a second HEAD (a suite run under load saw three HEADs for one size)."""
    write_sized(server_root / "t.wav", 5000, kind="wav", seed=1)
    devserver.set_faults({"/t.wav": {"status": 503, "head": True, "times": 1}})  # the mount's probe fails
    fs = make_fs([{"id": "t", "title": "t", "cloud_stream_path": "/t.wav", "content_type": "audio/wav"}],
                 devserver.url)
    track = fs.tracks[0]
    assert fs.state.size(track) is None and fs.state.probe_failure(track) is not None
    devserver.set_faults({"/t.wav": {"hold": "size", "hold_head": True}})  # every HEAD now waits to be released
    stop = threading.Event()
    background = threading.Thread(target=learn_sizes, args=(lambda: fs.tracks, fs.fetcher, fs.state, stop),
                                  daemon=True)
    background.start()
    devserver.wait_held("size")  # the background's HEAD is at the server
    answers: list[int] = []
    stat = threading.Thread(target=lambda: answers.append(fs.attributes(track)[0]), daemon=True)
    stat.start()

    def stat_waits() -> bool:
        """The stat is waiting: on the track's question lock (its innermost Python frame is the size's
        question), or on a HEAD of its own at the server."""
        frame = sys._current_frames().get(stat.ident or 0)
        on_lock = frame is not None and frame.f_code.co_name == "_cloud_size"
        return on_lock or devserver.held("size") >= 2

    assert wait_until(stat_waits, 30)
    devserver.release("size")
    stat.join(30)
    stop.set()
    background.join(30)
    assert answers == [5000]
    assert len(devserver.requests("HEAD", "/t.wav")) == 2  # the mount's and the background's: none from the stat
