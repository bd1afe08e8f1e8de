"""The published reference results in ``docs/reference/`` still hold, and no run writes over them.

``docs/reference/<study>/`` holds the report of ``ablation.toml`` as run on a 2-core CPU (README,
"Reference results"). This test runs the whole study file again, exactly as a user would, and
compares the run with the reference by ``dlbench compare docs/reference <the run's reports>``, as
the README tells a user to: it fails when a change flips one of its verdicts, changes which claims
are made, or loses a trial (``--gate claims``). Whether each level's accuracy is the same is
compared too and said (on this project's machine, bit for bit), but not required: another CPU or
thread count rounds differently. It is the suite's longest test (the 50 trials, about a minute on
two cores).

A run writes ``reports/`` (and ``mlflow.db``, ``mlruns/``, ``data/``, ``.dlbench/``) by default,
``dlbench compare`` writes ``comparison/``: none of them holds a tracked file, so the Quickstart
leaves ``git status`` clean.
"""

from __future__ import annotations

import shutil
import subprocess

import pandas as pd
import pytest

from conftest import REPO, describe_result, run_cli, sqlite_uri

pytestmark = pytest.mark.slow  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

REFERENCE = REPO / "docs" / "reference"
# what a documented command writes in the working directory when no option puts it elsewhere:
# the reports, the MLflow store and its artifacts, the prepared data, the checkpoints, a comparison
RUN_OUTPUTS = ["reports/", "mlruns/", "mlflow.db", ".dlbench/", "data/", "comparison/"]
STUDIES = ["dropout", "pretraining", "activation_depth"]  # the studies of ablation.toml


def test_rerunning_ablation_toml_gives_the_published_verdicts(tmp_path):
    uri = sqlite_uri(tmp_path / "m.db")
    proc = run_cli(["run", REPO / "ablation.toml", "--tracking-uri", uri, "--reports-dir", tmp_path / "reports",
                    "--checkpoint-dir", tmp_path / "checkpoints"], cwd=tmp_path)
    assert proc.returncode == 0, describe_result(proc)
    assert "50 finished" in proc.stdout, describe_result(proc)

    compared = run_cli(["compare", REFERENCE, tmp_path / "reports", "--gate", "claims", "--tracking-uri", uri],
                       cwd=tmp_path)
    assert compared.returncode == 0, (
        "the run does not give the published verdicts (docs/reference); if the change is intended, regenerate "
        "the reference (README, \"Reference results\") and say why in the commit\n" + describe_result(compared))
    claims = pd.read_csv(tmp_path / "comparison" / "claims.csv")
    assert set(claims["study"]) == set(STUDIES) and claims["agree"].all() and len(claims) == 3
    levels = pd.read_csv(tmp_path / "comparison" / "levels.csv")
    assert len(levels) == 14 and (levels["n_a"] == levels["n_b"]).all()
    print(compared.stdout)  # whether each level is the same here: identical, equivalent or not (pytest -s)


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_no_tracked_file_lies_where_a_run_writes_by_default():
    tracked = git("ls-files", "-z")
    assert tracked.returncode == 0, tracked.stderr
    files = [f for f in tracked.stdout.split("\0") if f]
    assert "docs/reference/dropout/index.md" in files  # the reference is where runs do not write
    inside = [f for f in files if any(f == out or f.startswith(out) for out in RUN_OUTPUTS)]
    assert not inside, f"tracked files where `dlbench run ablation.toml` writes (it would modify them): {inside[:5]}"
    # and what a run writes there is ignored, so `git status` stays clean after the Quickstart
    for path in ["reports/dropout/index.md", "reports/dropout/.dlbench-report.json", "mlflow.db",
                 "mlruns/1/meta.yaml", ".dlbench/checkpoints/x.pt", "data/mnist1d/x.npy",
                 "docs/reference/dropout/index.html", "docs/reference/dropout/.dlbench-report.json",
                 "comparison/index.md"]:
        assert git("check-ignore", "-q", "--no-index", path).returncode == 0, f"{path} is not ignored by .gitignore"
