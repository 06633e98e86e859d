"""The course's difference between two vectors, used by the gradient check and by grading."""

from __future__ import annotations

import numpy as np


def course_difference(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b||_2 / (||a||_2 + ||b||_2), a and b of the same shape; 0 when both are zero. Both are first divided by
    their largest |entry|, so the norms cannot overflow."""
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    if scale == 0:
        return 0.0
    a, b = a / scale, b / scale
    return float(np.linalg.norm(a - b)) / float(np.linalg.norm(a) + np.linalg.norm(b))
