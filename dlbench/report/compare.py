"""Two runs of the same studies side by side: does each level's result hold, and each claim's verdict?

The statistics of ``dlbench compare`` (issue 27), on the trial tables ``dlbench.load_trials``
gives (one row per trial: ``study``, ``level``, ``seed``, ``status`` and its final metrics) and on
the claim tables of two reports. Per level present on both sides: the two means, their difference
with its Welch 95% interval, and an equivalence test at a margin: two one-sided Welch t-tests
(TOST; Schuirmann 1987), "the same result" when both reject at ``alpha``, that is when the
``1 - 2 * alpha`` interval of the difference lies inside ``(-margin, +margin)``. Seeds trained on
both sides with equal values make a level *identical* (a bit-for-bit re-run), whatever the test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from dlbench.report.stats import welch

DEFAULT_MARGIN = 0.02  # of an accuracy: two results within 2 points of each other are the same result
DEFAULT_ALPHA = 0.05
COLUMNS = ["study", "level", "n_a", "n_b", "mean_a", "mean_b", "diff", "ci95_low", "ci95_high", "p_tost",
           "equivalent", "identical", "note"]


def tost(a, b, margin: float, alpha: float = DEFAULT_ALPHA) -> tuple[float, bool]:
    """The p-value of equivalence of ``mean(a) - mean(b)`` within ``±margin`` (the larger of the
    two one-sided Welch tests' p-values) and whether it is below ``alpha``. With no spread on
    either side the difference is exact: p = 0 inside the margin, 1 outside. NaN with fewer than 2
    values on a side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan, False
    diff = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        p = 0.0 if abs(diff) < margin else 1.0
        return p, p < alpha
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    p_lower = float(stats.t.sf((diff + margin) / se, df))  # H0: diff <= -margin
    p_upper = float(stats.t.cdf((diff - margin) / se, df))  # H0: diff >= +margin
    p = max(p_lower, p_upper)
    return p, p < alpha


def compare_trials(a: pd.DataFrame, b: pd.DataFrame, metric: str = "test_accuracy",
                   margin: float = DEFAULT_MARGIN, alpha: float = DEFAULT_ALPHA) -> pd.DataFrame:
    """One row per (study, level) of either side, in A's order then B's: the finished seeds'
    ``metric`` compared (``COLUMNS``). A level on one side only, or with other seeds, says so in
    ``note``."""
    rows = []
    keys = list(dict.fromkeys([*_levels(a), *_levels(b)]))
    for study, level in keys:
        sa, sb = _finished(a, study, level, metric), _finished(b, study, level, metric)
        row = {"study": study, "level": level, "n_a": len(sa), "n_b": len(sb), "note": ""}
        if not len(sa) or not len(sb):
            side = "A" if len(sa) else "B"
            rows.append(row | {"note": f"only in {side}" if (len(sa) or len(sb)) else "no finished seed"})
            continue
        d = welch(sa.to_numpy(), sb.to_numpy())
        p, same = tost(sa.to_numpy(), sb.to_numpy(), margin, alpha)
        shared = sa.index.intersection(sb.index)
        identical = len(shared) == len(sa) == len(sb) and bool((sa[shared] == sb[shared]).all())
        notes = []
        if set(sa.index) != set(sb.index):
            notes.append(f"seeds differ (A: {_seeds(sa.index)}; B: {_seeds(sb.index)})")
        if math.isnan(p):
            notes.append("needs >= 2 finished seeds on each side")
        rows.append(row | {"mean_a": d.mean_a, "mean_b": d.mean_b, "diff": d.diff, "ci95_low": d.ci_low,
                           "ci95_high": d.ci_high, "p_tost": p, "equivalent": same or identical,
                           "identical": identical, "note": "; ".join(notes)})
    return pd.DataFrame(rows, columns=COLUMNS)


def compare_claims(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Each claim (``study``, ``claim``) of either side with its verdict on each (``verdict_a``,
    ``verdict_b``; empty where a side lacks it) and whether they agree."""
    merged = pd.merge(a[["study", "claim", "verdict"]], b[["study", "claim", "verdict"]], on=["study", "claim"],
                      how="outer", suffixes=("_a", "_b"), sort=False).fillna("")
    merged["agree"] = (merged["verdict_a"] == merged["verdict_b"]) & (merged["verdict_a"] != "")
    return merged


def _levels(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(frame["study"].astype(str), frame["level"].astype(str))))


def _finished(frame: pd.DataFrame, study: str, level: str, metric: str) -> pd.Series:
    """The finished trials' ``metric`` of one level, indexed by seed."""
    rows = frame[(frame["study"].astype(str) == study) & (frame["level"].astype(str) == level)
                 & (frame["status"] == "finished")]
    values = rows.set_index("seed")[metric].astype(float) if metric in rows else pd.Series(dtype=float)
    return values[np.isfinite(values)]


def _seeds(index) -> str:
    return ", ".join(map(str, sorted(index)))
