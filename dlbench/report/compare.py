"""Two runs of the same studies side by side: does each level's result hold, and each claim's verdict?

The statistics of ``dlbench compare``, on the trial tables ``dlbench.load_trials`` gives (one row
per trial: ``study``, ``level``, ``seed``, ``status`` and its final metrics) and on the claim
tables of two reports. Per level present on both sides: the two means, the difference B - A with
its 95% interval, and an equivalence test at a margin: two one-sided t-tests (TOST; Schuirmann
1987), "the same result" when both reject at ``alpha``, that is when the ``1 - 2 alpha`` interval
of the difference lies inside ``(-margin, +margin)`` (Lakens 2017).

A re-run trains the same seeds: each seed's two values are a pair (the same initialization and
batch order, on other hardware or code), so the test is on the per-seed differences (paired), which
are small where the seed-to-seed spread is large; with other seeds on the two sides the samples
are independent (Welch). Seeds with equal values on both sides make a level *identical* (a
bit-for-bit re-run), whatever the test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from dlbench.config import DEFAULT_ALPHA, DEFAULT_MARGIN
from dlbench.report.stats import t_interval

# per level: each side's mean with its 95% interval, the difference B - A with its 95% interval and
# the 1 - 2 alpha interval the equivalence test decides on (inside +-margin: equivalent), the test
# (paired: the same seeds on both sides; Welch: other seeds)
COLUMNS = ["study", "level", "n_a", "n_b", "mean_a", "mean_a_low", "mean_a_high", "mean_b", "mean_b_low",
           "mean_b_high", "diff", "ci95_low", "ci95_high", "tost_low", "tost_high", "margin", "p_tost", "test",
           "equivalent", "identical", "note"]


@dataclass(frozen=True)
class Shift:
    """How far B moved from A: the difference, its intervals and the equivalence test's p-value."""

    diff: float
    ci95: tuple[float, float]
    inner: tuple[float, float]  # the 1 - 2 alpha interval: inside +-margin <=> equivalent
    p: float  # TOST's: the larger of the two one-sided p-values; NaN when not testable
    test: str  # "paired" or "Welch"
    sd: float  # the spread the test works against (of the pairs' differences, or each side's pooled)

    def equivalent(self, alpha: float) -> bool:
        return self.p < alpha


def tost(a, b, margin: float, alpha: float = DEFAULT_ALPHA) -> tuple[float, bool]:
    """The p-value of equivalence of ``mean(a) - mean(b)`` within ``±margin`` for independent
    samples (the larger of the two one-sided Welch tests' p-values) and whether it is below
    ``alpha``. With no spread on either side the difference is exact: p = 0 inside the margin, 1
    outside. NaN with fewer than 2 values on a side."""
    s = welch_shift(np.asarray(a, dtype=float), np.asarray(b, dtype=float), margin, alpha)
    return s.p, s.equivalent(alpha)


def welch_shift(a: np.ndarray, b: np.ndarray, margin: float, alpha: float) -> Shift:
    """``mean(a) - mean(b)`` of independent samples (Welch-Satterthwaite degrees of freedom)."""
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Shift(diff, (math.nan, math.nan), (math.nan, math.nan), math.nan, "Welch", math.nan)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb else len(a) + len(b) - 2
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    return _t_shift(diff, math.sqrt(va + vb), df, margin, alpha, "Welch", sd)


def paired_shift(d: np.ndarray, margin: float, alpha: float) -> Shift:
    """The mean of per-seed differences ``d``, tested against zero at ``n - 1`` degrees of freedom."""
    if len(d) < 2:
        return Shift(float(d.mean()) if len(d) else math.nan, (math.nan, math.nan), (math.nan, math.nan), math.nan,
                     "paired", math.nan)
    sd = float(d.std(ddof=1))
    return _t_shift(float(d.mean()), sd / math.sqrt(len(d)), len(d) - 1, margin, alpha, "paired", sd)


def _t_shift(diff: float, se: float, df: float, margin: float, alpha: float, test: str, sd: float) -> Shift:
    if se == 0:  # no spread: the difference is exact
        return Shift(diff, (diff, diff), (diff, diff), 0.0 if abs(diff) < margin else 1.0, test, 0.0)
    half95, half = stats.t.ppf(0.975, df) * se, stats.t.ppf(1 - alpha, df) * se
    p_lower = float(stats.t.sf((diff + margin) / se, df))  # H0: diff <= -margin
    p_upper = float(stats.t.cdf((diff - margin) / se, df))  # H0: diff >= +margin
    return Shift(diff, (diff - half95, diff + half95), (diff - half, diff + half), max(p_lower, p_upper), test, sd)


