"""One complete set of runs per study, whatever happened.

A study file whose studies share trials (a level of one study resolves to the same configuration
as a level of another, and one study has two identical levels) is run four ways: uninterrupted;
killed with SIGKILL at several points and run again; by two processes at once; and after an
earlier study run of the experiment. Each way must end with the same store: under one study run,
exactly one run of every (study, level, seed), labelled as its own study labels it, with the same
final metrics, and reports with the same verdicts. Real ``dlbench`` subprocesses, real SQLite stores.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (CLI_TIMEOUT, TINY_BASELINE, cli_env, describe_result, run_cli, sqlite_uri, write_plugin,
                      write_study)

pytestmark = pytest.mark.slow  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

# 10 trials, 6 trainings: a/same = a/base (one study, two identical levels), b/narrow = a/base
# (another study); the trials of each pair are recorded from one training.
SHARING = TINY_BASELINE.replace("epochs = 2", "epochs = 3") + """
[study]
name = "sharing"
seeds = 2

[studies.a]
reference = "base"
claims = [{ level = "wide", beats = "base" }]

[studies.a.levels]
base = {}
wide = { architecture = { width = 48 } }
same = { optimizer = { lr = 0.01 } }

[studies.b.levels]
narrow = {}
deep = { architecture = { depth = 2 } }
"""
TRIALS = {f"{study}/{level}/seed={seed}" for study, levels in (("a", ("base", "wide", "same")),
                                                                 ("b", ("narrow", "deep"))) for level in levels
          for seed in (0, 1)}
TWINS = {"a/same/seed=0": "a/base/seed=0", "a/same/seed=1": "a/base/seed=1",
         "b/narrow/seed=0": "a/base/seed=0", "b/narrow/seed=1": "a/base/seed=1"}
LINE = re.compile(r"^\[\d+/10\] ", re.M)


def store_of(db: Path) -> dict:
    """The study runs of the store and, for each, its trial runs by trial (the ``dlbench.trial`` tag,
    ``study/level/seed=n``: a list, more than one would be a duplicate)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sqlite_uri(db))
    exp = client.get_experiment_by_name("sharing")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("dlbench.role") == "study"]
    by_parent = {p.info.run_id: {} for p in parents}
    for run in runs:
        if run.data.tags.get("dlbench.role") == "trial":
            by_parent[run.data.tags["mlflow.parentRunId"]].setdefault(run.data.tags["dlbench.trial"], []).append(run)
    return {"parents": parents, "trials": by_parent, "all": runs}


def one_complete_set(store: dict) -> dict:
    """The single study run's trials, checked: each (study, level, seed) once, FINISHED, with its
    own study's labels, the shared ones recorded from their first's run."""
    assert len(store["parents"]) == 1, [p.info.run_name for p in store["parents"]]
    (trials,) = store["trials"].values()
    assert set(trials) == TRIALS
    assert {name: len(runs) for name, runs in trials.items() if len(runs) > 1} == {}
    runs = {name: runs[0] for name, runs in trials.items()}
    for name, run in runs.items():
        study, level, seed = name.split("/")
        tags = run.data.tags
        assert run.info.status == "FINISHED", name
        assert run.info.run_name == f"{level}, {seed}", name  # the run named by its level and seed
        assert (tags["dlbench.study"], tags["dlbench.level"], f"seed={tags['dlbench.seed']}") == (study, level, seed)
        assert run.data.params["study"] == study and run.data.params["level"] == level
        if name in TWINS:
            assert tags["dlbench.same_as"] == runs[TWINS[name]].info.run_id, name
            assert run.data.metrics == runs[TWINS[name]].data.metrics, name
        else:
            assert "dlbench.same_as" not in tags, name
    return runs


def verdicts(reports: Path) -> dict:
    with open(reports / "a" / "claims.csv", newline="") as f:
        claims = [(row["claim"], row["verdict"]) for row in csv.DictReader(f)]
    counts = {}
    for study in ("a", "b"):
        with open(reports / study / "summary.csv", newline="") as f:
            counts[study] = [int(row["n"]) for row in csv.DictReader(f)]
    return {"claims": claims, "n": counts}


def run(project: Path, db: Path, *more, jobs: str = "1") -> subprocess.CompletedProcess:
    return run_cli(["run", project / "study.toml", "--tracking-uri", sqlite_uri(db), "--device", "cpu",
                    "--jobs", jobs, "--reports-dir", project / "reports", "--checkpoint-dir", project / "ckpt", *more],
                   cwd=project, env=cli_env(autoload=False))


