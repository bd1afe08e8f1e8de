"""Reports: MLflow runs -> tidy frames -> statistics -> seaborn figures and tables.

The only package that imports seaborn and matplotlib. ``report_from_mlflow`` is what both
``dlbench run`` (at the end) and ``dlbench report`` call: a report is always rebuilt from the
tracking store alone.
"""

from dlbench.report.build import report_folder, report_from_mlflow, report_from_results, write_study_report

__all__ = ["report_folder", "report_from_mlflow", "report_from_results", "write_study_report"]
