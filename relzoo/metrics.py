"""Evaluation metrics shared by the training scripts."""
from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean_confidence_interval"]


def mean_confidence_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval, ``z * s / sqrt(n)`` with the sample standard deviation
    ``s`` (ddof 1), as few-shot papers report accuracy over test episodes ("mean ± CI"). One value: CI 0."""
    n = len(values)
    if n == 0:
        raise ValueError("`values` is empty: no episode to average")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, z * math.sqrt(var / n)
