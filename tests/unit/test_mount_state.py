"""MountState: what a mount learns of its tracks after the listing, and the one freshness rule."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from mixvfs.cache.remote import Source
from mixvfs.vfs.fs.mount_state import MountState
from mixvfs.vfs.session.manifest import TrackSpec
from mixvfs.vfs.session.tracks import Kind, Track


def cloud_track(*, size: int | None = None, validated: bool = False) -> Track:
    spec = TrackSpec(0, "t1", "A", "T", None, "/t.wav", "http://x/t.wav", size, None)
    return Track(spec, Kind.CLOUD, "A - T.wav", size, 5.0, Source("http://x/t.wav", size=size),
                 validated=validated)


def test_a_track_is_a_frozen_value_and_the_mount_learns_beside_it():
    track, state = cloud_track(), MountState()
    with pytest.raises(dataclasses.FrozenInstanceError):
        track.size = 1  # type: ignore[misc]
    assert state.size(track) is None
    state.learn_size(track, 1000)
    state.learn_size(track, 999)  # the first answer stays: every answer is the same version's
    assert (state.size(track), track.size) == (1000, None)
    state.changed(track, 50.0)
    assert (state.mtime(track), track.mtime) == (50.0, 5.0)


def test_freshness_is_the_listing_s_or_a_confirmation_in_this_mount():
    state = MountState()
    assert state.fresh(cloud_track(validated=True))  # the listing's probe named this very version
    track = cloud_track()
    assert not state.fresh(track)
    state.confirmed(track)  # a download ended, or the look-ahead asked
    assert state.fresh(track)
    other = cloud_track()
    state.revalidated(other)  # an open asked, whatever the answer
    assert state.fresh(other)


def test_a_reload_keeps_only_what_was_learned_of_listed_tracks():
    state, old, new = MountState(), cloud_track(), cloud_track()
    state.learn_size(old, 1000)
    state.listed([new])
    assert state.size(old) is None and state.size(new) is None
    assert state.question_lock(old) is state.question_lock(new)  # by id: an asker after a reload waits too


def test_a_track_keeps_only_what_a_mount_reads():
    """One per track, 100 000 in a library: the extension and the server's answer went into the name and the
    source, and a Track fits Python's 128-byte size class, not 144."""
    track = cloud_track(size=10)
    assert not hasattr(track, "ext") and not hasattr(track, "remote")
    assert sys.getsizeof(track) <= 128, sys.getsizeof(track)  # the collector's 16-byte header included