def project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_study(root, SHARING)
    return root


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = project(tmp_path_factory.mktemp("uninterrupted"))
    proc = run(root, root / "m.db")
    assert proc.returncode == 0, describe_result(proc)
    return {"root": root, "proc": proc, "runs": one_complete_set(store_of(root / "m.db")),
            "verdicts": verdicts(root / "reports")}


def test_identical_trials_train_once_and_are_recorded_under_each_study(uninterrupted):
    out = uninterrupted["proc"].stdout
    assert "10 finished (0 of them already in the store, 4 recorded from an identical trial of this file)" in out
    trained = [line for line in out.splitlines() if re.search(r"finished \(\d+ epochs", line)]
    assert len(trained) == 6, out  # 10 trials, 6 trainings
    assert "b/narrow, seed=0  finished: the same configuration and seed as a/base, seed=0" in out


def test_the_dry_run_names_the_levels_that_resolve_to_the_same_configuration(uninterrupted):
    proc = run(uninterrupted["root"], uninterrupted["root"] / "dry.db", "--dry-run")
    assert proc.returncode == 0, describe_result(proc)
    assert "a/base = a/same (2 seeds in common)" in proc.stdout
    assert "a/base = b/narrow (2 seeds in common)" in proc.stdout
    assert "6 units of work" in proc.stdout and "4 trials the same as an earlier one" in proc.stdout
    assert not (uninterrupted["root"] / "dry.db").exists()


def test_the_report_of_each_study_counts_its_own_seeds(uninterrupted):
    assert uninterrupted["verdicts"]["n"] == {"a": [2, 2, 2], "b": [2, 2]}
    index = (uninterrupted["root"] / "reports" / "a" / "index.md").read_text(encoding="utf-8")
    assert "did not finish" not in index
    assert "levels 'base' and 'same' resolve to the same configuration" in index
    index = (uninterrupted["root"] / "reports" / "b" / "index.md").read_text(encoding="utf-8")
    assert "level 'narrow' is the same configuration as a/base: its 2 run(s) record those trials' runs" in index


def kill_after(root: Path, db: Path, lines: int, jobs: str) -> str:
    """Start the study and SIGKILL its whole process group once ``lines`` trial lines are out."""
    proc = subprocess.Popen([sys.executable, "-m", "dlbench.cli", "run", root / "study.toml", "--tracking-uri",
                             sqlite_uri(db), "--device", "cpu", "--jobs", jobs, "--reports-dir", root / "reports",
                             "--checkpoint-dir", root / "ckpt"], cwd=root, env=cli_env(autoload=False),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if len(LINE.findall("".join(seen))) >= lines:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=CLI_TIMEOUT)
        if proc.returncode is None or proc.returncode >= 0:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return "".join(seen)


# before the shared training ends, after it (its records being written), and near the end; the
# second with worker processes (the parent process killed with them)
@pytest.mark.parametrize("lines, jobs", [(1, "1"), (4, "2"), (8, "1")])
def test_killed_and_run_again_ends_as_the_uninterrupted_run(tmp_path, uninterrupted, lines, jobs):
    root = project(tmp_path)
    db = root / "m.db"
    before = kill_after(root, db, lines, jobs)
    assert len(LINE.findall(before)) >= lines, before
    proc = run(root, db)
    assert proc.returncode == 0, describe_result(proc)
    assert "10 finished" in proc.stdout, describe_result(proc)
    runs = one_complete_set(store_of(db))
    for name, run_ in runs.items():
        assert run_.data.metrics["test_accuracy"] == uninterrupted["runs"][name].data.metrics["test_accuracy"], name
    assert verdicts(root / "reports") == uninterrupted["verdicts"]
    again = run(root, db)  # a third time: nothing left to do, nothing added
    assert again.returncode == 0 and "10 finished (10 of them already in the store" in again.stdout, again.stdout
    assert len(store_of(db)["all"]) == 11


