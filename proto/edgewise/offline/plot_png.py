"""A small raster plotter that writes PNG itself: no matplotlib, no Pillow, only NumPy, zlib and struct.

`plot_series` draws one line per series with a translucent band for its interval, axes with "nice"
ticks and grid lines, a title, axis labels and a legend, and returns PNG bytes. It is pure and
deterministic: the same input gives the same bytes. Text uses a built-in 5x7 bitmap font (digits,
capital letters, space and `. , % - + = : / _ ( ) [ ] # ' ! ?`); lower case is drawn in capitals and
any other character as `?`.

The drawing primitives work on a `Canvas`, an RGB `uint8` array of shape (height, width, 3), and clip
to it. `encode_png` writes a canvas as an 8-bit RGB PNG (signature, IHDR, one zlib IDAT, IEND).
Used by `edgewise ctl report --plot` (docs/reports.md).
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeAlias

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "PALETTE",
    "Canvas",
    "draw_line",
    "draw_text",
    "encode_png",
    "fill_band",
    "fill_rect",
    "new_canvas",
    "nice_ticks",
    "plot_series",
    "text_mask",
    "text_width",
]

Canvas: TypeAlias = NDArray[np.uint8]
Color: TypeAlias = tuple[int, int, int]
Point: TypeAlias = tuple[float, float | None, float | None, float | None]  # (x, value, low, high)

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
WHITE: Final[Color] = (255, 255, 255)
BLACK: Final[Color] = (0, 0, 0)
AXIS: Final[Color] = (60, 60, 60)
GRID: Final[Color] = (225, 225, 225)
TEXT: Final[Color] = (30, 30, 30)
PALETTE: Final[tuple[Color, ...]] = (
    (31, 119, 180),  # blue
    (255, 127, 14),  # orange
    (44, 160, 44),  # green
    (214, 39, 40),  # red
    (148, 103, 189),  # purple
    (140, 86, 75),  # brown
    (227, 119, 194),  # pink
    (127, 127, 127),  # grey
    (188, 189, 34),  # olive
    (23, 190, 207),  # cyan
)
BAND_ALPHA: Final = 0.22

# ---------------------------------------------------------------------------------------------------
# Font: 5 columns x 7 rows per glyph, one "01..." string per row.

_GLYPH_ROWS: Final = {
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    "A": "01110 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110",
    "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001",
    "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110",
    "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101",
    "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110",
    "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010",
    "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 10001 01010 00100 00100 00100",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    " ": "00000 00000 00000 00000 00000 00000 00000",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    ",": "00000 00000 00000 00000 01100 00100 01000",
    "%": "11000 11001 00010 00100 01000 10011 00011",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    "+": "00000 00100 00100 11111 00100 00100 00000",
    "=": "00000 00000 11111 00000 11111 00000 00000",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    "/": "00000 00001 00010 00100 01000 10000 00000",
    "_": "00000 00000 00000 00000 00000 00000 11111",
    "(": "00010 00100 01000 01000 01000 00100 00010",
    ")": "01000 00100 00010 00010 00010 00100 01000",
    "[": "01110 01000 01000 01000 01000 01000 01110",
    "]": "01110 00010 00010 00010 00010 00010 01110",
    "#": "01010 01010 11111 01010 11111 01010 01010",
    "'": "00100 00100 01000 00000 00000 00000 00000",
    "!": "00100 00100 00100 00100 00100 00000 00100",
    "?": "01110 10001 00001 00010 00100 00000 00100",
}
GLYPH_W: Final = 5
GLYPH_H: Final = 7
_GLYPHS: Final = {
    ch: np.array([[c == "1" for c in row] for row in rows.split()], dtype=bool)
    for ch, rows in _GLYPH_ROWS.items()
}


def text_width(text: str, scale: int = 1) -> int:
    """Pixel width of `text` (glyphs 5 wide, 1 pixel apart, times `scale`)."""
    return max(0, len(text) * (GLYPH_W + 1) - 1) * scale


def text_mask(text: str, scale: int = 1) -> NDArray[np.bool_]:
    """The pixels of `text` as a boolean array of shape (7 * scale, text_width(text, scale))."""
    mask = np.zeros((GLYPH_H, max(1, text_width(text))), dtype=bool)
    for i, ch in enumerate(text):
        glyph = _GLYPHS.get(ch.upper(), _GLYPHS["?"])
        mask[:, i * (GLYPH_W + 1) : i * (GLYPH_W + 1) + GLYPH_W] = glyph
    if scale > 1:
        mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
    return mask


# ---------------------------------------------------------------------------------------------------
# Primitives (all clip to the canvas)


def new_canvas(width: int, height: int, color: Color = WHITE) -> Canvas:
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:, :] = color
    return canvas


def _blend(pixels: NDArray[np.uint8], color: Color, alpha: float) -> NDArray[np.uint8]:
    mixed = pixels.astype(np.float64) * (1.0 - alpha) + np.asarray(color, dtype=np.float64) * alpha
    return np.rint(mixed).astype(np.uint8)


def _paint(canvas: Canvas, mask: NDArray[np.bool_], x: int, y: int, color: Color, alpha: float = 1.0) -> None:
    """Paint `mask` (True pixels) with its top-left corner at (x, y)."""
    h, w = canvas.shape[:2]
    mh, mw = mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + mw, w), min(y + mh, h)
    if x0 >= x1 or y0 >= y1:
        return
    sub = mask[y0 - y : y1 - y, x0 - x : x1 - x]
    region = canvas[y0:y1, x0:x1]
    region[sub] = color if alpha >= 1.0 else _blend(region[sub], color, alpha)


def fill_rect(canvas: Canvas, x0: int, y0: int, x1: int, y1: int, color: Color, alpha: float = 1.0) -> None:
    """Fill the pixels x0 <= x < x1, y0 <= y < y1."""
    if x1 > x0 and y1 > y0:
        _paint(canvas, np.ones((y1 - y0, x1 - x0), dtype=bool), x0, y0, color, alpha)


def draw_line(
    canvas: Canvas, x0: float, y0: float, x1: float, y1: float, color: Color, width: int = 1
) -> None:
    """A straight line of `width` pixels from (x0, y0) to (x1, y1) (sampled once per pixel step)."""
    steps = math.ceil(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.rint(np.linspace(x0, x1, steps)).astype(np.int64)
    ys = np.rint(np.linspace(y0, y1, steps)).astype(np.int64)
    h, w = canvas.shape[:2]
    lo = -((width - 1) // 2)
    for dy in range(lo, lo + width):
        for dx in range(lo, lo + width):
            px, py = xs + dx, ys + dy
            keep = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            canvas[py[keep], px[keep]] = color


def fill_band(
    canvas: Canvas, top: NDArray[np.float64], bottom: NDArray[np.float64], color: Color, alpha: float
) -> None:
    """Blend `color` over each column x between the rows top[x] and bottom[x] (NaN: nothing)."""
    h, w = canvas.shape[:2]
    if top.shape != (w,) or bottom.shape != (w,):
        raise ValueError("top and bottom need one value per canvas column")
    rows = np.arange(h, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore"):
        lo, hi = np.fmin(top, bottom), np.fmax(top, bottom)
        mask = (rows >= np.floor(lo)[None, :]) & (rows <= np.ceil(hi)[None, :])
    canvas[mask] = _blend(canvas[mask], color, alpha)


def draw_text(
    canvas: Canvas,
    text: str,
    x: int,
    y: int,
    color: Color = TEXT,
    *,
    scale: int = 1,
    anchor: str = "left",
    vertical: bool = False,
) -> None:
    """Text with its top-left corner at (x, y); `anchor` "center"/"right" aligns horizontally instead.

    `vertical`: rotated a quarter turn counter-clockwise (reads bottom to top), `anchor` then aligns
    the text vertically around y (x is its left edge).
    """
    mask = text_mask(text, scale)
    if vertical:
        mask = np.rot90(mask)
        offset = {"left": 0, "center": mask.shape[0] // 2, "right": mask.shape[0]}[anchor]
        _paint(canvas, mask, x, y - offset, color)
        return
    offset = {"left": 0, "center": mask.shape[1] // 2, "right": mask.shape[1]}[anchor]
    _paint(canvas, mask, x - offset, y, color)


# ---------------------------------------------------------------------------------------------------
# PNG


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(canvas: Canvas) -> bytes:
    """The canvas (height, width, 3) uint8 as an 8-bit truecolour PNG, no filtering, no interlace."""
    if canvas.ndim != 3 or canvas.shape[2] != 3 or canvas.dtype != np.uint8:
        raise ValueError(f"expected a (height, width, 3) uint8 array, got {canvas.shape} {canvas.dtype}")
    h, w = canvas.shape[:2]
    if h < 1 or w < 1:
        raise ValueError("an image needs at least one pixel")
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # each scanline: filter byte 0, then RGB triples
    raw[:, 1:] = canvas.reshape(h, 3 * w)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
        + _chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------------
# Plot


def nice_ticks(low: float, high: float, target: int = 5) -> tuple[float, float, list[float]]:
    """(axis low, axis high, ticks): about `target` ticks at 1, 2 or 5 x 10^k covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("tick range must be finite")
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(1, target)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 5.0, 10.0) if m * magnitude >= raw * (1 - 1e-9))
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    ticks = [round(i * step, 12) for i in range(first, last + 1)]
    return ticks[0], ticks[-1], ticks


