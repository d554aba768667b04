"""The report chart (`ctl report --plot`): a real matplotlib PNG of the right size with a line and a band
per variant, the same bytes for the same input, and a message saying what to install without matplotlib;
the holdout line names its lifts as the table does."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from edgewise.ctl import holdout_line, print_report, report_plot
from edgewise.offline.report_chart import PlotUnavailable, plot_series

HOUR = 3_600_000
T0 = 1_764_547_200_000  # 2025-12-01 00:00 UTC


def read_png(data: bytes) -> np.ndarray:
    """The PNG as an (height, width, 3) uint8 array (Pillow checks the file's structure)."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def report_doc(variants: tuple[str, ...] = ("control", "treat"), buckets: int = 24) -> dict[str, object]:
    series = []
    for b in range(buckets):
        for k, variant in enumerate(variants):
            units = 40 * (b + 1)
            value = 0.05 + 0.02 * k
            half = 0.5 / (units**0.5)
            series.append(
                {
                    "bucket_ms": T0 + b * HOUR,
                    "variant": variant,
                    "units": units,
                    "value": value,
                    "low": max(0.0, value - half * value),
                    "high": value + half * value,
                }
            )
    series[1] = {**series[1], "value": None, "low": None, "high": None}  # no units yet: a gap
    return {
        "experiment": "hero_test",
        "metric": "ctr",
        "confidence": 0.95,
        "bucket_size_ms": HOUR,
        "rows": [{"variant": v} for v in variants],
        "series": series,
    }


def test_the_plot_is_a_png_with_a_line_and_a_band_per_variant() -> None:
    data = report_plot(report_doc())
    image = read_png(data)
    assert image.shape == (500, 900, 3)
    colors = {tuple(c) for c in image.reshape(-1, 3)}
    # matplotlib's first two cycle colours (the lines), and lighter tints of them (the bands)
    blue, orange = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)
    assert blue in colors and orange in colors
    pixels = image.reshape(-1, 3).astype(int)
    tint = np.all(np.abs(pixels - (255 - 0.18 * (255 - np.array(blue)))) <= 2, axis=1)
    assert tint.sum() > 500  # the control's interval band, a translucent area
    assert report_plot(report_doc()) == data  # deterministic: no timestamp or version in the file
    three = read_png(report_plot(report_doc(("a", "b", "c"))))
    assert (0x2C, 0xA0, 0x2C) in {tuple(c) for c in three.reshape(-1, 3)}  # the third colour, green
    with pytest.raises(ValueError, match="at least 200x150"):
        plot_series({}, "t", "x", "y", width=100)
    assert read_png(plot_series({}, "empty", "x", "y")).shape == (500, 900, 3)


def test_an_experiment_of_one_bucket_gets_error_bars() -> None:
    # A band over a single x would have no width: each variant's interval is an error bar instead.
    doc = report_doc(buckets=1)
    doc["series"] = [{**p, "value": 0.4, "low": 0.2, "high": 0.6} for p in doc["series"]]  # type: ignore[attr-defined]
    image = read_png(report_plot(doc))
    assert image.shape == (500, 900, 3)
    blue = np.all(image == (0x1F, 0x77, 0xB4), axis=2)
    rows = np.nonzero(blue.any(axis=1))[0]
    assert rows.max() - rows.min() > 150  # a vertical bar spanning 20% .. 60% of the axis
    columns = np.nonzero(blue[(rows.min() + rows.max()) // 2])[0]
    orange = np.all(image == (0xFF, 0x7F, 0x0E), axis=2)
    assert orange.any() and columns.max() < np.nonzero(orange.any(axis=0))[0].min()  # side by side


def test_without_matplotlib_the_plot_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails, as when missing
    with pytest.raises(PlotUnavailable, match=r"pip install 'edgewise\[plot\]'"):
        report_plot(report_doc())


HOLDOUT = {
    "personalized_units": 900,
    "holdout_units": 100,
    "lift": 0.012,
    "lift_low": -0.004,
    "lift_high": 0.028,
    "rel_lift": 0.25,
    "rel_lift_low": -0.08,
    "rel_lift_high": 0.58,
    "p_beat": 0.93,
}


def test_the_holdout_line_says_which_lift_is_relative_and_which_absolute(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = holdout_line(HOLDOUT, "ctr")
    assert line == (
        "personalization vs global holdout: 900 vs 100 units, rel_lift 0.25 [-0.08, 0.58] "
        "(relative: personalized / holdout - 1), abs_lift 0.012 [-0.004, 0.028] "
        "(absolute: difference of the ctr), P(beat) 0.93"
    )
    older = {k: v for k, v in HOLDOUT.items() if not k.startswith("rel_lift_")}
    assert "rel_lift 0.25 (relative" in holdout_line(older, "ctr")
    doc = {
        "experiment": "hero_test",
        "metric": "ctr",
        "control": "control",
        "exposures": 1000,
        "outcomes": 40,
        "attributed": 40,
        "srm": {"chi2": 0.1, "p_value": 0.7, "srm": False},
        "rows": [{"variant": "control", "units": 500, "rel_lift": None}],
        "slices": [],
        "holdout": HOLDOUT,
    }
    print_report(doc, "table")
    out = capsys.readouterr().out
    assert "rel_lift" in out.splitlines()[1]  # the table's column
    assert out.splitlines()[-1] == line