def test_two_processes_at_once_share_the_trials_and_record_each_once(tmp_path, uninterrupted):
    root = project(tmp_path)
    db = root / "m.db"
    args = [sys.executable, "-m", "dlbench.cli", "run", root / "study.toml", "--tracking-uri", sqlite_uri(db),
            "--device", "cpu", "--jobs", "1", "--checkpoint-dir", root / "ckpt"]
    procs = [subprocess.Popen(args + ["--reports-dir", root / f"reports{i}"], cwd=root, env=cli_env(autoload=False),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=CLI_TIMEOUT) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = one_complete_set(store_of(db))
    for name, run_ in runs.items():
        assert run_.data.metrics["test_accuracy"] == uninterrupted["runs"][name].data.metrics["test_accuracy"], name


def test_an_earlier_study_run_is_reused_on_one_line_and_force_trains_again(tmp_path, uninterrupted):
    root = project(tmp_path)
    db = root / "m.db"
    first = run(root, db)
    assert first.returncode == 0, describe_result(first)
    write_study(root, SHARING.replace("seeds = 2", "seeds = 3"))  # another study run: one more seed
    proc = run(root, db)
    assert proc.returncode == 0, describe_result(proc)
    reused = [line for line in proc.stdout.splitlines() if "reused from earlier study runs" in line]
    assert len(reused) == 1 and reused[0].startswith("6 trials reused"), proc.stdout  # the 6 trained, each once
    assert "15 finished (0 of them already in the store, 6 recorded from an identical trial of this file, " \
           "6 reused from an earlier study run)" in proc.stdout
    store = store_of(db)
    assert len(store["parents"]) == 2
    for trials in store["trials"].values():
        assert all(len(runs) == 1 for runs in trials.values())
    later = max(store["parents"], key=lambda p: p.info.start_time).info.run_id
    trials = {name: runs[0] for name, runs in store["trials"][later].items()}
    assert len(trials) == 15
    assert trials["a/wide/seed=1"].data.tags["dlbench.reused"] == "true"
    assert trials["a/wide/seed=1"].data.metrics == uninterrupted["runs"]["a/wide/seed=1"].data.metrics

    forced = run(root, db, "--force")
    assert forced.returncode == 0, describe_result(forced)
    assert "reused" not in forced.stdout and "15 finished (0 of them already in the store, 6 recorded" in forced.stdout


FAILS_ONCE = '''
import os
from pathlib import Path
from dlbench import hookimpl

@hookimpl
def dlbench_epoch_end(trial, epoch, metrics):
    flag = Path(os.environ["FAIL_FLAG"])
    if trial.study == "b" and trial.levels["b"] == "deep" and flag.exists():
        raise RuntimeError("a transient failure")
'''


def test_a_failed_trial_trains_again_in_one_run(tmp_path):
    root = project(tmp_path)
    write_plugin(root, "fails_once", FAILS_ONCE)
    db = root / "m.db"
    flag = root / "fail"
    flag.touch()
    env = cli_env({"FAIL_FLAG": str(flag)}, autoload=False)
    args = ["run", root / "study.toml", "--tracking-uri", sqlite_uri(db), "--device", "cpu", "--jobs", "1",
            "--reports-dir", root / "reports", "--checkpoint-dir", root / "ckpt"]
    proc = run_cli(args, cwd=root, env=env)
    assert proc.returncode == 1 and "2 failed" in proc.stdout, describe_result(proc)
    flag.unlink()
    proc = run_cli(args, cwd=root, env=env)
    assert proc.returncode == 0, describe_result(proc)
    assert "b/deep, seed=0  trains again: run" in proc.stdout
    one_complete_set(store_of(db))  # the failed runs deleted: one run of each trial


def test_a_record_half_written_when_killed_is_written_again(tmp_path, monkeypatch):
    """The window between a shared trial's training and its records: a process stopped while it
    writes a record leaves a run that is not one; the next run replaces it."""
    import io

    from dlbench.config import read_study_file
    from dlbench.plugins import load_plugins
    from dlbench.runner import run_study
    from dlbench.settings import RunOptions
    from dlbench.study import expand
    from dlbench.tracking.writer import Tracker

    root = project(tmp_path)
    db = root / "m.db"
    real = Tracker.record_same

    def dies_while_writing(self, trial, source, reused=False):
        self.open_run(trial, {"dlbench.same_as": source.run_id})
        raise KeyboardInterrupt

    sf = read_study_file(root / "study.toml")
    plugins = load_plugins(None, autoload=False)
    options = RunOptions(device="cpu", tracking_uri=sqlite_uri(db), reports_dir=root / "reports", jobs=1,
                         checkpoint_dir=root / "ckpt")
    monkeypatch.setattr(Tracker, "record_same", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        run_study(sf, expand(sf, plugins.registry), plugins, options, io.StringIO())
    half = [r for runs in store_of(db)["trials"].values() for rs in runs.values() for r in rs
            if "dlbench.same_as" in r.data.tags]
    assert len(half) == 1 and half[0].info.status == "KILLED"
    monkeypatch.setattr(Tracker, "record_same", real)
    stream = io.StringIO()
    run_study(sf, expand(sf, plugins.registry), plugins, options, stream)
    one_complete_set(store_of(db))
    assert "a/same, seed=0  trains again: run" in stream.getvalue() or "a/same, seed=0  finished: the same" in \
        stream.getvalue()
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sqlite_uri(db))
    deleted = client.search_runs([client.get_experiment_by_name("sharing").experiment_id],
                                 run_view_type=ViewType.DELETED_ONLY)
    assert [r.info.run_id for r in deleted] == [half[0].info.run_id]  # kept among MLflow's deleted runs
