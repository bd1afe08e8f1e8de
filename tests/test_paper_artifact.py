"""The paper-artifact path, end to end (docs/compare.md): a study run on one machine, exported as
one archive, imported into a fresh store in another folder (the reader's clone), its report
rebuilt there with the same tables, the whole study reproduced there and compared with the
import: ``dlbench compare`` exits 0. Real SQLite stores throughout; the commands a reader types
(run, import, reproduce --study, compare) as real ``dlbench`` subprocesses, the others as the
library calls they make (``dlbench.session``), which spares the suite a process start each.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from conftest import TINY_BASELINE, describe_result, run_cli, sqlite_uri, write_study

from dlbench import session
from dlbench.settings import CompareOptions, ExportOptions, ReportOptions

pytestmark = pytest.mark.slow  # end to end: five dlbench processes

STUDY = """\
[study]
name = "paper"
seeds = 3

""" + TINY_BASELINE + """
[studies.dropout]
question = "Does dropout help a tiny MLP?"
claims = [{ level = "on", beats = "off" }]

[studies.dropout.levels]
off = {}
on = { regularizers = [{ name = "dropout", p_hidden = 0.2 }] }
"""
TABLES = ["summary.csv", "claims.csv", "comparisons.csv"]  # trials.csv holds the run ids, which an import renews


def cli(folder, *args):
    proc = run_cli([*args, "--tracking-uri", sqlite_uri(folder / "mlflow.db")], cwd=folder)
    assert proc.returncode == 0, describe_result(proc)
    return proc.stdout + proc.stderr


def test_a_study_exported_imported_elsewhere_reproduced_and_compared_holds(tmp_path, monkeypatch):
    author, reader = tmp_path / "author", tmp_path / "reader"
    author.mkdir(), reader.mkdir()
    write_study(author, STUDY, "paper.toml")
    out = cli(author, "run", "paper.toml", "--jobs", "1")
    original = re.search(r"MLflow parent run: (\w+)", out)[1]
    session.export_study(ExportOptions(run_id=original, output=tmp_path / "paper.zip",
                                       tracking_uri=sqlite_uri(author / "mlflow.db")))

    # the reader's machine: another folder, a fresh store, no study file and no data of the author's
    out = cli(reader, "import", tmp_path / "paper.zip")
    imported = re.search(r"^study run: (\w{32})", out, re.M)[1]
    assert imported != original
    monkeypatch.chdir(reader)
    session.build_reports(ReportOptions(run_id=imported, tracking_uri=sqlite_uri(reader / "mlflow.db"),
                                        reports_dir=reader / "reports"), announce=lambda study, folder: None)
    for table in TABLES:
        assert (pd.read_csv(reader / "reports" / "dropout" / table)
                .equals(pd.read_csv(author / "reports" / "dropout" / table))), f"{table} differs after the import"

    proc = run_cli(["reproduce", "--study", imported, "--tracking-uri", sqlite_uri(reader / "mlflow.db")], cwd=reader)
    assert proc.returncode == 0, describe_result(proc)
    assert "6 of 6 trials bit-identical; comparison: bit-for-bit" in proc.stdout
    reproduction = re.search(r"reproduction: study run (\w+)", proc.stdout)[1]

    compared = run_cli(["compare", imported, reproduction, "--tracking-uri", sqlite_uri(reader / "mlflow.db")],
                       cwd=reader)
    assert compared.returncode == 0, describe_result(compared)
    assert "levels: 2 compared, 2 identical" in compared.stdout and "claims: 1 of 1 verdicts agree" in compared.stdout
    # and the import against the author's own study run, across the two stores: by its report folder
    against = session.compare_runs(CompareOptions(a=str(author / "reports"), b=imported, out_dir=reader / "vs-author",
                                                  tracking_uri=sqlite_uri(reader / "mlflow.db")))
    assert against.identical and against.passed
