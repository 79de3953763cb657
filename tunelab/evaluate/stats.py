"""Bootstrap statistics over per-example scores (numpy only, seeded, deterministic).

`bootstrap_ci` gives a percentile interval for a mean; `paired_bootstrap` resamples the
same example indices for two models, so the interval and p-value describe the difference
on this evaluation set rather than two independent noisy means.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunelab.evaluate.metric_facts import CONFIDENCE


def _as_array(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what}: need a non-empty list of numbers")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: contains NaN or infinite values")
    return arr


def _resample_indices(size: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, size, size=(n, size))


def bootstrap_ci(values: Sequence[float], n: int = 1000, seed: int = 0, confidence: float = CONFIDENCE) -> dict:
    """Mean of `values` with a percentile bootstrap interval: {"mean", "low", "high"}."""
    arr = _as_array(values, "bootstrap_ci")
    means = arr[_resample_indices(arr.size, n, seed)].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(arr.mean()), "low": float(low), "high": float(high)}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0, confidence: float = CONFIDENCE) -> dict:
    """Difference mean(b) - mean(a) over the same examples, with a paired bootstrap.

    Returns {"diff", "low", "high", "p_value"}. The p-value is two-sided: twice the share of
    resamples whose difference lies on the other side of zero from the observed one (at most 1).
    A difference of exactly zero gets p = 1.
    """
    x = _as_array(a, "paired_bootstrap a")
    y = _as_array(b, "paired_bootstrap b")
    if x.size != y.size:
        raise ValueError(f"paired_bootstrap: {x.size} and {y.size} values; the examples must be the same")
    d = y - x
    diff = float(d.mean())
    boot = d[_resample_indices(d.size, n, seed)].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    if diff > 0:
        p = 2 * float(np.mean(boot <= 0))
    elif diff < 0:
        p = 2 * float(np.mean(boot >= 0))
    else:
        p = 1.0
    return {"diff": diff, "low": float(low), "high": float(high), "p_value": min(1.0, p)}


def bootstrap_method(samples: int, seed: int) -> dict:
    """How the intervals were computed, as eval.json, benchmark.json and preference.json record it."""
    return {"samples": samples, "seed": seed, "confidence": CONFIDENCE, "interval": "percentile"}
