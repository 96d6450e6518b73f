"""Generate real audio files (WAV, FLAC) for the demo, the tests and the benchmark.

Pure Python, no external encoders, so every environment produces byte-identical
files. FLAC output uses VERBATIM subframes: no compression, but a fully valid
stream (STREAMINFO with MD5, CRC-8 frame headers, CRC-16 frame footers) that
``flac -t`` accepts.

CLI: ``python tools/make_audio.py wav|flac OUT --seconds S --freq F``
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import struct
import sys
import wave
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

SAMPLE_WIDTH = 2  # bytes: everything here is 16-bit PCM
AMPLITUDE = 0.5  # of full scale: audible but far from clipping
FLAC_BLOCK_SIZE = 4096
WAV_HEADER_SIZE = 44
_RANDOM_BLOCK = 1 << 20  # write_sized generates and writes 1 MiB at a time

# FLAC frame-header sample-rate codes; other rates use code 0 ("see STREAMINFO").
_FLAC_RATE_CODES = {
    88200: 0b0001,
    176400: 0b0010,
    192000: 0b0011,
    8000: 0b0100,
    16000: 0b0101,
    22050: 0b0110,
    24000: 0b0111,
    32000: 0b1000,
    44100: 0b1001,
    48000: 0b1010,
    96000: 0b1011,
}


def _check_format(rate: int, channels: int) -> None:
    if not 1 <= channels <= 8:
        raise ValueError(f"channels must be 1..8, got {channels}")
    if not 1 <= rate < 1 << 20:
        raise ValueError(f"rate must be 1..1048575 Hz, got {rate}")


def tone_pcm(seconds: float, freq: float, *, rate: int = 44100, channels: int = 2) -> bytes:
    """A sine tone as interleaved signed 16-bit little-endian PCM (same on every channel)."""
    _check_format(rate, channels)
    frames = round(seconds * rate)
    step = 2 * math.pi * freq / rate
    scale = AMPLITUDE * 32767
    mono = array("h", (round(scale * math.sin(step * n)) for n in range(frames)))
    samples = mono if channels == 1 else _interleave(mono, channels)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def _interleave(mono: array[int], channels: int) -> array[int]:
    out = array("h", bytes(len(mono) * channels * SAMPLE_WIDTH))
    for channel in range(channels):
        out[channel::channels] = mono
    return out


def write_wav(path: Path, seconds: float, freq: float, *, rate: int = 44100, channels: int = 2) -> int:
    """Write a PCM WAV tone; returns the file size in bytes."""
    pcm = tone_pcm(seconds, freq, rate=rate, channels=channels)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(SAMPLE_WIDTH)
        out.setframerate(rate)
        out.writeframes(pcm)
    return path.stat().st_size


# --- FLAC ------------------------------------------------------------------


def _crc_table(poly: int, width: int) -> tuple[int, ...]:
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for byte in range(256):
        crc = byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & top else crc << 1
        table.append(crc & mask)
    return tuple(table)


_CRC8 = _crc_table(0x07, 8)
_CRC16 = _crc_table(0x8005, 16)


def crc8(data: bytes | bytearray) -> int:
    """FLAC frame-header CRC: polynomial x^8+x^2+x+1, initial value 0."""
    crc = 0
    for byte in data:
        crc = _CRC8[crc ^ byte]
    return crc


def crc16(data: bytes | bytearray) -> int:
    """FLAC frame CRC: polynomial x^16+x^15+x^2+1, initial value 0."""
    crc = 0
    table = _CRC16  # local name: this loop runs once per byte of audio
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def utf8_number(value: int) -> bytes:
    """FLAC's "UTF-8" coding of a frame number (extended to 36 bits / 7 bytes)."""
    if value < 0x80:
        return bytes([value])
    continuation = []
    # Each continuation byte carries 6 bits; the lead byte has (7 - length) bits.
    while True:
        continuation.append(0x80 | (value & 0x3F))
        value >>= 6
        length = len(continuation) + 1
        if value < 1 << (7 - length):
            break
    lead = (0xFF << (8 - length)) & 0xFF | value
    return bytes([lead, *reversed(continuation)])


