"""The audio generator: PCM, WAV, FLAC (checked by an independent parser and by
the reference ``flac`` tool when installed) and exact-size files."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import struct
import subprocess
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

import pytest

from mixvfs.vfs.session.sniff import MAGIC_BYTES_NEEDED, ext_from_magic
from tools.make_audio import (
    FLAC_BLOCK_SIZE,
    main,
    tone_pcm,
    utf8_number,
    write_flac,
    write_sized,
    write_wav,
)

REPO = Path(__file__).resolve().parents[2]
FLAC_BIN = shutil.which("flac")
# The reference decoder is installed by `make test` (tools/install_system.sh); only a developer machine
# without it skips, never CI.
needs_flac = pytest.mark.skipif(FLAC_BIN is None and os.environ.get("CI") != "true",
                                reason="reference flac binary not installed")


# --- independent reference implementations (bitwise, no tables) -----------------


def _crc_bitwise(data: bytes, poly: int, width: int) -> int:
    crc, top, mask = 0, 1 << (width - 1), (1 << width) - 1
    for byte in data:
        crc ^= byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
    return crc


def _decode_utf8_number(data: bytes, pos: int) -> tuple[int, int]:
    """Decode FLAC's UTF-8-style number at ``pos``; returns (value, bytes used)."""
    lead = data[pos]
    if lead < 0x80:
        return lead, 1
    length = 0
    while lead & (0x80 >> length):
        length += 1
    assert 2 <= length <= 7, f"bad lead byte {lead:#x}"
    value = lead & (0x7F >> length) if length < 7 else 0
    for index in range(1, length):
        byte = data[pos + index]
        assert byte & 0xC0 == 0x80, "bad continuation byte"
        value = (value << 6) | (byte & 0x3F)
    return value, length


@dataclass
class StreamInfo:
    min_block: int
    max_block: int
    min_frame: int
    max_frame: int
    rate: int
    channels: int
    bits: int
    total: int
    md5: bytes


def _parse_streaminfo(data: bytes) -> tuple[StreamInfo, int]:
    assert data[:4] == b"fLaC"
    flags, length = data[4], int.from_bytes(data[5:8], "big")
    assert flags == 0x80  # last metadata block, type 0 = STREAMINFO
    assert length == 34
    body = data[8:42]
    min_block, max_block = struct.unpack(">HH", body[:4])
    packed = int.from_bytes(body[10:18], "big")
    info = StreamInfo(
        min_block=min_block,
        max_block=max_block,
        min_frame=int.from_bytes(body[4:7], "big"),
        max_frame=int.from_bytes(body[7:10], "big"),
        rate=packed >> 44,
        channels=((packed >> 41) & 0x7) + 1,
        bits=((packed >> 36) & 0x1F) + 1,
        total=packed & ((1 << 36) - 1),
        md5=body[18:34],
    )
    return info, 42


def _parse_frame(data: bytes, pos: int, channels: int, expected_number: int) -> tuple[list[bytes], int]:
    """Check one frame; returns per-channel big-endian sample bytes and the next offset."""
    assert data[pos : pos + 2] == b"\xff\xf8", "sync code / fixed blocking strategy"
    assert data[pos + 2] >> 4 == 0b0111, "block size: 16-bit value follows"
    assert data[pos + 3] >> 4 == channels - 1, "independent channels"
    assert (data[pos + 3] >> 1) & 0b111 == 0b100, "16 bits per sample"
    assert data[pos + 3] & 1 == 0
    number, used = _decode_utf8_number(data, pos + 4)
    assert number == expected_number
    cursor = pos + 4 + used
    block = int.from_bytes(data[cursor : cursor + 2], "big") + 1
    cursor += 2
    assert data[cursor] == _crc_bitwise(data[pos:cursor], 0x07, 8), "header CRC-8"
    cursor += 1
    samples = []
    for _ in range(channels):
        assert data[cursor] == 0b00000010, "VERBATIM subframe, no wasted bits"
        cursor += 1
        samples.append(data[cursor : cursor + 2 * block])
        cursor += 2 * block
    crc = int.from_bytes(data[cursor : cursor + 2], "big")
    assert crc == _crc_bitwise(data[pos:cursor], 0x8005, 16), "frame CRC-16"
    return samples, cursor + 2


def _interleave_le(channel_bytes: list[bytes]) -> bytes:
    """Per-channel big-endian samples -> interleaved little-endian PCM."""
    out = bytearray()
    count = len(channel_bytes[0]) // 2
    for index in range(count):
        for channel in channel_bytes:
            out += channel[2 * index : 2 * index + 2][::-1]
    return bytes(out)


