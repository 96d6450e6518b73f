"""The benchmark's one-file bound (tools/wan/bench.py): the tracks end to end as one file, and the check that a
one-file fetch brought exactly those bytes (a wrong fetch is no figure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.wan.bench import check_whole, make_dataset


def test_the_whole_file_is_the_tracks_end_to_end_and_a_fetch_of_it_is_checked(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "www", 3, 64 * 1024)
    whole = data.make_whole(tmp_path / "www")
    assert whole == tmp_path / "www" / data.whole_name
    assert whole.read_bytes() == b"".join(p.read_bytes() for p in data.files)
    assert data.make_whole(tmp_path / "www").stat().st_mtime_ns == whole.stat().st_mtime_ns  # kept, not rewritten

    fetched = tmp_path / "all.bin"
    fetched.write_bytes(whole.read_bytes())
    check_whole(data, fetched)

    fetched.write_bytes(whole.read_bytes()[:-1])
    with pytest.raises(RuntimeError, match="bytes, not"):
        check_whole(data, fetched)
    wrong = bytearray(whole.read_bytes())
    wrong[-1] ^= 0xFF
    fetched.write_bytes(bytes(wrong))
    with pytest.raises(RuntimeError, match="not the server's bytes at track 2"):
        check_whole(data, fetched)
    with pytest.raises(RuntimeError, match="no bytes"):
        check_whole(data, tmp_path / "absent.bin")
