"""The bench-only compiled probe (edgewise.bench._probes), which bench.scoring's `hot read` and DRAM
bandwidth figures time: it must read and sum every element exactly once."""

from __future__ import annotations

import numpy as np
import pytest

from edgewise.bench._probes import stream_sum


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 64, 1_000, 100_003])
def test_stream_sum_adds_every_element_once(n: int) -> None:
    # Small integers: every partial sum is exact in float32, whatever the order of the additions.
    data = np.random.default_rng(n).integers(-8, 9, size=n).astype(np.float32)
    assert stream_sum(data) == float(data.astype(np.int64).sum())


def test_stream_sum_takes_only_contiguous_float32() -> None:
    with pytest.raises(ValueError):
        stream_sum(np.zeros(64, dtype=np.float32)[::2])
    with pytest.raises(ValueError):
        stream_sum(np.zeros(64, dtype=np.float64))
