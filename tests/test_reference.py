"""The published reference results in ``docs/reference/`` still hold, and no run writes over them.

``docs/reference/<study>/`` holds the report of ``ablation.toml`` as run on a 2-core CPU (README,
"Reference results"). This test runs the whole study file again, exactly as a user would, and fails
when a change flips one of its verdicts, changes which claims are made, or loses a trial. Accuracies
are not compared exactly: another CPU or thread count rounds differently, while verdicts over seeds
must not move. It is the suite's longest test (the 50 trials, about a minute on two cores).

A run writes ``reports/`` (and ``mlflow.db``, ``mlruns/``, ``data/``, ``.dlbench/``) by default:
none of them holds a tracked file, so the Quickstart leaves ``git status`` clean.
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
# the reports, the MLflow store and its artifacts, the prepared data, the checkpoints
RUN_OUTPUTS = ["reports/", "mlruns/", "mlflow.db", ".dlbench/", "data/"]
STUDIES = ["dropout", "pretraining", "activation_depth"]  # the studies of ablation.toml


def test_rerunning_ablation_toml_gives_the_published_verdicts(tmp_path):
    proc = run_cli(["run", REPO / "ablation.toml", "--tracking-uri", sqlite_uri(tmp_path / "m.db"),
                    "--reports-dir", tmp_path / "reports", "--checkpoint-dir", tmp_path / "checkpoints"],
                   cwd=tmp_path)
    assert proc.returncode == 0, describe_result(proc)
    assert "50 finished" in proc.stdout, describe_result(proc)

    for study in STUDIES:
        published = pd.read_csv(REFERENCE / study / "claims.csv")
        now = pd.read_csv(tmp_path / "reports" / study / "claims.csv")
        assert list(now["claim"]) == list(published["claim"]), f"{study}: the claims changed"
        for claim, was, is_ in zip(now["claim"], published["verdict"], now["verdict"]):
            assert is_ == was, (f"{study}: the verdict on {claim!r} flipped from {was!r} "
                                f"(docs/reference/{study}/claims.csv) "
                                f"to {is_!r}; if the change is intended, regenerate the reference (README, "
                                "\"Reference results\") and say why in the commit")

        published = pd.read_csv(REFERENCE / study / "summary.csv")
        now = pd.read_csv(tmp_path / "reports" / study / "summary.csv")
        assert now["n"].tolist() == published["n"].tolist(), f"{study}: a level lost or gained seeds"


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
                 "docs/reference/dropout/index.html", "docs/reference/dropout/.dlbench-report.json"]:
        assert git("check-ignore", "-q", "--no-index", path).returncode == 0, f"{path} is not ignored by .gitignore"
