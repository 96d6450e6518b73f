"""`mixvfs status`: what the text shows of the daemon's live JSON — bytes, rate and time left."""

from __future__ import annotations

from mixvfs.vfs.commands.status import format_status


def test_each_download_and_the_whole_show_rate_and_time_left() -> None:
    data = {"session": "S", "tracks": 3, "counts": {"fetching": 2, "cached": 1}, "failed": [], "failed_total": 0,
            "downloading": [
                {"name": "A - One.wav", "available": 1 << 20, "total": 4 << 20, "attempts": 1, "rate": 1 << 20},
                {"name": "B - Two.wav", "available": 0, "total": None, "attempts": 2, "rate": None},
            ]}
    text = format_status(data)
    assert "downloading: 2, 1.0 MiB/s, 3s left" in text
    assert "  A - One.wav: 1.0 MiB of 4.0 MiB (25%), 1.0 MiB/s, 3s left" in text
    assert "  B - Two.wav: 0 B, attempt 2" in text


def test_a_queued_download_shows_no_bytes_and_no_size_it_does_not_know() -> None:
    data = {"session": "S", "tracks": 2, "counts": {"downloading": 2}, "failed": [], "failed_total": 0,
            "downloading": [
                {"name": "A - One.wav", "available": 0, "total": None, "attempts": 0, "state": "pending",
                 "rate": None},
                {"name": "B - Two.wav", "available": 0, "total": 4 << 20, "attempts": 0, "state": "pending",
                 "rate": None},
            ]}
    lines = format_status(data).splitlines()
    assert lines[:4] == ["session 'S': 2 tracks (2 downloading)", "downloading: 2", "  A - One.wav: queued",
                         "  B - Two.wav: queued (4.0 MiB)"]
