"""Mean and sample standard deviation over runs or seeds, and the ``mean ± std`` text the result
tables print."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The mean and the sample standard deviation (n − 1 in the denominator; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def pm(mean: float, std: float, spec: str = ".3f", sign: str = "") -> str:
    """``mean ± std``, each written with the format ``spec``; ``sign="+"`` writes the mean's sign."""
    return f"{mean:{sign}{spec}} ± {std:{spec}}"
