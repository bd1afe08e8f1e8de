"""Watching a study from anywhere: ``dlbench status`` reading the store alone, on a finished study,
one that runs (in a SQLite store, then on an ``mlflow server``), one killed with kill -9, one
stopped with Ctrl-C, and ``--watch``. The progress a running study publishes, its ETA and its
terminal view are tested in test_progress.py."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import (TINY_BASELINE, cli_env, ctrl_c_enabled, describe_result, run_cli, sqlite_uri, write_plugin,
                      write_study)

STUDY = '[study]\nname = "watched"\ndescription = "a watched study"\nseeds = 1\n\n' + TINY_BASELINE + """
[studies.width.levels]
narrow = {}
wide = { architecture = { width = 32 } }
wider = { architecture = { width = 48 } }
"""

# the first trial a process trains ends soon (a progress published with one done), the next ones
# take half a second an epoch: a status (seconds on a busy machine) finds one of them mid-training,
# and the test stops the run then (Ctrl-C, kill -9)
SLOW_AFTER_THE_FIRST = """
import time
from dlbench import hookimpl

trained = set()

@hookimpl
def dlbench_epoch_end(trial, epoch, metrics):
    trained.add(trial.index)
    if len(trained) > 1:
        time.sleep(0.5)
"""


# --- dlbench status, end to end ----------------------------------------------------------------

def status(args, cwd: Path) -> subprocess.CompletedProcess:
    proc = run_cli(["status", *args], cwd)
    assert proc.returncode == 0, describe_result(proc)
    return proc


def status_mid_training(run: subprocess.Popen, args: list, cwd: Path, epochs: int) -> str:
    """Poll `dlbench status` while ``run`` trains until it shows a published progress with a trial
    done and a trial mid-training (of ``epochs``); that status's output."""
    polls, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        assert run.poll() is None, f"the study ended before a status saw it run:\n{''.join(polls)}\n{run.communicate()}"
        proc = run_cli(["status", *args], cwd)
        polls.append(f"--- exit {proc.returncode}\n{proc.stdout}{proc.stderr[-1000:]}")
        done = re.search(r"progress: (\d+)/4 trials done", proc.stdout)
        if proc.returncode == 0 and done and int(done.group(1)) >= 1 and re.search(rf"epoch \d+/{epochs}  alive",
                                                                                    proc.stdout):
            return proc.stdout
        time.sleep(0.2)
    pytest.fail(f"no status showed a published progress and a trial mid-training:\n{''.join(polls)}")


def study_run(db: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sqlite_uri(db))
    experiment = client.get_experiment_by_name("watched")
    return client.search_runs([experiment.experiment_id], "tags.`dlbench.role` = 'study'")[0]


@pytest.mark.slow
def test_status_of_a_finished_study_and_what_it_published(tmp_path, new_store):
    study, db = write_study(tmp_path, STUDY), new_store(tmp_path)
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(db), "--jobs", "1"], tmp_path)
    assert proc.returncode == 0, describe_result(proc)
    # piped, its terminal output is plain lines: a line per trial, the summary, no control character
    assert "\x1b" not in proc.stdout + proc.stderr and "\r" not in proc.stdout, proc.stdout
    assert len(re.findall(r"^\[\d/3\] width/\w+, seed=0  finished \(2 epochs", proc.stdout, re.M)) == 3, proc.stdout
    assert proc.stdout.rstrip().splitlines()[-2].startswith("3 finished"), proc.stdout

    out = status([study, "--tracking-uri", sqlite_uri(db)], tmp_path).stdout
    assert ": FINISHED" in out and "stale" not in out, out
    assert "width: 3 done, 0 running, 0 left (0 diverged, 0 failed)" in out, out
    assert "progress: 3/3 trials done (3 finished" in out and "ETA 0s" in out, out

    run = study_run(db)
    progress = json.loads(run.data.tags["dlbench.progress"])
    assert (progress["total"], progress["done"], progress["finished"], progress["eta_s"]) == (3, 3, 3, 0.0)
    assert progress["studies"] == {"width": 3} and progress["updated"] <= time.time()
    note = run.data.tags["mlflow.note.content"]
    first, _, rest = note.partition("\n\n")
    assert first.startswith("**Progress**: 3/3 trials done"), note
    assert rest.startswith("a watched study") and "| narrow |" in rest, note  # the description kept below it

    by_id = status(["--run-id", run.info.run_id, "--tracking-uri", sqlite_uri(db)], tmp_path).stdout
    assert f"study run {run.info.run_id} (watched)" in by_id and "width: 3 done, 0 running, 0 left" in by_id, by_id


@pytest.mark.slow
def test_status_says_when_nothing_matches(tmp_path, new_store):
    missing = run_cli(["status", "--tracking-uri", sqlite_uri(tmp_path / "none.db")], tmp_path)
    assert missing.returncode == 2 and "no MLflow tracking store" in missing.stderr, describe_result(missing)
    assert "Traceback" not in missing.stderr and not (tmp_path / "none.db").exists()
    db = new_store(tmp_path)
    empty = run_cli(["status", "--run-id", "0123abcd", "--tracking-uri", sqlite_uri(db)], tmp_path)
    assert empty.returncode == 2 and "--run-id 0123abcd: no such run" in empty.stderr, describe_result(empty)


