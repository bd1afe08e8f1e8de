"""The report of ``dlbench compare``: what was compared, whether it held, and the figure of B against A.

``out_dir/`` gets ``index.md`` and a self-contained ``index.html`` (``report.document``), the tables
as CSV (``levels.csv``, ``claims.csv``, ``differences.csv``: every number, for a script or a CI
job) and ``differences.png``: per study, each level's difference B - A with its intervals against
the equivalence margin, the picture of an equivalence test (Lakens 2017, Figure 1).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dlbench.comparison import GATES, gate_passed, verdict_line
from dlbench.report.document import Document, fmt, fmt_p
# figures first: it sets matplotlib's file-only backend before pyplot loads
from dlbench.report.figures import CHANCE_COLOR, PAGE_WIDTH, save_figure, set_theme, wrapped_title
import matplotlib.pyplot as plt  # noqa: E402

HELD, MOVED = "#2B6CB0", CHANCE_COLOR  # a level shown equivalent; one that is not


def write_comparison(c, out_dir: Path, gate: str = "all") -> Path:
    """Write ``out_dir`` for the :class:`dlbench.comparison.Comparison` ``c``, passed or failed
    by ``gate`` (``comparison.GATES``); returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c.levels.to_csv(out_dir / "levels.csv", index=False)
    c.claims.to_csv(out_dir / "claims.csv", index=False)
    c.differences.to_csv(out_dir / "differences.csv", index=False)

    doc = Document(f"Comparison of {c.a.short} (A) and {c.b.short} (B)")
    if gate_passed(c, gate):
        doc.text(f"**Passed**: {GATES[gate]}.")
    else:
        doc.text(f"**Failed**: {verdict_line(c, gate).removeprefix('FAILED: ')}.")
        doc.bullets(c.failures())
    doc.bullets([f"**A**: {c.a.where}", f"**B**: {c.b.where}", f"**Comparison**: {c.kind}"])
    doc.heading("What differs in how they were made")
    doc.bullets(c.difference_lines() or ["Nothing recorded differs: the same configs, data, code and machine."])
    if len(c.claims):
        doc.heading("Claims")
        doc.table(c.claims.assign(agree=c.claims["agree"].map({True: "yes", False: "**no**"})).rename(
            columns={"verdict_a": "verdict in A", "verdict_b": "verdict in B"}).astype(str))
    doc.heading("Levels")
    doc.table(level_table(c), f"Final {c.metric} over the finished seeds. B − A with its 95% interval; a level is "
              f"equivalent when the {100 * (1 - 2 * c.alpha):g}% interval lies within ±margin (two one-sided "
              "Welch tests, p below alpha); identical when every seed gave the same value on both sides.")
    figure = draw_differences(c, out_dir / "differences.png")
    if figure is not None:
        doc.figure(figure, "B − A per level", f"Each level's difference in mean {c.metric}, B − A: the dot, its "
                   f"{100 * (1 - 2 * c.alpha):g}% interval (thick) and 95% interval (thin); the band is ±margin. "
                   "Blue: equivalent; red: not shown to be.")
    doc.heading("Files")
    doc.text("`levels.csv` (one row per level), `claims.csv`, `differences.csv`.")
    (out_dir / "index.md").write_text(doc.to_markdown(), encoding="utf-8")
    (out_dir / "index.html").write_text(doc.to_html(), encoding="utf-8")
    return out_dir


def level_table(c):
    """The levels as the report shows them: each side's mean [95% interval], B − A, the verdict."""
    rows = []
    for r in c.levels.itertuples():
        rows.append({
            "study": r.study, "level": r.level, "n (A, B)": f"{r.n_a}, {r.n_b}",
            "A": _mean(r.mean_a, r.mean_a_low, r.mean_a_high), "B": _mean(r.mean_b, r.mean_b_low, r.mean_b_high),
            "B − A [95%]": _mean(r.diff, r.ci95_low, r.ci95_high, signed=True), "margin": f"±{r.margin:g}",
            "p (equivalence)": fmt_p(r.p_tost), "verdict": verdict(r)})
    return pd.DataFrame(rows, columns=["study", "level", "n (A, B)", "A", "B", "B − A [95%]", "margin",
                                       "p (equivalence)", "verdict"])


def verdict(r) -> str:
    """A level's verdict in words."""
    if r.identical:
        return "identical"
    if r.equivalent:
        return "equivalent"
    if not r.n_a or not r.n_b:
        return r.note
    return "**not shown equivalent**" + (f" ({r.note})" if r.note else "")


def _mean(value, low, high, signed: bool = False) -> str:
    if value != value:  # NaN: a level on one side only
        return "—"
    if low != low or low == high:
        return fmt(value, 4, signed)
    return f"{fmt(value, 4, signed)} [{fmt(low, 4, signed)}, {fmt(high, 4, signed)}]"


def draw_differences(c, path: Path) -> Path | None:
    """Per study, a row per level compared on both sides: the difference B - A (dot), its
    TOST interval (thick) and 95% interval (thin), the band of ±margin. None when no level is on
    both sides."""
    both = c.levels[(c.levels["n_a"] > 0) & (c.levels["n_b"] > 0)]
    if not len(both):
        return None
    set_theme()
    studies = list(dict.fromkeys(both["study"]))
    heights = [max(len(both[both["study"] == s]), 1) for s in studies]
    fig, axes = plt.subplots(len(studies), 1, figsize=(PAGE_WIDTH * 0.75, 1.1 + 0.42 * sum(heights) + 0.6 * len(studies)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False, sharex=True)
    reach = max(float(both["margin"].max()) * 1.6,
                float(both[["ci95_low", "ci95_high"]].abs().max().max(skipna=True) or 0) * 1.1)
    for ax, study in zip(axes[:, 0], studies):
        rows = both[both["study"] == study].reset_index(drop=True)
        margin = float(rows["margin"].max())
        ax.axvspan(-margin, margin, color="#DDE8F3", zorder=0)
        ax.axvline(0, color="#555555", linewidth=0.8, zorder=1)
        for i, r in rows.iterrows():
            color = HELD if r["equivalent"] else MOVED
            ax.plot([r["ci95_low"], r["ci95_high"]], [i, i], color=color, linewidth=1.2, zorder=2)
            ax.plot([r["tost_low"], r["tost_high"]], [i, i], color=color, linewidth=4, alpha=0.6, zorder=3,
                    solid_capstyle="butt")
            ax.plot([r["diff"]], [i], "o", color=color, markersize=6, zorder=4)
            if r["identical"]:
                ax.annotate("identical", (r["diff"], i), xytext=(8, 0), textcoords="offset points", va="center",
                            color="#333333")
        ax.set_yticks(range(len(rows)), rows["level"].astype(str))
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_title(study, loc="left")
        ax.set_xlim(-reach, reach)
    axes[-1, 0].set_xlabel(f"B − A, mean {c.metric}")
    fig.suptitle(wrapped_title(f"B ({c.b.short}) against A ({c.a.short}): each level's difference and the margin"))
    fig.tight_layout()
    return save_figure(fig, path)