def _streaminfo(rate: int, channels: int, total: int, frame_sizes: Sequence[int], md5: bytes) -> bytes:
    """The 34-byte STREAMINFO block body."""
    packed = (rate << 44) | ((channels - 1) << 41) | ((SAMPLE_WIDTH * 8 - 1) << 36) | total
    return (
        struct.pack(">HH", FLAC_BLOCK_SIZE, FLAC_BLOCK_SIZE)
        + min(frame_sizes, default=0).to_bytes(3, "big")
        + max(frame_sizes, default=0).to_bytes(3, "big")
        + packed.to_bytes(8, "big")
        + md5
    )


def _frame_header(number: int, block: int, rate: int, channels: int) -> bytes:
    """Frame header for a fixed-blocksize stream, with its CRC-8."""
    rate_code = _FLAC_RATE_CODES.get(rate, 0)
    # Block-size code 0b0111: "16-bit (blocksize - 1) follows", valid for any size.
    # Channel code (channels - 1): independent channels. Sample size 0b100: 16 bits.
    header = (
        bytes([0xFF, 0xF8, (0b0111 << 4) | rate_code, ((channels - 1) << 4) | (0b100 << 1)])
        + utf8_number(number)
        + (block - 1).to_bytes(2, "big")
    )
    return header + bytes([crc8(header)])


def _frame(number: int, channel_data: Sequence[array[int]], start: int, rate: int) -> bytes:
    """One frame: header, one VERBATIM subframe per channel, CRC-16."""
    block = min(FLAC_BLOCK_SIZE, len(channel_data[0]) - start)
    body = bytearray(_frame_header(number, block, rate, len(channel_data)))
    for samples in channel_data:
        # Subframe header 0b0_000001_0: VERBATIM, no wasted bits; then raw
        # big-endian samples. 8 + 16n bits keeps the frame byte-aligned.
        body.append(0b00000010)
        body += samples[start : start + block].tobytes()
    return bytes(body + crc16(body).to_bytes(2, "big"))


def _big_endian_channels(pcm: bytes, channels: int) -> list[array[int]]:
    """Per-channel arrays whose ``tobytes()`` is big-endian, as FLAC stores samples.

    Only the bytes matter, so swapping each little-endian pair is right on any host.
    """
    samples = array("h", pcm)
    samples.byteswap()
    return [samples[channel::channels] for channel in range(channels)]


def flac_bytes(pcm: bytes, *, rate: int, channels: int) -> bytes:
    """A complete FLAC file holding 16-bit little-endian interleaved ``pcm``."""
    _check_format(rate, channels)
    channel_data = _big_endian_channels(pcm, channels)
    total = len(channel_data[0])
    frames = [
        _frame(number, channel_data, start, rate) for number, start in enumerate(range(0, total, FLAC_BLOCK_SIZE))
    ]
    # FLAC's MD5 covers the samples as signed little-endian interleaved bytes: the input.
    info = _streaminfo(rate, channels, total, [len(f) for f in frames], hashlib.md5(pcm).digest())
    last_block_streaminfo = bytes([0x80]) + len(info).to_bytes(3, "big")
    return b"fLaC" + last_block_streaminfo + info + b"".join(frames)


def write_flac(path: Path, seconds: float, freq: float, *, rate: int = 44100, channels: int = 2) -> int:
    """Write a valid (uncompressed, VERBATIM) FLAC tone; returns the file size in bytes."""
    data = flac_bytes(tone_pcm(seconds, freq, rate=rate, channels=channels), rate=rate, channels=channels)
    path.write_bytes(data)
    return len(data)


# --- Exact-size files ----------------------------------------------------------


def wav_header(data_size: int, *, rate: int = 44100, channels: int = 2) -> bytes:
    """44-byte canonical PCM WAV header for ``data_size`` bytes of sample data."""
    block_align = channels * SAMPLE_WIDTH
    return (
        struct.pack("<4sI4s", b"RIFF", 36 + data_size, b"WAVE")
        + struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, channels, rate, rate * block_align, block_align, 16)
        + struct.pack("<4sI", b"data", data_size)
    )


