"""Smoke test of bench.pipeline_loop (the bounded loop for profilers) on a small bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgewise.bench import pipeline_loop

SMALL = ["--users", "300", "--items", "200", "--warmup", "20"]


def test_setup_then_every_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = str(tmp_path / "loop")
    with pytest.raises(SystemExit, match="no setup yet"):
        pipeline_loop.main(["time", "5", "--dir", directory])
    pipeline_loop.main(["setup", "--dir", directory, "--bundle", str(tmp_path / "bundle"), *SMALL])
    pipeline_loop.main(["loop", "50", "--dir", directory, *SMALL])
    pipeline_loop.main(["time", "50", "--dir", directory, "--rounds", "2", *SMALL])
    assert "(100 = 50 requests x 2 rounds)" in capsys.readouterr().out
    pipeline_loop.main(["profile", "50", "--dir", directory, *SMALL])
    assert "pipeline.py" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="at most"):
        pipeline_loop.main(["loop", "100000", "--dir", directory, *SMALL])
