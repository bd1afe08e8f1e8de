"""Summary statistics over seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean: honest for the 3-10 seeds of a typical study
    (a bootstrap interval is too narrow at such n). Degenerate (mean, mean) for n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return (math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, mean)
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return (mean - half, mean + half)


def summarize(frame: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Per group: finished seeds n, mean, std, 95% CI of ``metric``; diverged/failed counts."""
    rows = []
    for key, group in frame.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        ok = group.loc[group["status"] == "finished", metric].dropna()
        low, high = t_interval(ok)
        rows.append({
            **dict(zip(by, key)),
            "n": len(ok),
            "mean": ok.mean() if len(ok) else math.nan,
            "std": ok.std(ddof=1) if len(ok) > 1 else math.nan,
            "ci95_low": low,
            "ci95_high": high,
            "diverged": int((group["status"] == "diverged").sum()),
            "failed": int((group["status"] == "failed").sum()),
        })
    return pd.DataFrame(rows)
