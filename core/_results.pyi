# Type stub for the compiled module edgewise.core._results (core/_results.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

from collections.abc import Sequence
from typing import TypeVar

from edgewise.core.decisions import ItemResult

_T = TypeVar("_T")

def item_results(
    cls: type[ItemResult], item_ids: Sequence[str], rows: list[int], values: list[float], reason: str
) -> list[ItemResult]: ...
def filled(cls: type[_T], values: tuple[object, ...]) -> _T: ...
