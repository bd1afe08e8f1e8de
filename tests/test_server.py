"""A real ``mlflow server`` that goes away in the middle of a study (``--tracking-uri http://...``).

The server is killed (SIGKILL) while ``dlbench run`` trains: either it comes back and the study
finishes in one go, or it stays away past ``--tracking-timeout`` and dlbench stops, to be resumed
by the same command once the server is back. Either way every trial ends FINISHED exactly once
under one parent run, with one value per epoch of each metric: none lost, none twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_BASELINE, cli_env, describe_result, run_cli, write_study

pytestmark = [pytest.mark.slow, pytest.mark.server]  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

EPOCHS = 12
STUDY = TINY_BASELINE.replace("epochs = 2", f"epochs = {EPOCHS}") + """
[study]
name = "outage"
seeds = 3

[studies.lr.levels]
slow = { optimizer = { name = "adam", lr = 0.003 } }
fast = {}
"""
TRIALS = 6
LONG_EPOCHS = 60  # the "stays away" study: a trial lasts a couple of seconds, the kill lands inside it
LONG_STUDY = TINY_BASELINE.replace("epochs = 2", f"epochs = {LONG_EPOCHS}") + """
[study]
name = "long-outage"
seeds = 2

[studies.s.levels]
only = {}
"""


def start_study(root: Path, study: Path, uri: str, *extra: str) -> subprocess.Popen:
    """``dlbench run`` in the background, its output in root/out.txt and root/err.txt."""
    cmd = [sys.executable, "-m", "dlbench.cli", "run", str(study), "--tracking-uri", uri, "--device", "cpu",
           "--jobs", "1", *extra]
    with open(root / "out.txt", "w") as out, open(root / "err.txt", "w") as err:
        return subprocess.Popen(cmd, cwd=root, env=cli_env(autoload=False), stdout=out, stderr=err, text=True,
                                start_new_session=True)


def finish(proc: subprocess.Popen, root: Path, timeout: float = 300) -> tuple[int, str, str]:
    """Wait for the study process (killed if it hangs); its exit code, stdout and stderr."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, (root / "out.txt").read_text(), (root / "err.txt").read_text()


def wait_for(condition, proc: subprocess.Popen, root: Path, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the study ended before {what}:\n{finish(proc, root)}"
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def first_metrics_logged(client, experiment: str) -> bool:
    """Whether some trial run of ``experiment`` holds its epoch-0 test accuracy."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return False
    runs = client.search_runs([exp.experiment_id], "tags.`dlbench.role` = 'trial'")
    return any(client.get_metric_history(r.info.run_id, "test_accuracy") for r in runs)


def assert_complete(client, experiment: str, trials: int, epochs: int) -> None:
    """One FINISHED parent; every trial FINISHED once under it; each epoch metric logged once for
    each epoch 0..epochs, and the same diagnostic steps, each once, in every trial."""
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    parents = [r for r in runs if r.data.tags.get("dlbench.role") == "study"]
    children = [r for r in runs if r.data.tags.get("dlbench.role") == "trial"]
    assert [p.info.status for p in parents] == ["FINISHED"], [(p.info.run_id, p.info.status) for p in parents]
    assert len(children) == trials, [(r.info.run_name, r.info.status) for r in children]
    assert len({r.data.tags["dlbench.config_hash"] for r in children}) == trials
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    diagnostic_steps = set()
    for run in children:
        keys = list(run.data.metrics)
        assert "test_accuracy" in keys and any(k.startswith("diag per step/") for k in keys), keys
        for key in keys:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), f"{run.info.run_name} {key}: a step logged twice: {sorted(steps)}"
            if key.startswith("diag per step/"):
                diagnostic_steps.add(frozenset(steps))
            else:
                assert sorted(steps) == list(range(epochs + 1)), f"{run.info.run_name} {key}: {sorted(steps)}"
    assert len(diagnostic_steps) == 1, "the trials' diagnostics differ in their steps: some were lost"


def test_server_killed_and_restarted_mid_study(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    study = write_study(tmp_path, STUDY)
    client = MlflowClient(mlflow_server.uri)
    proc = start_study(tmp_path, study, mlflow_server.uri)
    try:
        wait_for(lambda: first_metrics_logged(client, "outage"), proc, tmp_path, "the first metrics reached the server")
        exp = client.get_experiment_by_name("outage")
        ended = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
        mlflow_server.kill()
        time.sleep(1)  # away for this and the restart (seconds): dlbench retries meanwhile
        mlflow_server.start()  # the same port, the same store
    finally:
        code, out, err = finish(proc, tmp_path)
    assert code == 0, f"exit {code}\n{out}\n{err}"
    assert len(ended) < TRIALS, "the study ended before the server was killed: nothing was tested"
    assert "Traceback" not in err, err
    assert f"tracking server {mlflow_server.uri} unreachable since" in err, err
    assert f"tracking server {mlflow_server.uri} reachable again" in err, err
    assert_complete(client, "outage", TRIALS, EPOCHS)


def test_server_away_past_the_timeout_stops_cleanly_and_the_rerun_resumes(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    study = write_study(tmp_path, LONG_STUDY)
    checkpoints = tmp_path / "ckpt"
    # a checkpoint at each epoch end (its metrics stored first): the kill lands in a trial that has one
    args = ["--checkpoint-dir", str(checkpoints), "--checkpoint-every", "0", "--tracking-timeout", "1"]
    proc = start_study(tmp_path, study, mlflow_server.uri, *args)
    try:
        wait_for(lambda: any(checkpoints.glob("*.pt")), proc, tmp_path, "the first checkpoint")
        mlflow_server.kill()
        code, out, err = finish(proc, tmp_path, timeout=120)
    finally:
        if proc.poll() is None:
            finish(proc, tmp_path)
    assert code == 75, f"exit {code}\n{out}\n{err}"
    assert "Traceback" not in err, err
    assert f"tracking server {mlflow_server.uri} unreachable (" in err, err
    assert "for more than --tracking-timeout 1 s: dlbench stopped" in err, err
    assert "run the same `dlbench run` command" in err, err
    assert list(checkpoints.glob("*.pt")), "the checkpoint of the interrupted trial was not kept"

    mlflow_server.start()
    again = run_cli(["run", study, "--tracking-uri", mlflow_server.uri, "--device", "cpu", "--jobs", "1", *args],
                    cwd=tmp_path, env=cli_env(autoload=False))
    assert again.returncode == 0, describe_result(again)
    assert "resuming run" in again.stdout, again.stdout
    assert_complete(MlflowClient(mlflow_server.uri), "long-outage", 2, LONG_EPOCHS)


def test_a_signal_during_a_local_store_call_waits_for_the_call_even_with_other_threads():
    """SIGTERM arriving while a SQLite write is in hand is handled once the write returns, not
    inside it (a write cut in the middle leaves the database locked for the cleanup). With other
    threads alive, as mlflow's and the worker pipes' are, the kernel may deliver the signal to any
    of them: deferring must not depend on which thread receives it."""
    import threading

    from dlbench.tracking.resilient import signals_deferred

    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    before = signal.signal(signal.SIGTERM, _raise_interrupt)
    inside = []
    try:
        try:
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(20):
                    time.sleep(0.005)  # where an undeferred handler would run
                inside.append("the call finished")
        except KeyboardInterrupt:
            inside.append("interrupted after")
        assert inside == ["the call finished", "interrupted after"]
        assert signal.getsignal(signal.SIGTERM) is _raise_interrupt  # the handler is back
    finally:
        signal.signal(signal.SIGTERM, before)
        stop.set()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
