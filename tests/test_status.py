"""Watching a study: the progress a running study publishes to its study run (``study_progress``),
its ETA (``eta``), and ``dlbench status`` reading the store alone: a finished study, one that runs,
one killed with kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY_BASELINE, cli_env, describe_result, run_cli, sqlite_uri, write_plugin, write_study
from dlbench.eta import duration, eta_seconds, unit_kind
from dlbench.study_progress import PROGRESS_MARK, ProgressPublisher, progress_line, strip_progress

STUDY = '[study]\nname = "watched"\ndescription = "a watched study"\nseeds = 1\n\n' + TINY_BASELINE + """
[studies.width.levels]
narrow = {}
wide = { architecture = { width = 32 } }
wider = { architecture = { width = 48 } }
"""

# every epoch slowed down: a status taken while it runs finds a trial mid-training
SLOW_EPOCHS = """
import time
from dlbench import hookimpl

@hookimpl
def dlbench_epoch_end(trial, epoch, metrics):
    time.sleep(0.15)
"""


# --- the ETA -----------------------------------------------------------------------------------

def test_eta_is_unknown_until_a_unit_of_each_kind_left_has_finished():
    assert eta_seconds({}, Counter(trial=3), workers=2) is None
    assert eta_seconds({"trial": 10.0}, Counter({"trial": 3, "stack of 4": 1}), workers=1) is None


def test_eta_is_the_mean_of_each_kind_times_its_units_left_over_the_workers():
    means = {"trial": 10.0, "stack of 4": 30.0}
    assert eta_seconds(means, Counter({"trial": 3, "stack of 4": 2}), workers=2) == (3 * 10 + 2 * 30) / 2
    assert eta_seconds(means, Counter(trial=0), workers=4) == 0  # nothing left
    assert eta_seconds({"trial": 10.0}, Counter(trial=2), workers=0) == 20  # at least one worker


def test_unit_kinds_and_durations_read_as_people_say_them():
    assert (unit_kind(1), unit_kind(8)) == ("trial", "stack of 8")
    assert [duration(s) for s in (None, 4.6, 192, 7500)] == ["unknown", "5s", "3m12s", "2h05m"]


def _work(*indices):
    return SimpleNamespace(members=tuple(SimpleNamespace(index=i) for i in indices))


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_publisher_times_units_by_kind_and_publishes_at_each_end_and_every_few_seconds():
    published, clock = [], _Clock()
    live = ProgressPublisher({"a": 5}, workers=1, publish=lambda p, line: published.append((p, line)),
                             every_s=5.0, clock=clock)
    alone, stack, later = _work(0), _work(1, 2), _work(3, 4)
    live.planned([alone, stack, later])
    assert published[-1][0]["eta_s"] is None and published[-1][0]["done"] == 0  # nothing measured yet
    live.dlbench_trial_start(alone.members[0], None, None)
    clock.now += 4
    live.dlbench_epoch_end(alone.members[0], 0, {})
    assert len(published) == 1  # 4 s after the last: not yet
    clock.now += 2
    live.dlbench_epoch_end(alone.members[0], 1, {})
    assert len(published) == 2 and published[-1][0]["running"] == 1
    live.ended(alone.members[0], SimpleNamespace(status="finished"))
    assert published[-1][0]["eta_s"] is None  # the stacks have no measured kind yet
    for trial in stack.members:
        live.dlbench_trial_start(trial, None, None)
    clock.now += 20
    live.ended(stack.members[0], SimpleNamespace(status="diverged"))
    live.ended(stack.members[1], SimpleNamespace(status="finished"))
    progress, line = published[-1]
    assert progress["eta_s"] == 20.0  # one stack of 2 left, a stack of 2 took 20 s
    assert (progress["done"], progress["finished"], progress["diverged"], progress["running"]) == (3, 2, 1, 0)
    assert progress["elapsed_s"] == 26.0 and progress["studies"] == {"a": 5}
    assert line.startswith(PROGRESS_MARK) and "3/5 trials done" in line and "ETA 20s" in line


def test_a_unit_claimed_elsewhere_is_no_longer_left():
    published = []
    live = ProgressPublisher({"a": 2}, workers=1, publish=lambda p, line: published.append(p), clock=_Clock())
    first, second = _work(0), _work(1)
    live.planned([first, second])
    live.dlbench_trial_start(first.members[0], None, None)
    live.clock.now += 8
    live.ended(first.members[0], SimpleNamespace(status="finished"))
    assert published[-1]["eta_s"] == 8.0
    live.taken(second, None)  # another process has it
    live.publish_now()
    assert published[-1]["eta_s"] is None  # nothing left here, yet 1 of 2 not done: unknown


def test_trials_found_done_in_the_store_count_as_done_from_the_first_publish():
    published = []
    live = ProgressPublisher({"a": 3}, workers=1, publish=lambda p, line: published.append(p), clock=_Clock())
    found = [(SimpleNamespace(index=i), SimpleNamespace(status=s)) for i, s in enumerate(["finished", "diverged"])]
    live.planned([_work(2)], ended=found)
    assert (published[-1]["done"], published[-1]["finished"], published[-1]["diverged"]) == (2, 1, 1)
    assert published[-1]["eta_s"] is None  # the trial left is a kind never timed


def test_the_progress_line_comes_off_a_description_and_only_it():
    progress = {"total": 4, "done": 1, "finished": 1, "running": 1, "elapsed_s": 5, "eta_s": None, "updated": 0}
    line = progress_line(progress)
    assert strip_progress(f"{line}\n\nabout it\n\n**a**") == "about it\n\n**a**"
    assert strip_progress("about it\n\n**a**") == "about it\n\n**a**"


# --- dlbench status, end to end ----------------------------------------------------------------

def status(args, cwd: Path) -> subprocess.CompletedProcess:
    proc = run_cli(["status", *args], cwd)
    assert proc.returncode == 0, describe_result(proc)
    return proc


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
    write_plugin(tmp_path, "slow", SLOW_EPOCHS)  # about 6 s a trial
    db = new_store(tmp_path)
    args = [study, "--tracking-uri", sqlite_uri(db)]
    run = subprocess.Popen([sys.executable, "-m", "dlbench.cli", "run", *args, "--jobs", "1",
                            "--checkpoint-every", "0"], cwd=tmp_path,
                           env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert run.poll() is None, f"the study ended before a status saw it run:\n{seen}\n{run.stdout.read()}"
            proc = run_cli(["status", *args], tmp_path)
            seen = proc.stdout
            done = re.search(r"progress: (\d+)/4 trials done", seen)
            if proc.returncode == 0 and done and int(done.group(1)) >= 1 and re.search(r"epoch \d+/40  alive", seen):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no status showed a published progress and a trial mid-training:\n{seen}")
        assert ": RUNNING" in seen and "running trials:" in seen and f"host {socket.gethostname()}" in seen, seen
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
        run.stdout.close()

    out = status(args, tmp_path).stdout
    assert ": RUNNING (stale: no process working on it is alive" in out, out
    assert re.search(rf"epoch \d+/40  stale \(process {run.pid} is gone\)", out), out
    counts = re.search(r"width: (\d+) done, (\d+) running, (\d+) left", out)
    assert counts and int(counts.group(1)) >= 1 and int(counts.group(2)) == 1, out
    assert sum(map(int, counts.groups())) == 4, out
    print(seen, out, sep="\n")
