"""The PNG plotter: the bytes parse back as a valid PNG (signature, CRCs, IHDR, zlib IDAT), and the plot
draws each series' interval band where the interval lies, in distinct colours, deterministically."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from edgewise.offline.plot_png import (
    AXIS,
    BAND_ALPHA,
    PALETTE,
    encode_png,
    fill_band,
    new_canvas,
    nice_ticks,
    plot_series,
    text_mask,
    text_width,
)


def read_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB, non-interlaced, unfiltered PNG, checking its structure on the way."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, f"CRC of {tag!r}"
        chunks.append((tag, body))
        pos += 12 + length
    assert pos == len(data)
    tags = [t for t, _ in chunks]
    assert tags[0] == b"IHDR" and tags[-1] == b"IEND" and b"IDAT" in tags
    width, height, depth, color_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, color_type, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(b for t, b in chunks if t == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + 3 * width)
    assert not rows[:, 0].any(), "filter type 0 on every scanline"
    return rows[:, 1:].reshape(height, width, 3)


def _blend(color: tuple[int, int, int], alpha: float = BAND_ALPHA) -> tuple[int, ...]:
    return tuple(int(np.rint(255 * (1 - alpha) + c * alpha)) for c in color)


def test_encode_png_round_trips_every_pixel() -> None:
    canvas = np.random.default_rng(0).integers(0, 256, size=(13, 29, 3), dtype=np.uint8)
    assert np.array_equal(read_png(encode_png(canvas)), canvas)
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), dtype=np.float64))  # type: ignore[arg-type]


def test_nice_ticks_and_text() -> None:
    assert nice_ticks(0.0, 1.0, 5) == (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    low, high, ticks = nice_ticks(0.031, 0.078, 6)
    assert low <= 0.031 and high >= 0.078 and len(ticks) >= 4
    assert np.allclose(np.diff(ticks), ticks[1] - ticks[0])
    assert nice_ticks(5.0, 5.0)[0] < 5.0 < nice_ticks(5.0, 5.0)[1]
    mask = text_mask("ab 5%", scale=2)
    assert mask.shape == (14, text_width("ab 5%", 2)) == (14, 58)
    assert mask.any() and not mask[:, 24:34].any()  # the space
    assert np.array_equal(text_mask("abc"), text_mask("ABC"))


def test_fill_band_blends_only_between_top_and_bottom() -> None:
    canvas = new_canvas(4, 10)
    top = np.array([2.0, 2.0, np.nan, 5.0])
    bottom = np.array([6.0, 6.0, np.nan, 5.0])
    fill_band(canvas, top, bottom, (0, 0, 255), 0.5)
    tinted = (canvas != 255).any(axis=2)
    assert tinted[:, 0].nonzero()[0].tolist() == [2, 3, 4, 5, 6]
    assert not tinted[:, 2].any() and tinted[:, 3].nonzero()[0].tolist() == [5]
    assert tuple(canvas[3, 0]) == (128, 128, 255)


def test_the_plot_is_a_png_with_each_band_where_its_interval_lies() -> None:
    xs = range(11)
    series = {
        "control": [(float(x), 0.5, 0.4, 0.6) for x in xs],
        "treat": [(float(x), 0.1, 0.0, 0.2) for x in xs],
        "other": [(float(x), None if x < 3 else 0.3, None, None) for x in xs],
    }
    png = plot_series(series, "experiment: ctr", "hours since start", "ctr", width=640, height=400)
    assert png == plot_series(series, "experiment: ctr", "hours since start", "ctr", width=640, height=400)
    image = read_png(png)
    assert image.shape == (400, 640, 3)
    colours = {tuple(int(c) for c in p) for p in image.reshape(-1, 3)}
    assert len(colours) >= 8
    assert {PALETTE[0], PALETTE[1], PALETTE[2], _blend(PALETTE[0]), _blend(PALETTE[1])} <= colours

    # Find the plot area from the axes: the left axis is the longest vertical run of the axis colour.
    axis = (image == np.array(AXIS, dtype=np.uint8)).all(axis=2)
    left = int(axis.sum(axis=0).argmax())
    top, bottom = int(axis[:, left].nonzero()[0].min()), int(axis[:, left].nonzero()[0].max())
    right = int(axis[bottom].nonzero()[0].max())
    # y ticks are 0.0 ... 0.6 (the data span exactly); x = 5 is the middle column (not a grid line).
    col = (left + right) // 2

    def row(y: float) -> int:
        return round(bottom - y / 0.6 * (bottom - top))

    for y in (0.43, 0.47, 0.53, 0.57):  # inside control's interval, off the line at 0.5
        assert tuple(image[row(y), col]) == _blend(PALETTE[0]), y
    for y in (0.05, 0.15):  # inside treat's
        assert tuple(image[row(y), col]) == _blend(PALETTE[1]), y
    for y in (0.25, 0.35):  # between the two intervals: nothing but white (the line at 0.3 aside)
        assert tuple(image[row(y), col]) == (255, 255, 255), y
    assert tuple(image[row(0.5), col]) == PALETTE[0]
    assert tuple(image[row(0.3), col]) == PALETTE[2]
    assert tuple(image[row(0.3), left + 10]) != PALETTE[2]  # "other" starts at x = 3


def test_edge_cases_still_make_a_png() -> None:
    empty = read_png(plot_series({}, "nothing", "x", "y", width=300, height=200))
    assert empty.shape == (200, 300, 3)
    one = read_png(plot_series({"a": [(5.0, 0.5, 0.4, 0.6)], "b": [(5.0, None, None, None)]}, "t", "x", "y"))
    assert {PALETTE[0], _blend(PALETTE[0])} <= {tuple(int(c) for c in p) for p in one.reshape(-1, 3)}
    nan = plot_series({"a": [(0.0, float("nan"), None, None), (1.0, 0.2, 0.1, 0.3)]}, "t", "x", "y")
    assert read_png(nan).shape == (500, 900, 3)
    with pytest.raises(ValueError):
        plot_series({}, "t", "x", "y", width=50, height=50)
