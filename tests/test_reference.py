"""The published reference results in ``reports/`` still hold.

``reports/<study>/`` holds the report of ``ablation.toml`` as run on a 2-core CPU (README,
"Reference results"). This test runs the whole study file again, exactly as a user would, and fails
when a change flips one of its verdicts, changes which claims are made, or loses a trial. Accuracies
are not compared exactly: another CPU or thread count rounds differently, while verdicts over seeds
must not move. It is the suite's longest test (the 50 trials, about a minute on two cores).
"""

from __future__ import annotations

import pandas as pd

from conftest import REPO, describe_result, run_cli, sqlite_uri

REFERENCE = REPO / "reports"
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
            assert is_ == was, (f"{study}: the verdict on {claim!r} flipped from {was!r} (reports/{study}/claims.csv) "
                                f"to {is_!r}; if the change is intended, regenerate the reference (README, "
                                "\"Reference results\") and say why in the commit")

        published = pd.read_csv(REFERENCE / study / "summary.csv")
        now = pd.read_csv(tmp_path / "reports" / study / "summary.csv")
        assert now["n"].tolist() == published["n"].tolist(), f"{study}: a level lost or gained seeds"
