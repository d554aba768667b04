# Type stub for the compiled module edgewise.core._placement (core/_placement.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

from edgewise.core.decisions import FallbackReason, ItemResult

@disjoint_base
class Placer:
    @property
    def state(self) -> Any: ...
    @property
    def usable(self) -> bool: ...
    def __init__(self, state: Any, scratch: Any) -> None: ...

def set_scan(name: str) -> str: ...
def scan() -> str: ...
def mean_rows(matrix: NDArray[np.float32], rows: list[int], out: NDArray[np.float32]) -> None: ...
def place(
    p: Placer,
    view: Any,
    base: NDArray[np.uint8],
    ask: Any,
    count: int,
    serve: Any,
    default: Any,
    shopper: Any,
    country: str,
    now_ms: int,
    scored: Callable[..., Any],
) -> tuple[list[ItemResult], str, FallbackReason] | None: ...
