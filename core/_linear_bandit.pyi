# Type stub for the compiled module edgewise.core._linear_bandit (core/_linear_bandit.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

@disjoint_base
class LinearChooser:
    @property
    def ucb(self) -> float: ...
    @property
    def temperature(self) -> float: ...
    @property
    def floor(self) -> float: ...
    @property
    def arms(self) -> int: ...
    @property
    def dim(self) -> int: ...
    def __init__(
        self,
        theta: NDArray[np.float64],
        a_inv: NDArray[np.float64],
        ucb: float,
        temperature: float,
        floor: float,
    ) -> None: ...
    def choose(self, x: list[float], u: float) -> tuple[int, float]: ...
    def probabilities_into(self, x: list[float], out: NDArray[np.float64]) -> None: ...
