# Type stub for the compiled module edgewise.core._decide (core/_decide.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

from collections.abc import Callable
from typing import Any

from typing_extensions import disjoint_base

from edgewise.core.decisions import DecideResponse

@disjoint_base
class DecidePlan:
    def __init__(self, state: Any) -> None: ...

@disjoint_base
class Decider:
    def __init__(
        self,
        pipeline: Any,
        scratch: Any,
        profiles: Any,
        consented: Callable[..., Any],
        local_time: Callable[..., Any],
        resolve: Callable[..., Any],
        feature_view: type,
        memo_class: type,
        shopper_class: type,
    ) -> None: ...
    def plan(self, state: Any) -> DecidePlan: ...
    def decide_view(
        self, view: Any, request: Any, rank: Callable[..., Any]
    ) -> tuple[Any, DecideResponse | None]: ...
    def decide(
        self, view: Any, state: Any, plan: DecidePlan, request: Any, rank: Callable[..., Any]
    ) -> DecideResponse | None: ...