def compare_trials(a: pd.DataFrame, b: pd.DataFrame, metric: str = "test_accuracy",
                   margin: float = DEFAULT_MARGIN, alpha: float = DEFAULT_ALPHA) -> pd.DataFrame:
    """One row per (study, level) of either side, in A's order then B's: the finished seeds'
    ``metric`` compared (``COLUMNS``; ``diff`` is B - A: how the second run moved). A level on one
    side only, or with other seeds, says so in ``note``."""
    rows = []
    keys = list(dict.fromkeys([*_levels(a), *_levels(b)]))
    for study, level in keys:
        sa, sb = _finished(a, study, level, metric), _finished(b, study, level, metric)
        row = {"study": study, "level": level, "n_a": len(sa), "n_b": len(sb), "margin": margin, "note": "",
               "equivalent": False, "identical": False}
        if not len(sa) or not len(sb):
            side = "A" if len(sa) else "B"
            rows.append(row | {"note": f"only in {side}" if (len(sa) or len(sb)) else "no finished seed"})
            continue
        same_seeds = set(sa.index) == set(sb.index)
        shift = (paired_shift((sb - sa[sb.index]).to_numpy(), margin, alpha) if same_seeds
                 else welch_shift(sb.to_numpy(), sa.to_numpy(), margin, alpha))
        identical = same_seeds and bool((sa[sb.index] == sb).all())
        (a_low, a_high), (b_low, b_high) = t_interval(sa.to_numpy()), t_interval(sb.to_numpy())
        notes = []
        if not same_seeds:
            notes.append(f"seeds differ (A: {_seeds(sa.index)}; B: {_seeds(sb.index)})")
        if math.isnan(shift.p):
            notes.append("needs >= 2 finished seeds on each side")
        elif not (shift.equivalent(alpha) or identical) and abs(shift.diff) < margin:
            notes.append(_seeds_note(shift, margin, alpha))
        rows.append(row | {"mean_a": float(sa.mean()), "mean_a_low": a_low, "mean_a_high": a_high,
                           "mean_b": float(sb.mean()), "mean_b_low": b_low, "mean_b_high": b_high,
                           "diff": float(sb.mean() - sa.mean()), "ci95_low": shift.ci95[0], "ci95_high": shift.ci95[1],
                           "tost_low": shift.inner[0], "tost_high": shift.inner[1], "p_tost": shift.p,
                           "test": shift.test, "equivalent": shift.equivalent(alpha) or identical,
                           "identical": identical, "note": "; ".join(notes)})
    return pd.DataFrame(rows, columns=COLUMNS)


def seeds_needed(shift: Shift, margin: float, alpha: float = DEFAULT_ALPHA, most: int = 10_000) -> int | None:
    """Seeds (per side) with which a difference like ``shift``'s, at its spread, would be shown
    equivalent within ``margin``: the least n whose ``1 - 2 alpha`` interval fits inside it
    (``|diff| + t * sd * sqrt(1 / n)`` paired, ``sqrt(2 / n)`` Welch); None beyond ``most``."""
    if abs(shift.diff) >= margin:
        return None
    paired = shift.test == "paired"
    n = 2
    while n <= most:
        df, spread = (n - 1, math.sqrt(1 / n)) if paired else (2 * n - 2, math.sqrt(2 / n))
        if abs(shift.diff) + stats.t.ppf(1 - alpha, df) * shift.sd * spread < margin:
            return n
        n = n + 1 if n < 50 else int(n * 1.1)
    return None


def _seeds_note(shift: Shift, margin: float, alpha: float) -> str:
    """Why a level that moved less than the margin is not shown equivalent: its spread, and the seeds it would take."""
    n = seeds_needed(shift, margin, alpha)
    more = f"about {n} seeds would show it" if n else "no number of seeds would show it at this difference"
    what = "of the per-seed differences" if shift.test == "paired" else "of the seeds"
    return f"too few seeds for the spread {what} (sd {shift.sd:.3g}): {more}"


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
