"""Plugins written before the package was reshaped (issue 24) still load and train.

``tests/data/old_import_paths`` is a site folder holding an installed third-party package (its
``.dist-info`` declares nine modules in the ``dlbench`` entry-point group): the eight example
plugins of docs/plugins.md as they stood before the reshape (commit 8934433), verbatim, importing
from ``dlbench.stacking``, ``dlbench.slots``, ``dlbench.shapes``, ``dlbench.regularizer``,
``dlbench.preprocessing`` and ``dlbench.data``, and an observer importing ``Trial`` from
``dlbench.study`` and ``TrialResult`` from ``dlbench.train`` that reads the trial info as a dict.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, cli_env, describe_result, run_cli, sqlite_uri, write_study

SITE = REPO / "tests" / "data" / "old_import_paths"

STUDY = """
[study]
name = "old-paths"
seeds = 1

[baseline]
dataset = "blobs"
architecture = { name = "wide_and_shallow", width = 16 }
activation = "swish"
initializer = "scaled_normal"
optimizer = { name = "sign_sgd", lr = 0.01 }
schedule = "exponential"
regularizers = [{ name = "elastic_net" }]
preprocessing = ["min_max"]
epochs = 3
batch_size = 16

[studies.old.levels]
plain = {}
sharper = { activation = { name = "swish", beta = 2.0 } }
"""


def test_a_plugin_package_written_against_the_old_import_paths_loads_and_trains(tmp_path):
    log = tmp_path / "observer.jsonl"
    env = cli_env({"PYTHONPATH": str(SITE), "OLD_PATHS_LOG": str(log)})
    listed = run_cli(["plugins", "list"], cwd=tmp_path, env=env)
    assert listed.returncode == 0, describe_result(listed)
    for name in ("swish", "wide_and_shallow", "scaled_normal", "sign_sgd", "exponential", "elastic_net", "min_max",
                 "blobs"):
        assert re.search(rf"^\s+{name}\s+\[entry point", listed.stdout, re.M), (name, listed.stdout)

    study = write_study(tmp_path, STUDY)
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(tmp_path / "m.db"), "--device", "cpu", "--jobs", "1"],
                   cwd=tmp_path, env=env)
    assert proc.returncode == 0, describe_result(proc)
    assert re.search(r"\b2 finished\b.*, 0 diverged, 0 failed, 0 not run", proc.stdout), proc.stdout
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(s["trial"] for s in seen) == ["plain, seed=0", "sharper, seed=0"]  # trial.run_name
    assert {s["device"] for s in seen} == {"cpu"} and all(s["params"] > 0 and s["dataset_hash"] for s in seen)


BEFORE_RESHAPE = "2a2ab9c"  # main before issue 24's reshape

TINY = """
[study]
name = "recorded-before"
seeds = 2

[baseline]
dataset = "digits"
architecture = { name = "mlp", depth = 2, width = 32 }
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9 }
epochs = 3
batch_size = 64

[studies.drop]
reference = "off"
[studies.drop.levels]
off = {}
on = { regularizers = ["dropout"] }
"""


@pytest.mark.slow  # two whole studies and two re-runs
def test_runs_recorded_by_the_dlbench_of_before_the_reshape_reproduce_bit_for_bit(tmp_path):
    """The code of commit 2a2ab9c (git archive) records a study, alone and stacked; this code's
    `dlbench reproduce` re-runs a trial of each and finds every metric value equal."""
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_RESHAPE, "dlbench"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"this clone lacks commit {BEFORE_RESHAPE} (a shallow clone): {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    where = subprocess.run([sys.executable, "-c", "import dlbench; print(dlbench.__file__)"], cwd=tmp_path,
                           env=cli_env({"PYTHONPATH": str(old)}), capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(old / "dlbench" / "__init__.py")  # the old code records
    study = write_study(tmp_path, TINY)
    for name, extra in (("alone", []), ("stacked", ["--stack-size", "4"])):
        uri = sqlite_uri(tmp_path / f"{name}.db")
        recorded = run_cli(["run", study, "--tracking-uri", uri, "--device", "cpu", "--jobs", "1",
                            "--reports-dir", tmp_path / f"r_{name}", *extra], cwd=tmp_path,
                           env=cli_env({"PYTHONPATH": str(old)}))
        assert recorded.returncode == 0, describe_result(recorded)
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("recorded-before").experiment_id],
                                  "tags.`dlbench.role` = 'trial'")
        assert len(runs) == 4
        target = runs[0]
        again = run_cli(["reproduce", target.info.run_id, "--tracking-uri", uri, "--device", "cpu"], cwd=tmp_path)
        assert again.returncode == 0, describe_result(again)
        assert re.search(r"^REPRODUCED: \d+ metric values compared, largest difference 0 ", again.stdout, re.M), \
            again.stdout
