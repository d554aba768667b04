# Type stub for the compiled module edgewise.edge._wire (edge/_wire.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

from edgewise.core.decisions import DecideResponse

def decide_response_bytes(decision: DecideResponse, decision_id: str) -> bytes: ...
