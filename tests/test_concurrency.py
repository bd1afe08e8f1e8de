"""Several ``dlbench run`` processes at once on one store: real subprocesses, a real SQLite file.

Five processes start at the same moment on a store that does not exist yet: four on one study
file (three with ``--jobs 1``, one with ``--jobs 2``, whose workers may start training before
the store exists) and one on another study file of the same experiment. The four share the
work of their study (one parent run, every trial trained once), the fifth keeps to its own.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI_TIMEOUT, TINY_BASELINE, cli_env, describe_result, sqlite_uri, write_study

pytestmark = pytest.mark.slow  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

SHARED = TINY_BASELINE.replace("epochs = 2", "epochs = 1") + """
[study]
name = "together"
seeds = 4

[studies.lr.levels]
low = { optimizer = { lr = 0.003 } }
high = {}
"""
# another file of the same experiment: another study, other configs (width 8)
OTHER = SHARED.replace("width = 16", "width = 8").replace("seeds = 4", "seeds = 2").replace("[studies.lr.levels]",
                                                                                          "[studies.width.levels]")
SHARED_TRIALS, OTHER_TRIALS = 8, 4
JOBS = ["1", "1", "1", "2"]


def start(args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlbench.cli", *map(str, args)], cwd=cwd,
                            env=cli_env(autoload=False), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def together(tmp_path_factory):
    root = tmp_path_factory.mktemp("together")
    (root / "data").mkdir()  # data in place: a process that creates the store may train before it exists
    shared, other = write_study(root, SHARED, "shared.toml"), write_study(root, OTHER, "other.toml")
    db = root / "mlflow.db"
    assert not db.exists()
    common = ["--tracking-uri", sqlite_uri(db), "--device", "cpu"]
    procs = [start(["run", shared, *common, "--jobs", jobs], root) for jobs in JOBS]
    procs.append(start(["run", other, *common, "--jobs", "1"], root))
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=CLI_TIMEOUT)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sqlite_uri(db))
    exp = client.get_experiment_by_name("together")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return {"root": root, "procs": done, "client": client, "runs": runs}


def parents(together) -> dict[str, object]:
    """study file name -> its parent run (exactly one each)."""
    found = [r for r in together["runs"] if r.data.tags.get("dlbench.role") == "study"]
    names = [Path(r.data.tags["dlbench.study_file"]).stem for r in found]
    assert sorted(names) == ["other", "shared"], names
    return dict(zip(names, found))


def children(together, parent) -> list:
    return [r for r in together["runs"] if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_every_process_exits_0(together):
    for proc in together["procs"]:
        assert proc.returncode == 0, describe_result(proc)
        assert "Traceback" not in proc.stderr, describe_result(proc)


def test_one_parent_run_for_the_four_processes_of_one_study(together):
    parent = parents(together)["shared"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dlbench.invocations"] == str(len(JOBS))
    assert not [k for k in parent.data.tags if k.startswith("dlbench.process.")]  # each left; the last ended it
    assert parent.data.tags["dlbench.trials_finished"] == str(SHARED_TRIALS)
    assert parent.data.tags["dlbench.trials_not_run"] == "0"


def test_every_trial_ran_exactly_once_under_that_parent(together):
    parent = parents(together)["shared"]
    trials = [r for r in together["runs"] if r.data.tags.get("dlbench.study") == "lr"]
    hashes = [r.data.tags["dlbench.config_hash"] for r in trials]
    assert len(hashes) == SHARED_TRIALS and len(set(hashes)) == SHARED_TRIALS
    assert all(r.info.status == "FINISHED" for r in trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    # trained once, not only logged once: each trial's end is printed by exactly one process
    shared_out = "".join(p.stdout for p in together["procs"][:len(JOBS)])
    for run in trials:
        # the trial as the terminal names it: its study, then its run name
        name = re.escape(f"{run.data.tags['dlbench.study']}/{run.data.tags['mlflow.runName']}")
        assert len(re.findall(rf"\] {name}  finished \(", shared_out)) == 1, run.data.tags["mlflow.runName"]


def test_each_epoch_logged_once(together):
    client = together["client"]
    for run in [r for r in together["runs"] if r.data.tags.get("dlbench.role") == "trial"]:
        for key in ("train_loss", "test_accuracy"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == [0, 1], (run.data.tags["mlflow.runName"], key, steps)


def test_the_other_study_file_keeps_its_runs_apart(together):
    found = parents(together)
    other = found["other"]
    assert other.info.status == "FINISHED" and other.data.tags["dlbench.invocations"] == "1"
    mine = children(together, other)
    assert len(mine) == OTHER_TRIALS and {r.data.tags["dlbench.study"] for r in mine} == {"width"}
    assert all(r.info.status == "FINISHED" for r in mine)
    assert {r.data.tags["dlbench.study"] for r in children(together, found["shared"])} == {"lr"}


@pytest.mark.parametrize("study, seeds", [("lr", 4), ("width", 2)])
def test_each_report_counts_its_own_trials(together, study, seeds):
    assert any(f"report: reports/{study}/index.md" in p.stdout for p in together["procs"])
    with open(together["root"] / "reports" / study / "summary.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r[study] for r in rows] == ["low", "high"]
    assert [int(r["n"]) for r in rows] == [seeds, seeds]
    assert [int(r["not_run"]) for r in rows] == [0, 0]


def test_two_processes_against_a_tracking_server_train_each_trial_once(tmp_path, mlflow_server, registry):
    """No file to lock: a claim re-reads, opens its run, then looks again; the later of two
    claims made at the same moment withdraws (its run deleted), and so does a second parent."""
    study = write_study(tmp_path, SHARED.replace("seeds = 4", "seeds = 2"), "server.toml")
    args = ["run", study, "--tracking-uri", mlflow_server.uri, "--device", "cpu", "--jobs", "1"]
    procs = [start(args, tmp_path) for _ in range(2)]
    outs = [proc.communicate(timeout=CLI_TIMEOUT) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("dlbench.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("dlbench.role") == "trial"]
    assert len({r.data.tags["dlbench.config_hash"] for r in trials}) == len(trials) == 4
    assert all(r.info.status == "FINISHED" for r in trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.data.tags["dlbench.trials_finished"] == "4"
    printed = "".join(out for out, _ in outs)
    for run in trials:
        # the trial as the terminal names it: its study, then its run name
        name = re.escape(f"{run.data.tags['dlbench.study']}/{run.data.tags['mlflow.runName']}")
        assert len(re.findall(rf"\] {name}  finished \(", printed)) == 1, printed

    # the moment two claims meet (rare above): both runs opened, the later one withdraws
    import torch

    from dlbench.config import read_study_file
    from dlbench.study import Plan, expand
    from dlbench.tracking import Tracker

    sf = read_study_file(study)
    trial = expand(sf, registry)[0]
    first, later = Tracker(mlflow_server.uri, "race"), Tracker(mlflow_server.uri, "race")
    for tracker in (first, later):
        tracker.start_study(sf, Plan([trial]), torch.device("cpu"), resume=True)
        tracker.open_run(trial)
    assert first.parent_id == later.parent_id  # the later one joined
    assert first.rival(trial) is None and later.rival(trial).run_id == first.run_ids[trial.index]
    withdrawn = later.run_ids[trial.index]
    later.withdraw(trial)
    assert client.get_run(withdrawn).info.lifecycle_stage == "deleted"
    assert trial.index not in later.run_ids


@pytest.mark.parametrize("uri, expected", [
    ("sqlite:///mlflow.db", "mlflow.db.lock"),
    ("sqlite:////data/runs/mlflow.db", "/data/runs/mlflow.db.lock"),
    ("file:///data/mlruns", "/data/mlruns.lock"),
    ("mlruns/", "mlruns.lock"),
    ("sqlite://", None),  # in memory: one process
    ("http://127.0.0.1:5000", None),  # a server: no file to lock
    ("postgresql://host/db", None),
])
def test_the_lock_file_sits_beside_a_local_store(uri, expected):
    from dlbench.tracking.lock import lock_path

    assert lock_path(uri) == (Path(expected) if expected else None)
