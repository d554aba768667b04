# Type stub for the compiled module edgewise.edge._wire (edge/_wire.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

from edgewise.core.decisions import DecideRequest, DecideResponse
from edgewise.edge.convert import Limits

FAST_KEY_ID_CHARS: int

def decide_request(data: bytes, limits: Limits, now_ms: int) -> DecideRequest | None: ...
def decide_response_bytes(decision: DecideResponse, decision_id: str) -> bytes: ...
