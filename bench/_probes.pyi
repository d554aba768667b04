# Type stub for the compiled bench-only module edgewise.bench._probes (bench/_probes.pyx), checked against
# the built module by mypy.stubtest (scripts/typecheck).

import numpy as np
from numpy.typing import NDArray

def stream_sum(data: NDArray[np.float32]) -> float: ...
