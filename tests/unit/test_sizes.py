"""The sizes the mount-time probe could not learn, asked again in the background (vfs/fs/sizes.py)."""

from __future__ import annotations

import sys
import threading

from mixvfs.cache.errors import StallTimeout
from mixvfs.cache.remote import RemoteInfo
from mixvfs.vfs.fs.sizes import learn_sizes
from mixvfs.vfs.session.late_answers import LateAnswers
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


def test_an_answer_that_comes_after_the_folder_went_live_is_kept_and_a_stat_waits_for_it():
    """The mount's question still open at its deadline: the answer that comes later is handed to the mount (also
    one that came before the mount listened), and a stat waiting for it wakes with it, no second question."""
    late = LateAnswers()
    late.asking([(0, "http://a/0.wav"), (1, "http://a/1.wav"), (2, "http://a/2.wav")])
    late.arrived(0, "http://a/0.wav", RemoteInfo(100, None, None))  # before the mount listens
    heard: list[tuple[int, object]] = []
    late.listen(lambda place, _url, answer: heard.append((place, answer)))
    assert heard == [(0, RemoteInfo(100, None, None))]
    assert late.pending(1, "http://a/1.wav") and not late.pending(0, "http://a/0.wav")
    waited: list[object] = []
    stat = threading.Thread(target=lambda: waited.append(late.wait(1, "http://a/1.wav", None)), daemon=True)
    stat.start()
    late.arrived(1, "http://a/1.wav", RemoteInfo(200, None, None))
    stat.join(timeout=30)  # a hang guard only
    assert waited == [RemoteInfo(200, None, None)] and heard[-1] == (1, RemoteInfo(200, None, None))
    late.arrived(2, "http://a/2.wav", StallTimeout("timed out"))
    assert not late.any_pending() and late.wait(3, "http://a/3.wav", None) is None  # never asked: no wait
