"""Error statistics of one float run against another (numpy only), shared by the parity harness
(parity_tests.harness) and the ONNX export's verification (torch_port.export), so both measure
the same quantities: max |a - b|, the root mean square of a - b, a tensor's scale max(1, max|x|),
and RMS_FACTOR, how much larger than a reference float32 run's rounding error a candidate's may be
(two independent float32 roundings of equal size, and their measured tail)."""
from __future__ import annotations

import numpy as np

RMS_FACTOR = 3.0


def scale(x) -> float:
    """max(1, max|x|): relative to the values, absolute below 1."""
    x = np.asarray(x)
    return max(1.0, float(np.abs(x.astype(np.float64)).max()) if x.size else 1.0)


def max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0


def rms(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sqrt(np.mean(np.square(a - b)))) if a.size else 0.0
