"""A stamp that survives video coding and JPEG: a strip of black and white cells.

The strip runs across the top of a frame, ``max(8, height // 16)`` rows tall, cut into
:data:`CELLS` equal cells. Left to right:

    1 (white guard) | frame number, 16 bits | clock, 24 bits | check, 8 bits | 0 (black guard)

Bits are most significant first; 1 is white (255) and 0 black (0). ``clock`` is the
sender's wall clock in milliseconds modulo 2**24, so a reader on the same machine gets the
latency as ``(now_ms - clock) mod 2**24``. ``check`` is the XOR of the five payload bytes
with 0x5A, so a misread strip is almost never taken for a stamp.

A reader samples the middle row of the strip over the middle third of each cell and
thresholds at 128. The browser-side reader (tests, bench/video.py) does the same in
JavaScript; keep the two in step (docs/video.md).
"""

from __future__ import annotations

import numpy as np

CELLS = 50
FRAME_BITS, CLOCK_BITS, CHECK_BITS = 16, 24, 8
CLOCK_MOD = 1 << CLOCK_BITS


def strip_height(height: int) -> int:
    """Rows the strip takes in a frame ``height`` rows tall."""
    return max(8, height // 16)


def _check(frame_no: int, clock: int) -> int:
    c = 0x5A
    for b in (frame_no >> 8, frame_no, clock >> 16, clock >> 8, clock):
        c ^= b & 0xFF
    return c


def _bits(value: int, n: int) -> list[int]:
    return [(value >> (n - 1 - i)) & 1 for i in range(n)]


def _edges(width: int) -> np.ndarray:
    return np.round(np.arange(CELLS + 1) * width / CELLS).astype(int)


def write_stamp(image: np.ndarray, frame_no: int, clock_ms: int) -> None:
    """Draw the stamp into ``image`` (H x W grey, or H x W x C) in place."""
    frame_no &= (1 << FRAME_BITS) - 1
    clock_ms %= CLOCK_MOD
    bits = [1] + _bits(frame_no, FRAME_BITS) + _bits(clock_ms, CLOCK_BITS) + _bits(_check(frame_no, clock_ms), CHECK_BITS) + [0]
    rows = strip_height(image.shape[0])
    edges = _edges(image.shape[1])
    for i, bit in enumerate(bits):
        image[:rows, edges[i]:edges[i + 1]] = 255 if bit else 0


def read_stamp(image: np.ndarray) -> tuple[int, int] | None:
    """``(frame_no, clock_ms)`` from a stamped frame (grey or RGB), or None if there is no valid stamp."""
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2)
    height, width = image.shape[:2]
    if width < CELLS * 3:
        return None
    row = image[strip_height(height) // 2]
    edges = _edges(width)
    bits = []
    for i in range(CELLS):
        a, b = edges[i], edges[i + 1]
        third = max(1, (b - a) // 3)
        bits.append(1 if float(np.mean(row[a + third:b - third] if b - a > 2 else row[a:b])) >= 128 else 0)
    if bits[0] != 1 or bits[-1] != 0:
        return None
    value = int("".join(map(str, bits[1:-1])), 2)
    check = value & 0xFF
    clock = (value >> CHECK_BITS) & (CLOCK_MOD - 1)
    frame_no = value >> (CHECK_BITS + CLOCK_BITS)
    if _check(frame_no, clock) != check:
        return None
    return frame_no, clock


def latency_ms(clock_ms: int, now_ms: int) -> int:
    """Milliseconds from a stamp's clock to ``now_ms`` (both wall clock, same machine)."""
    return (now_ms - clock_ms) % CLOCK_MOD
