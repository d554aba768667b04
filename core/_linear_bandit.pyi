# Type stub for the compiled module edgewise.core._linear_bandit (core/_linear_bandit.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

import numpy as np
from numpy.typing import NDArray

def linear_choose(
    theta: NDArray[np.float64],
    a_inv: NDArray[np.float64],
    x: NDArray[np.float64],
    ucb: float,
    temperature: float,
    floor: float,
    u: float,
    probs: NDArray[np.float64],
) -> int: ...
