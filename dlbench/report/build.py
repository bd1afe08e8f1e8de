"""The report of one study: a figure, a statistics table (Markdown, CSV) and the raw trials."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dlbench.report.figures import final_metric
from dlbench.report.stats import summarize

METRIC = "test_accuracy"


def write_study_report(frame: pd.DataFrame, study: str, factors: list[str], question: str,
                       out_dir: Path) -> Path:
    """Write ``out_dir`` (``reports/<study>``) for the rows of ``frame`` belonging to ``study``.

    ``frame`` has one row per trial: ``study``, one column per factor, ``seed``, ``status`` and
    the final metrics. Returns the folder.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = frame[frame["study"] == study]
    rows.to_csv(out_dir / "trials.csv", index=False)
    table = summarize(rows, factors, METRIC)
    table.to_csv(out_dir / "summary.csv", index=False)
    title = question or f"{study}: {METRIC.replace('_', ' ')} per level"
    final_metric(rows, factors, METRIC, title, out_dir / f"{METRIC}.png")
    (out_dir / "index.md").write_text(_markdown(study, question, table, factors, rows), encoding="utf-8")
    return out_dir


def _fmt(v) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _markdown(study: str, question: str, table: pd.DataFrame, factors: list[str], rows: pd.DataFrame) -> str:
    cols = [*factors, "n", "mean", "std", "ci95_low", "ci95_high", "diverged", "failed"]
    lines = [f"# {study}", ""]
    if question:
        lines += [f"**Question:** {question}", ""]
    lines += [f"Final {METRIC.replace('_', ' ')} over seeds (n counts finished trials; the 95% interval is a "
              "Student-t interval of the mean).", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    missing = rows[rows["status"] != "finished"]
    if len(missing):
        lines += ["", f"{len(missing)} trial(s) did not finish and are not in n: "
                  + ", ".join(f"{r['level']} seed {r['seed']} ({r['status']})" for _, r in missing.iterrows())]
    lines += ["", f"![{METRIC}]({METRIC}.png)", ""]
    return "\n".join(lines)
