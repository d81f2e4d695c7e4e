"""The sliding-window grid, one for the kit: HRDA's detail windows (inference and the max-entropy
window of training) and the evaluation's sliding-window inference
(:func:`cluda_kit.engine.evaluate.predict_slide`) place their windows with it."""
from __future__ import annotations

import math

__all__ = ["window_starts", "window_spans"]


def window_starts(size: int, window: int, stride: int, divisible: int = 1) -> list[int]:
    """Starts of overlapping windows along one axis: every ``stride`` pixels, the last one moved
    back to end at the border (mmseg slide semantics), each floored to a multiple of ``divisible``
    (then the last may end up to divisible-1 pixels short of the border). A window larger than
    the axis is clipped: one start, 0."""
    window = min(window, size)
    n = max(math.ceil((size - window) / stride), 0) + 1
    return sorted({min(i * stride, size - window) // divisible * divisible for i in range(n)})


def window_spans(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) of each window of :func:`window_starts` along one axis (a window larger than
    the axis is clipped to it)."""
    window = min(window, size)
    return [(s, s + window) for s in window_starts(size, window, stride)]