def _parse_flac(data: bytes) -> tuple[StreamInfo, bytes, list[int]]:
    """Parse a whole generated FLAC file; returns STREAMINFO, decoded PCM and frame sizes."""
    info, pos = _parse_streaminfo(data)
    pcm, sizes, number = bytearray(), [], 0
    while pos < len(data):
        channel_bytes, end = _parse_frame(data, pos, info.channels, number)
        pcm += _interleave_le(channel_bytes)
        sizes.append(end - pos)
        pos, number = end, number + 1
    return info, bytes(pcm), sizes


# --- PCM -------------------------------------------------------------------------


def test_tone_pcm_length_and_layout() -> None:
    pcm = tone_pcm(0.5, 440.0, rate=8000, channels=2)
    assert len(pcm) == 4000 * 2 * 2
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    left, right = samples[0::2], samples[1::2]
    assert left == right
    assert left[0] == 0
    assert max(left) == pytest.approx(16383, abs=2)
    assert min(left) == pytest.approx(-16383, abs=2)


def test_tone_pcm_frequency() -> None:
    pcm = tone_pcm(1.0, 100.0, rate=8000, channels=1)
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    rising = sum(1 for a, b in itertools.pairwise(samples) if a < 0 <= b)
    assert rising in (99, 100)


def test_tone_pcm_rejects_bad_channels() -> None:
    with pytest.raises(ValueError):
        tone_pcm(0.1, 440.0, channels=0)
    with pytest.raises(ValueError):
        tone_pcm(0.1, 440.0, channels=9)


# --- WAV -------------------------------------------------------------------------


def test_write_wav(tmp_path: Path) -> None:
    path = tmp_path / "t.wav"
    size = write_wav(path, 0.25, 440.0, rate=22050, channels=2)
    assert size == path.stat().st_size == 44 + 5512 * 4
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 2
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == 22050
        assert wav.getnframes() == 5512
        assert wav.readframes(5512) == tone_pcm(0.25, 440.0, rate=22050, channels=2)
    assert ext_from_magic(path.read_bytes()[:MAGIC_BYTES_NEEDED]) == "wav"


# --- FLAC ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, 1, 0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000, 0x1FFFFF, 0x200000, 0x3FFFFFF, 0x4000000, 2**31 - 1,
     2**31, 2**36 - 1],
)  # fmt: skip
def test_utf8_number_round_trips(value: int) -> None:
    coded = utf8_number(value)
    assert _decode_utf8_number(coded, 0) == (value, len(coded))


@pytest.mark.parametrize(
    ("value", "coded"),
    [(0, b"\x00"), (0x7F, b"\x7f"), (0x80, b"\xc2\x80"), (0x800, b"\xe0\xa0\x80"), (0xFFFF, b"\xef\xbf\xbf")],
)
def test_utf8_number_matches_real_utf8(value: int, coded: bytes) -> None:
    assert utf8_number(value) == coded
    assert utf8_number(value) == chr(value).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (48000, 1), (12345, 3)])
