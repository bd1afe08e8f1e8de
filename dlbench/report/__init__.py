"""Reports: per-trial results -> tidy frame -> statistics -> seaborn figures and tables.

The only package that imports seaborn and matplotlib.
"""

from dlbench.report.build import write_study_report

__all__ = ["write_study_report"]