def _flac_container_header() -> bytes:
    """fLaC + a (not last) STREAMINFO block describing a zero-sample stream.

    write_sized puts its filler in APPLICATION blocks after this, which decoders
    skip, so arbitrary bytes still make a valid FLAC file.
    """
    info = _streaminfo(44100, 2, 0, [], bytes(16))
    return b"fLaC" + bytes([0x00]) + len(info).to_bytes(3, "big") + info


_FLAC_APP_ID = b"mxvf"
_FLAC_MAX_BLOCK = (1 << 24) - 1  # metadata block lengths are 24-bit
_FLAC_MIN_APP_BLOCK = 8  # 4-byte block header + 4-byte application id


def _flac_app_block_sizes(payload: int) -> list[int]:
    """Split ``payload`` bytes into APPLICATION block lengths (each incl. the 4-byte id)."""
    if payload < _FLAC_MIN_APP_BLOCK:
        raise ValueError("flac size too small: needs room for one metadata block after STREAMINFO")
    sizes = []
    while payload > 0:
        length = min(_FLAC_MAX_BLOCK, payload - 4)
        rest = payload - 4 - length
        if 0 < rest < _FLAC_MIN_APP_BLOCK:
            length -= _FLAC_MIN_APP_BLOCK  # leave the next block enough to exist
        sizes.append(length)
        payload -= 4 + length
    return sizes


def _sized_layout(size: int, kind: str) -> list[tuple[bytes, int]]:
    """(header bytes, filler bytes after it) pieces that add up to ``size``."""
    if kind == "wav":
        if not WAV_HEADER_SIZE <= size <= 0xFFFFFFFF:
            raise ValueError(f"wav size must be {WAV_HEADER_SIZE}..4 GiB-1, got {size}")
        return [(wav_header(size - WAV_HEADER_SIZE), size - WAV_HEADER_SIZE)]
    if kind == "flac":
        head = _flac_container_header()
        lengths = _flac_app_block_sizes(size - len(head))
        pieces: list[tuple[bytes, int]] = [(head, 0)]
        for index, length in enumerate(lengths):
            flag = 0x80 if index == len(lengths) - 1 else 0x00
            block_header = bytes([flag | 2]) + length.to_bytes(3, "big") + _FLAC_APP_ID
            pieces.append((block_header, length - 4))
        return pieces
    raise ValueError(f"unknown kind {kind!r}: expected 'wav' or 'flac'")


def _random_blocks(total: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    while total > 0:
        chunk = rng.randbytes(min(_RANDOM_BLOCK, total))
        total -= len(chunk)
        yield chunk


def write_sized(path: Path, size: int, *, kind: str = "wav", seed: int = 0) -> None:
    """Write a file of exactly ``size`` bytes: a valid ``kind`` header, then filler.

    The filler is pseudo-random (deterministic from ``seed``) so that nothing
    along the way can compress or deduplicate it and flatter a benchmark.
    wav: a canonical header whose data chunk spans the rest of the file.
    flac: STREAMINFO for zero samples, the rest inside APPLICATION blocks.
    """
    pieces = _sized_layout(size, kind)
    filler = _random_blocks(sum(count for _, count in pieces), seed)
    pending = memoryview(b"")
    with path.open("wb") as out:
        for header, count in pieces:
            out.write(header)
            while count > 0:
                if not pending:
                    pending = memoryview(next(filler))
                take = min(count, len(pending))
                out.write(pending[:take])
                pending, count = pending[take:], count - take


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a sine-tone WAV or FLAC file.")
    parser.add_argument("kind", choices=("wav", "flac"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--freq", type=float, default=440.0)
    parser.add_argument("--rate", type=int, default=44100)
    parser.add_argument("--channels", type=int, default=2)
    args = parser.parse_args(argv)
    writer = write_wav if args.kind == "wav" else write_flac
    size = writer(args.out, args.seconds, args.freq, rate=args.rate, channels=args.channels)
    print(f"{args.out}: {size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