def test_write_flac_structure(tmp_path: Path, rate: int, channels: int) -> None:
    path = tmp_path / "t.flac"
    seconds = 0.25
    size = write_flac(path, seconds, 440.0, rate=rate, channels=channels)
    data = path.read_bytes()
    assert size == len(data)
    info, pcm, frame_sizes = _parse_flac(data)
    expected = tone_pcm(seconds, 440.0, rate=rate, channels=channels)
    total = len(expected) // (2 * channels)
    assert pcm == expected
    assert info.rate == rate
    assert info.channels == channels
    assert info.bits == 16
    assert info.total == total
    assert info.min_block == info.max_block == FLAC_BLOCK_SIZE
    assert info.md5 == hashlib.md5(expected).digest()
    assert (info.min_frame, info.max_frame) == (min(frame_sizes), max(frame_sizes))
    assert len(frame_sizes) == -(-total // FLAC_BLOCK_SIZE)
    assert ext_from_magic(data[:MAGIC_BYTES_NEEDED]) == "flac"


@needs_flac
@pytest.mark.parametrize(
    ("seconds", "rate", "channels"),
    [
        (0.5, 44100, 2),
        (0.2, 12345, 3),
        (70.0, 8000, 1),  # > 128 frames: multi-byte frame numbers
    ],
)
def test_write_flac_passes_reference_decoder(tmp_path: Path, seconds: float, rate: int, channels: int) -> None:
    assert FLAC_BIN is not None
    path = tmp_path / "t.flac"
    write_flac(path, seconds, 440.0, rate=rate, channels=channels)
    subprocess.run([FLAC_BIN, "-t", "-s", str(path)], check=True)
    raw = tmp_path / "t.raw"
    subprocess.run(
        [FLAC_BIN, "-d", "-s", "-f", "--force-raw-format", "--endian=little", "--sign=signed",
         "-o", str(raw), str(path)],
        check=True,
    )  # fmt: skip
    assert raw.read_bytes() == tone_pcm(seconds, 440.0, rate=rate, channels=channels)


# --- exact-size files --------------------------------------------------------------


@pytest.mark.parametrize("size", [44, 45, 1000, (1 << 20) + 3, 3 * (1 << 20)])
def test_write_sized_wav_exact_size_and_header(tmp_path: Path, size: int) -> None:
    path = tmp_path / "s.wav"
    write_sized(path, size, kind="wav", seed=7)
    assert path.stat().st_size == size
    head = path.read_bytes()[:44]
    riff, riff_size, wave_id = struct.unpack("<4sI4s", head[:12])
    assert (riff, riff_size, wave_id) == (b"RIFF", size - 8, b"WAVE")
    assert head[36:40] == b"data"
    assert struct.unpack("<I", head[40:44])[0] == size - 44
    with wave.open(str(path), "rb") as wav:
        assert wav.getnframes() == (size - 44) // 4
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 44100)
    assert ext_from_magic(head[:MAGIC_BYTES_NEEDED]) == "wav"


def test_write_sized_is_deterministic_per_seed(tmp_path: Path) -> None:
    size = (1 << 20) + 12345
    paths = [tmp_path / name for name in ("a", "b", "c")]
    write_sized(paths[0], size, seed=1)
    write_sized(paths[1], size, seed=1)
    write_sized(paths[2], size, seed=2)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes()[44:] != paths[2].read_bytes()[44:]
    assert paths[0].read_bytes()[:44] == paths[2].read_bytes()[:44]


def _flac_metadata_blocks(data: bytes) -> list[tuple[int, bool, int]]:
    """(type, is_last, length) of every metadata block; asserts they tile the file."""
    assert data[:4] == b"fLaC"
    pos, blocks = 4, []
    while True:
        flags, length = data[pos], int.from_bytes(data[pos + 1 : pos + 4], "big")
        blocks.append((flags & 0x7F, bool(flags & 0x80), length))
        pos += 4 + length
        if flags & 0x80:
            break
    assert pos == len(data)
    return blocks


@pytest.mark.parametrize("size", [50, 51, 1000, 42 + 4 + (1 << 24) - 1 + 5, 40 << 20])
def test_write_sized_flac_exact_size_and_structure(tmp_path: Path, size: int) -> None:
    path = tmp_path / "s.flac"
    write_sized(path, size, kind="flac", seed=5)
    data = path.read_bytes()
    assert len(data) == size
    blocks = _flac_metadata_blocks(data)
    assert blocks[0] == (0, False, 34)
    assert all(kind == 2 and length >= 4 for kind, _, length in blocks[1:])
    assert ext_from_magic(data[:MAGIC_BYTES_NEEDED]) == "flac"
    if FLAC_BIN is not None:
        subprocess.run([FLAC_BIN, "-t", "-s", str(path)], check=True)


@pytest.mark.parametrize(("kind", "size"), [("wav", 43), ("wav", 1 << 32), ("flac", 49), ("mp3", 1000)])
def test_write_sized_rejects_impossible_requests(tmp_path: Path, kind: str, size: int) -> None:
    with pytest.raises(ValueError):
        write_sized(tmp_path / "x", size, kind=kind)


# --- CLI -------------------------------------------------------------------------


def test_main_writes_flac(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.flac"
    assert main(["flac", str(out), "--seconds", "0.1", "--freq", "880"]) == 0
    _, pcm, _ = _parse_flac(out.read_bytes())
    assert pcm == tone_pcm(0.1, 880.0)
    assert str(out) in capsys.readouterr().out


def test_script_runs_standalone(tmp_path: Path) -> None:
    out = tmp_path / "cli.wav"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_audio.py"), "wav", str(out), "--seconds", "0.1", "--freq", "440"],
        check=True,
        capture_output=True,
    )
    with wave.open(str(out), "rb") as wav:
        assert wav.getnframes() == 4410
