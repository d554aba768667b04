# Type stub for the compiled module edgewise.core._exposure (core/_exposure.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

from edgewise.core.decisions import DecideRequest, DecideResponse

def exposure_records(decision_id: str, request: DecideRequest, decision: DecideResponse) -> list[bytes]: ...