@pytest.mark.slow
def test_status_while_a_study_runs_then_after_it_is_killed(tmp_path, new_store):
    study = write_study(tmp_path, STUDY.replace("epochs = 2", "epochs = 40") + "widest = { architecture = { width = 64 } }\n")
    write_plugin(tmp_path, "slow", SLOW_AFTER_THE_FIRST)  # about 1 s for the first trial, 20 s for each next one
    db = new_store(tmp_path)
    args = [study, "--tracking-uri", sqlite_uri(db)]
    run = subprocess.Popen([sys.executable, "-m", "dlbench.cli", "run", *args, "--jobs", "1",
                            "--checkpoint-every", "0"], cwd=tmp_path,
                           env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = status_mid_training(run, args, tmp_path, epochs=40)
        assert ": RUNNING" in seen and "running trials:" in seen and f"host {socket.gethostname()}" in seen, seen
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
        run.stdout.close()

    out = status(args, tmp_path).stdout
    assert ": RUNNING (stale: no process working on it is alive" in out, out
    shown = re.search(rf"epoch (\d+)/40  stale \(process {run.pid} is gone\)", out)
    assert shown, out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sqlite_uri(db))
    (left,) = [r for r in client.search_runs([study_run(db).info.experiment_id]) if r.info.status == "RUNNING"
               and r.data.tags.get("dlbench.role") != "study"]
    # the epochs it trained: the last step of its epoch metrics (step 0 is the model before training)
    assert int(shown.group(1)) == client.get_metric_history(left.info.run_id, "train_loss")[-1].step, out
    counts = re.search(r"width: (\d+) done, (\d+) running, (\d+) left", out)
    assert counts and int(counts.group(1)) >= 1 and int(counts.group(2)) == 1, out
    assert sum(map(int, counts.groups())) == 4, out
    print(seen, out, sep="\n")


def _lines_of(pipe) -> queue.Queue:
    """The lines of ``pipe`` as they come (read by a daemon thread; None at its end), so a test can
    wait for one with a timeout."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in pipe:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.slow
def test_status_of_a_study_running_on_an_mlflow_server_after_ctrl_c_and_watched(tmp_path, mlflow_server):
    study = write_study(tmp_path, STUDY.replace("epochs = 2", "epochs = 30") + "widest = { architecture = { width = 64 } }\n")
    write_plugin(tmp_path, "slow", SLOW_AFTER_THE_FIRST)  # about 2 s for the first trial, 15 s for each next one
    args = [study, "--tracking-uri", mlflow_server.uri]
    run = subprocess.Popen([sys.executable, "-m", "dlbench.cli", "run", *args, "--jobs", "1",
                            "--checkpoint-every", "0"], cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_enabled)
    try:
        seen = status_mid_training(run, args, tmp_path, epochs=30)
        assert f"in {mlflow_server.uri}: RUNNING\n" in seen, seen  # and not stale: the run's process lives
        counts = re.search(r"width: (\d+) done, 1 running, (\d+) left \(0 diverged, 0 failed\)", seen)
        assert counts and int(counts.group(1)) >= 1 and int(counts.group(1)) + 1 + int(counts.group(2)) == 4, seen
        assert re.search(rf"running trials:\n  width/\w+, seed=0  host {re.escape(socket.gethostname())}  "
                         r"epoch \d+/30  alive\n", seen), seen

        run.send_signal(signal.SIGINT)  # Ctrl-C: the run ends cleanly, its runs closed as KILLED
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130 and "Interrupted" in err and "Traceback" not in err, f"{out}\n{err}"
    final = status(args, tmp_path).stdout
    assert f"in {mlflow_server.uri}: KILLED\n" in final and "stale" not in final, final
    counts = re.search(r"width: (\d+) done, 0 running, (\d+) left", final)
    assert counts and int(counts.group(1)) >= 1 and int(counts.group(1)) + int(counts.group(2)) == 4, final
    assert "running trials:" not in final, final

    # --watch into a pipe: redrawn (each draw flushed), no screen-clearing codes, Ctrl-C exits 0 quietly
    env = cli_env()
    del env["PYTHONUNBUFFERED"]  # as a user's shell has it: a pipe's stdout is block-buffered
    watch = subprocess.Popen([sys.executable, "-m", "dlbench.cli", "status", *map(str, args), "--watch", "0.5"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=ctrl_c_enabled)
    try:
        lines, drawn, deadline = _lines_of(watch.stdout), [], time.monotonic() + 60
        while sum(line == "(every 0.5s; Ctrl-C to stop)\n" for line in drawn) < 2:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                pytest.fail(f"--watch drew less than twice in 60 s (not flushed?):\n{''.join(drawn)}")
            assert line is not None, f"--watch ended:\n{''.join(drawn)}\n{watch.stderr.read()}"
            drawn.append(line)
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=10)
        err = watch.stderr.read()
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    shown = "".join(drawn)
    assert watch.returncode == 0 and "Traceback" not in err and not err.strip(), f"exit {watch.returncode}\n{err}"
    assert shown.count(f"in {mlflow_server.uri}: KILLED\n") == 2 and "\x1b" not in shown, shown
