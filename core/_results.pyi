# Type stub for the compiled module edgewise.core._results (core/_results.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

from collections.abc import Sequence

from edgewise.core.decisions import ItemResult

def item_results(
    cls: type[ItemResult], item_ids: Sequence[str], rows: list[int], values: list[float], reason: str
) -> list[ItemResult]: ...
