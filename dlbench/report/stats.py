"""Statistics over seeds: intervals, differences between levels, multiple comparisons, claims.

The unit of replication is the seed: one final metric per trial. With the 3-10 seeds of a typical
study, intervals use Student's t (a bootstrap is too narrow at such n), differences Welch's
unequal-variance t (two levels need not share a variance: dropout narrows the spread), p-values
are two-sided and corrected with Holm's step-down method across the comparisons of a study, and
effect sizes are Hedges' g (Cohen's d with its small-sample correction). An interaction claim's
difference of differences is a contrast of four groups with a Welch-style standard error and the
Welch-Satterthwaite degrees of freedom (``contrast``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from dlbench.config import InteractionClaim
from dlbench.trial import level_label


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean: honest for the 3-10 seeds of a typical study
    (a bootstrap interval is too narrow at such n). Degenerate (mean, mean) for n < 2."""
    x = _finite(values)
    if len(x) == 0:
        return (math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, mean)
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return (mean - half, mean + half)


def pooled_sd(a, b) -> float:
    """The pooled standard deviation of two samples (NaN where n < 2 on either side)."""
    a, b = _finite(a), _finite(b)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan
    return math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` with Welch's t-test and Hedges' g. NaN where n < 2 on either side."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float
    g: float

    @property
    def testable(self) -> bool:
        return self.n_a >= 2 and self.n_b >= 2


def welch(a, b, confidence: float = 0.95) -> Difference:
    """Welch's two-sample t-test of ``mean(a) - mean(b)`` (two-sided) and its confidence interval.

    Equal to ``scipy.stats.ttest_ind(a, b, equal_var=False)``; when both samples have zero spread
    the difference is exact: p = 1 if the means are equal, else 0.
    """
    a, b = _finite(a), _finite(b)
    na, nb = len(a), len(b)
    ma = float(a.mean()) if na else math.nan
    mb = float(b.mean()) if nb else math.nan
    diff = ma - mb
    if na < 2 or nb < 2:
        return Difference(na, nb, ma, mb, diff, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
    se = math.sqrt(va + vb)
    if se == 0:
        t, df, p, half = (0.0 if diff == 0 else math.copysign(math.inf, diff)), float(na + nb - 2), \
            (1.0 if diff == 0 else 0.0), 0.0
    else:
        df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
        t = diff / se
        p = float(2 * stats.t.sf(abs(t), df))
        half = float(stats.t.ppf(0.5 + confidence / 2, df) * se)
    return Difference(na, nb, ma, mb, diff, diff - half, diff + half, float(t), float(df), p, hedges_g(a, b))


@dataclass(frozen=True)
class Contrast:
    """``sum(w_i * mean(x_i))`` over independent groups, with a Welch-style t-test (two-sided)."""

    ns: tuple[int, ...]
    means: tuple[float, ...]
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float

    @property
    def testable(self) -> bool:
        return all(n >= 2 for n in self.ns)


def contrast(samples, weights, confidence: float = 0.95) -> Contrast:
    """A linear contrast of group means, e.g. weights (1, -1, -1, 1) for a difference of differences.

    Standard error sqrt(sum w_i^2 s_i^2 / n_i), each group keeping its own variance; degrees of
    freedom by Welch-Satterthwaite, (sum v_i)^2 / sum v_i^2 / (n_i - 1) with v_i = w_i^2 s_i^2 / n_i;
    t = estimate / se against Student's t. Two groups with weights (1, -1) give exactly ``welch``.
    NaN where a group has fewer than 2 values; with no spread at all the estimate is exact (p = 1
    if it is 0, else 0).
    """
    groups = [_finite(x) for x in samples]
    weights = [float(w) for w in weights]
    ns = tuple(len(x) for x in groups)
    means = tuple(float(x.mean()) if len(x) else math.nan for x in groups)
    estimate = float(sum(w * m for w, m in zip(weights, means)))
    if min(ns) < 2:
        return Contrast(ns, means, estimate, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    v = [w * w * x.var(ddof=1) / len(x) for w, x in zip(weights, groups)]
    se = math.sqrt(sum(v))
    if se == 0:
        t = 0.0 if estimate == 0 else math.copysign(math.inf, estimate)
        return Contrast(ns, means, estimate, 0.0, estimate, estimate, t, float(sum(ns) - len(ns)),
                        1.0 if estimate == 0 else 0.0)
    df = sum(v) ** 2 / sum(vi ** 2 / (n - 1) for vi, n in zip(v, ns))
    t = estimate / se
    half = float(stats.t.ppf(0.5 + confidence / 2, df) * se)
    return Contrast(ns, means, estimate, se, estimate - half, estimate + half, float(t), float(df),
                    float(2 * stats.t.sf(abs(t), df)))


def hedges_g(a, b) -> float:
    """Standardized mean difference (mean(a) - mean(b)) / pooled sd, bias-corrected (Hedges 1981)."""
    a, b = _finite(a), _finite(b)
    na, nb = len(a), len(b)
    pooled = pooled_sd(a, b)
    if not pooled > 0:  # NaN (n < 2 on a side) or 0
        return math.nan
    correction = 1 - 3 / (4 * (na + nb) - 9)
    return correction * (a.mean() - b.mean()) / pooled


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control); NaNs stay NaN, not counted.

    Sorted ascending, the i-th of m p-values (i from 0) becomes max over j <= i of (m - j) p_(j),
    capped at 1 (Holm 1979).
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def summarize(frame: pd.DataFrame, by: list[str], metric: str, expected: int | None = None) -> pd.DataFrame:
    """Per group: finished seeds n, mean, std, 95% CI of ``metric``; diverged/failed/not-run counts.

    ``expected`` is the number of seeds each group should have (trials never run count as not run).
    """
    rows = []
    for key, group in frame.groupby(by, sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        ok = group.loc[group["status"] == "finished", metric].dropna() if metric in group else pd.Series(dtype=float)
        low, high = t_interval(ok) if len(ok) > 1 else (math.nan, math.nan)  # one seed: no interval
        row = {
            **dict(zip(by, key)),
            "n": len(ok),
            "mean": ok.mean() if len(ok) else math.nan,
            "std": ok.std(ddof=1) if len(ok) > 1 else math.nan,
            "ci95_low": low,
            "ci95_high": high,
            "diverged": int((group["status"] == "diverged").sum()),
            "failed": int((group["status"] == "failed").sum()),
        }
        if expected is not None:
            row["not_run"] = max(0, expected - int(group["seed"].notna().sum()))
        rows.append(row)
    return pd.DataFrame(rows)


def _values(frame: pd.DataFrame, cell: dict[str, str], metric: str) -> np.ndarray:
    """The finished seeds' ``metric`` in one cell; factor ``f`` is the column ``factor.f``."""
    mask = frame["status"] == "finished"
    for factor, level in cell.items():
        mask &= frame[f"factor.{factor}"].astype(str) == str(level)
    return _finite(frame.loc[mask, metric]) if metric in frame else np.array([])


def comparisons(frame: pd.DataFrame, levels: dict[str, list[str]], reference: dict[str, str],
                metric: str) -> pd.DataFrame:
    """Each level's difference from its factor's reference level, the other factors held fixed.

    One factor: every level against the reference. Several: the simple effects, e.g. sigmoid vs
    relu at each depth and each depth vs depth 1 for each activation. Welch 95% intervals and
    p-values, Holm-corrected across all rows; Hedges' g. ``frame`` has one row per trial with
    ``status``, ``metric`` and a column ``factor.<f>`` per factor.
    """
    rows = []
    factors = list(levels)
    for factor in factors:
        others = [f for f in factors if f != factor]
        for combo in itertools.product(*[levels[f] for f in others]):
            fixed = dict(zip(others, combo))
            ref_cell = {f: (reference[factor] if f == factor else fixed[f]) for f in factors}
            for lvl in levels[factor]:
                if lvl == reference[factor]:
                    continue
                cell = {f: (lvl if f == factor else fixed[f]) for f in factors}
                a, b = _values(frame, cell, metric), _values(frame, ref_cell, metric)
                d = welch(a, b)
                rows.append({
                    "factor": factor, "level": level_label(cell, levels), "reference": level_label(ref_cell, levels),
                    "n": d.n_a, "n_ref": d.n_b, "mean": d.mean_a, "mean_ref": d.mean_b,
                    "diff": d.diff, "ci95_low": d.ci_low, "ci95_high": d.ci_high,
                    "t": d.t, "df": d.df, "p": d.p, "hedges_g": d.g, "pooled_sd": pooled_sd(a, b),
                    "note": "" if d.testable else f"needs >= 2 finished seeds on each side (have {d.n_a} and {d.n_b})",
                })
    out = pd.DataFrame(rows, columns=["factor", "level", "reference", "n", "n_ref", "mean", "mean_ref", "diff",
                                      "ci95_low", "ci95_high", "t", "df", "p", "hedges_g", "pooled_sd", "note"])
    out.insert(out.columns.get_loc("p") + 1, "p_holm", holm(out["p"]) if len(out) else [])
    return out


CLAIM_COLUMNS = ["claim", "level", "beats", "metric", "higher_is_better", "n", "n_beats", "mean", "mean_beats", "diff",
                 "ci_low", "ci_high", "p", "p_holm", "hedges_g", "alpha", "verdict", "why", "kind", "df"]


def judge_claims(frame: pd.DataFrame, claims, alpha: float) -> pd.DataFrame:
    """A verdict for each claim: supported, contradicted or inconclusive.

    "A beats B on metric": Welch's two-sided test of mean(A) - mean(B). An interaction claim "A
    beats B by more at X than at Y": the difference of differences (A@X - B@X) - (A@Y - B@Y), a
    contrast of four independent groups (``contrast``: Welch-style standard error,
    Welch-Satterthwaite degrees of freedom). The p-values are Holm-corrected across all the study's
    claims, of both kinds (the claims are the study's pre-declared hypotheses: one family).
    Supported: the corrected p is below ``alpha`` and the difference is in the claimed direction
    (the better one for the metric); contradicted: below ``alpha`` and the other way; otherwise
    inconclusive (including fewer than 2 finished seeds in a group). Intervals are (1 - alpha).
    Columns: ``CLAIM_COLUMNS``; of an interaction row, ``mean`` and ``mean_beats`` are the effect
    A - B at X and at Y, ``n`` and ``n_beats`` the fewest finished seeds of a cell at X and at Y.
    """
    tests = [_test(frame, c, 1 - alpha) for c in claims]
    p_holm = holm([t.p for t, _ in tests]) if tests else []
    family = f"{len(claims)} claims" if len(claims) > 1 else "1 claim"
    rows = [_claim_row(c, t, g, ph, alpha, family) for c, (t, g), ph in zip(claims, tests, p_holm)]
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def _test(frame: pd.DataFrame, claim, confidence: float) -> tuple[Contrast, float]:
    """The claim's contrast and, for two levels, Hedges' g (NaN for an interaction)."""
    if isinstance(claim, InteractionClaim):
        cells = [claim.level_at, claim.beats_at, claim.level_than, claim.beats_than]
        return contrast([_values(frame, c, claim.metric) for c in cells], (1, -1, -1, 1), confidence), math.nan
    a, b = _values(frame, claim.level, claim.metric), _values(frame, claim.beats, claim.metric)
    c = contrast([a, b], (1, -1), confidence)
    return c, (hedges_g(a, b) if c.testable else math.nan)


def _verdict(c: Contrast, p_holm: float, alpha: float, higher_is_better: bool) -> tuple[str, str]:
    gain = c.estimate if higher_is_better else -c.estimate  # > 0: in the claimed direction
    if p_holm < alpha and gain > 0:
        return "supported", f"significant at alpha = {alpha:g}, in the claimed direction"
    if p_holm < alpha and gain < 0:
        return "contradicted", f"significant at alpha = {alpha:g}, in the opposite direction"
    return "inconclusive", f"not significant at alpha = {alpha:g}"


def _claim_row(claim, c: Contrast, g: float, ph: float, alpha: float, family: str) -> dict:
    conf = f"{100 * (1 - alpha):g}%"
    better = "higher" if claim.higher_is_better else "lower"
    row = {"metric": claim.metric, "higher_is_better": claim.higher_is_better, "diff": c.estimate,
           "ci_low": c.ci_low, "ci_high": c.ci_high, "p": c.p, "p_holm": ph, "alpha": alpha, "df": c.df}
    if isinstance(claim, InteractionClaim):
        a, b, f = claim.level, claim.beats, claim.across
        at, than = f"{f}={claim.at}", f"{f}={claim.than}"
        ns = ", ".join(map(str, c.ns))
        effects = (c.means[0] - c.means[1], c.means[2] - c.means[3])
        row.update(kind="interaction", claim=str(claim), level=f"{a} − {b} at {at}", beats=f"{a} − {b} at {than}",
                   n=min(c.ns[:2]), n_beats=min(c.ns[2:]), mean=effects[0], mean_beats=effects[1],
                   hedges_g=math.nan)
        if not c.testable:
            verdict, why = "inconclusive", (f"cannot test: the cells {a}/{b} at {at}, then at {than}, have n = {ns} "
                                            "finished seed(s); at least 2 per cell are needed")
        else:
            verdict, lead = _verdict(c, ph, alpha, claim.higher_is_better)
            size = (f"larger at {at} than at {than} by {_signed(c.estimate)} ({conf} CI" if c.estimate >= 0 else
                    f"smaller at {at} than at {than} by {abs(c.estimate):.3f} (difference of differences "
                    f"{_signed(c.estimate)}, {conf} CI")
            why = (f"{lead}: the effect of {a} vs {b} on {claim.metric} is {size} {_signed(c.ci_low)} to "
                   f"{_signed(c.ci_high)}; {a} − {b} = {_signed(effects[0])} at {at}, {_signed(effects[1])} at "
                   f"{than}; {better} {claim.metric} is better), Welch–Satterthwaite t-test of the difference of "
                   f"differences {_p(c.p)} (df = {c.df:.1f}), Holm-corrected over {family} {_p(ph)}, n = {ns}")
    else:
        a, b = level_label(claim.level), level_label(claim.beats)  # a claim names its factors
        row.update(kind="difference", claim=str(claim), level=a, beats=b, n=c.ns[0], n_beats=c.ns[1],
                   mean=c.means[0], mean_beats=c.means[1], hedges_g=g)
        if not c.testable:
            verdict, why = "inconclusive", (f"cannot test: {a!r} has {c.ns[0]} and {b!r} has {c.ns[1]} finished "
                                            "seed(s); at least 2 per level are needed")
        else:
            verdict, lead = _verdict(c, ph, alpha, claim.higher_is_better)
            why = (f"{lead}: {a} − {b} = {_signed(c.estimate)} ({conf} CI {_signed(c.ci_low)} to "
                   f"{_signed(c.ci_high)}; {better} {claim.metric} is better), Welch {_p(c.p)}, Holm-corrected over "
                   f"{family} {_p(ph)}, n = {c.ns[0]} vs {c.ns[1]}")
    row.update(verdict=verdict, why=why)
    return row


def _signed(v: float) -> str:
    return f"{v:+.3f}".replace("-", "−")


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