def _decimals(step: float) -> int:
    return max(0, math.ceil(-math.log10(step) - 1e-9)) if step > 0 else 0


def _number(value: float, step: float) -> str:
    if abs(value) >= 1e6 or (value != 0 and abs(value) < 1e-4):
        return f"{value:.2g}"
    return f"{value:.{_decimals(step)}f}"


def _finite(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def plot_series(
    series: Mapping[str, Sequence[Point]],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 900,
    height: int = 500,
    *,
    y_percent: bool = False,
    x_format: Callable[[float, float], str] | None = None,
) -> bytes:
    """A line plot as PNG bytes: per series (name -> points (x, value, low, high)), its value as a line
    and [low, high] as a translucent band, in the colours of `PALETTE` in the mapping's order.

    None (or non-finite) values leave gaps. `y_percent`: y tick labels as percentages of 1.
    `x_format(x, step)`: the x tick labels (default: the number with as many decimals as the step).
    """
    if width < 200 or height < 150:
        raise ValueError(f"the plot needs at least 200x150 pixels, got {width}x{height}")
    canvas = new_canvas(width, height)
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    points = {
        name: sorted(
            ((float(x), _finite(v), _finite(lo), _finite(hi)) for x, v, lo, hi in pts if math.isfinite(x)),
            key=lambda p: p[0],
        )
        for name, pts in series.items()
    }
    xs = [p[0] for pts in points.values() for p in pts]
    ys = [y for pts in points.values() for p in pts for y in p[1:] if y is not None]

    # Layout: title, legend row, plot area, x ticks and label; y ticks and label on the left.
    draw_text(canvas, title, width // 2, 10, scale=2, anchor="center")
    legend_y = 36
    left, right, top, bottom = 78, width - 24, legend_y + 22, height - 48
    x = left
    for name, color in colors.items():
        label_w = text_width(name) + 22
        if x + label_w > right and x > left:
            break  # no room: the remaining names are left out rather than drawn over each other
        fill_rect(canvas, x, legend_y, x + 12, legend_y + 8, color)
        draw_text(canvas, name, x + 16, legend_y + 1)
        x += label_w + 12

    if not xs:
        x_lo, x_hi, x_ticks = 0.0, 1.0, [0.0, 0.5, 1.0]
    elif min(xs) == max(xs):  # one bucket: the point in the middle
        x_lo, x_hi, x_ticks = min(xs) - 1.0, min(xs) + 1.0, [min(xs)]
    else:
        x_lo, x_hi = min(xs), max(xs)
        x_ticks = [t for t in nice_ticks(x_lo, x_hi, 8)[2] if x_lo - 1e-9 <= t <= x_hi + 1e-9]
    y_lo, y_hi, y_ticks = nice_ticks(min(ys), max(ys), 6) if ys else nice_ticks(0.0, 1.0, 6)
    pad = 8  # pixels between the axes and the first/last x

    def px(v: float) -> float:
        return left + pad + (v - x_lo) / (x_hi - x_lo) * (right - left - 2 * pad)

    def py(v: float) -> float:
        return bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top)

    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    fmt_x = x_format or (lambda v, step: _number(v, step))
    for t in y_ticks:
        row = round(py(t))
        fill_rect(canvas, left, row, right + 1, row + 1, GRID)
        fill_rect(canvas, left - 5, row, left, row + 1, AXIS)
        label = f"{_number(t * 100, y_step * 100)}%" if y_percent else _number(t, y_step)
        draw_text(canvas, label, left - 8, row - 3, anchor="right")
    for t in x_ticks:
        col = round(px(t))
        fill_rect(canvas, col, top, col + 1, bottom + 1, GRID)
        fill_rect(canvas, col, bottom, col + 1, bottom + 6, AXIS)
        draw_text(canvas, fmt_x(t, x_step), col, bottom + 10, anchor="center")
    draw_text(canvas, x_label, (left + right) // 2, height - 16, anchor="center")
    draw_text(canvas, y_label, 6, (top + bottom) // 2, vertical=True, anchor="center")
    if not xs:
        draw_text(canvas, "no data", (left + right) // 2, (top + bottom) // 2, scale=2, anchor="center")

    # Bands first (all series), then lines and markers on top, then the axes.
    columns = np.arange(width, dtype=np.float64)
    for name, pts in points.items():
        band_top = np.full(width, np.nan)
        band_bottom = np.full(width, np.nan)
        for i, p in enumerate(pts):
            if p[2] is None or p[3] is None:
                continue
            cx, ct, cb = px(p[0]), py(p[3]), py(p[2])
            near = np.abs(columns - cx) <= 3  # a point without neighbors still shows its interval
            band_top[near & np.isnan(band_top)] = ct
            band_bottom[near & np.isnan(band_bottom)] = cb
            following = pts[i + 1] if i + 1 < len(pts) else None
            if following is not None and following[2] is not None and following[3] is not None:
                nx, nt, nb = px(following[0]), py(following[3]), py(following[2])
                span = (columns >= cx) & (columns <= nx)
                f = (columns[span] - cx) / (nx - cx) if nx > cx else np.zeros(int(span.sum()))
                band_top[span] = ct + f * (nt - ct)
                band_bottom[span] = cb + f * (nb - cb)
        band_top[(columns < left) | (columns > right)] = np.nan
        band_top, band_bottom = np.clip(band_top, top, bottom), np.clip(band_bottom, top, bottom)
        fill_band(canvas, band_top, band_bottom, colors[name], BAND_ALPHA)
    for name, pts in points.items():
        for a, b in itertools.pairwise(pts):
            if a[1] is not None and b[1] is not None:
                draw_line(canvas, px(a[0]), py(a[1]), px(b[0]), py(b[1]), colors[name], width=2)
        valued = [(px(p[0]), py(p[1])) for p in pts if p[1] is not None]
        if len(valued) <= 60:
            for cx, cy in valued:
                fill_rect(canvas, round(cx) - 2, round(cy) - 2, round(cx) + 3, round(cy) + 3, colors[name])
    fill_rect(canvas, left, top, left + 1, bottom + 1, AXIS)
    fill_rect(canvas, left, bottom, right + 1, bottom + 1, AXIS)
    return encode_png(canvas)
