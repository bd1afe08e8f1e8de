"""A team's shared tracking server: dlbench's commands against a real ``mlflow server`` over HTTP.

One server for the module (SQLite behind it, on 127.0.0.1, the artifacts served by the server
from its own folder: ``mlflow-artifacts:/`` URIs), one study trained against it by ``dlbench run
--jobs 2``; then what a teammate does with it: the report attached to the study run and read
back through the server, ``report --run-id``, ``report STUDY_FILE``, ``reproduce`` of a trial and
``ui``, each a real ``dlbench`` subprocess. (A server killed in the middle of a study, and the
re-run that resumes it: tests/test_server.py.)
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY_BASELINE, cli_env, describe_result, run_cli, write_study
from test_server import assert_complete

pytestmark = [pytest.mark.slow, pytest.mark.server]  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

STUDY = TINY_BASELINE + """
[study]
name = "team"
seeds = 3

[studies.dropout]
question = "Does dropout help a small MLP?"

[studies.dropout.levels]
off = {}
on = { regularizers = [{ name = "dropout", p_input = 0.1, p_hidden = 0.2 }] }
"""
TRIALS, EPOCHS = 6, 2
GUARD_S = 120  # a command that hangs (MLflow retrying a dead server for minutes) fails instead


def dlbench(args, root: Path):
    return run_cli(args, cwd=root, env=cli_env(autoload=False), timeout=GUARD_S * 3)


@pytest.fixture(scope="module")
def team(tmp_path_factory, module_mlflow_server):
    """The study trained against the server with two workers, from a folder with no plugins/."""
    root = tmp_path_factory.mktemp("team")
    study = write_study(root, STUDY)
    uri = module_mlflow_server.uri
    proc = dlbench(["run", study, "--tracking-uri", uri, "--device", "cpu", "--jobs", "2"], root)
    assert proc.returncode == 0, describe_result(proc)
    parent = re.search(r"MLflow parent run: ([0-9a-f]{32})", proc.stdout).group(1)
    from mlflow.tracking import MlflowClient

    return SimpleNamespace(root=root, study=study, uri=uri, proc=proc, parent=parent, client=MlflowClient(uri),
                           server=module_mlflow_server)


def trial_runs(team) -> list:
    exp = team.client.get_experiment_by_name("team")
    return team.client.search_runs([exp.experiment_id], "tags.`dlbench.role` = 'trial'", max_results=100)


def test_two_workers_log_every_trial_and_epoch_once_under_one_parent_run(team):
    assert f"{TRIALS} trials on cpu in 2 worker processes" in team.proc.stdout, team.proc.stdout
    assert "Traceback" not in team.proc.stderr, team.proc.stderr
    assert_complete(team.client, "team", TRIALS, EPOCHS)
    # the artifacts went through the server into its folder, none beside the study
    runs = [team.client.get_run(team.parent), *trial_runs(team)]
    assert {r.info.artifact_uri.split(":")[0] for r in runs} == {"mlflow-artifacts"}
    stored = {p.name for p in (team.server.directory / "artifacts").glob("*/*")}
    assert {r.info.run_id for r in runs} <= stored
    assert not (team.root / "mlruns").exists() and not (team.root / "mlartifacts").exists()


def test_the_report_is_attached_to_the_study_run_and_read_back_through_the_server(team, tmp_path):
    listed = {Path(f.path).name for f in team.client.list_artifacts(team.parent, "reports/dropout")}
    assert {"index.md", "index.html", "summary.csv", "test_accuracy.png"} <= listed, listed
    for name in ("index.md", "summary.csv"):
        got = team.client.download_artifacts(team.parent, f"reports/dropout/{name}", str(tmp_path))
        assert Path(got).read_bytes() == (team.root / "reports" / "dropout" / name).read_bytes()
    got = team.client.download_artifacts(team.parent, "study.toml", str(tmp_path))
    assert Path(got).read_text(encoding="utf-8") == team.study.read_text(encoding="utf-8")


@pytest.mark.parametrize("how", ["run-id", "study-file"])
def test_report_rebuilds_the_study_from_the_server(team, how):
    which = ["--run-id", team.parent] if how == "run-id" else [team.study, "--no-attach"]
    proc = dlbench(["report", *which, "--tracking-uri", team.uri, "--reports-dir", how], team.root)
    assert proc.returncode == 0, describe_result(proc)
    assert f"from MLflow study run {team.parent} in {team.uri}" in proc.stdout
    for name in ("summary.csv", "comparisons.csv"):
        assert (team.root / how / "dropout" / name).read_text() == (team.root / "reports" / "dropout" / name).read_text()


def test_reproduce_of_a_trial_is_exact_and_logged_beside_it(team):
    original = next(r for r in trial_runs(team)
                    if r.data.tags["dlbench.study"] == "dropout" and r.info.run_name == "on, seed=1")
    proc = dlbench(["reproduce", original.info.run_id, "--tracking-uri", team.uri, "--device", "cpu"], team.root)
    assert proc.returncode == 0, describe_result(proc)
    assert re.search(r"^REPRODUCED: \d+ metric values compared, largest difference 0 ", proc.stdout, re.M), proc.stdout
    rerun = team.client.get_run(re.search(r"Re-run logged as ([0-9a-f]{32})", proc.stdout).group(1))
    assert rerun.data.tags["dlbench.reproduces"] == original.info.run_id
    assert rerun.data.tags["mlflow.parentRunId"] == team.parent
    assert rerun.info.artifact_uri.startswith("mlflow-artifacts:/")


def test_ui_against_the_server_says_the_server_serves_its_ui(team):
    import requests

    proc = dlbench(["ui", "--tracking-uri", team.uri], team.root)
    assert proc.returncode == 0, describe_result(proc)
    assert f"{team.uri} is an MLflow tracking server: it serves the MLflow UI itself. Open {team.uri}" in proc.stdout
    assert proc.stderr == "", proc.stderr
    page = requests.get(team.uri, timeout=30)  # what the message promises
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_a_server_that_is_not_there_is_said_at_once(tmp_path):
    """ui, report and reproduce (three ways into the store) against an address where nothing listens
    (a port the kernel handed out, then closed), at once: each says so, exit code 2."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    commands = [["ui"], ["report"], ["reproduce", "0" * 32]]
    procs = [subprocess.Popen([sys.executable, "-m", "dlbench.cli", *command, "--tracking-uri", dead], cwd=tmp_path,
                              env=cli_env(autoload=False), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for command in commands]
    for command, proc in zip(commands, procs):
        try:
            out, err = proc.communicate(timeout=GUARD_S)
        finally:
            proc.kill()
        assert proc.returncode == 2, (command, proc.returncode, out, err)
        assert (f"Error: --tracking-uri {dead}: no MLflow tracking server answers there (connection refused). "
                "Start it") in err, (command, err)
        assert "Traceback" not in err
