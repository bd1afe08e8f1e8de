"""Parallel workers and stacks end to end: real `dlbench` subprocesses and a real SQLite store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TINY_BASELINE, cli_env, describe_result, run_cli, sqlite_uri, write_plugin, write_study

pytestmark = pytest.mark.slow  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

STUDY = TINY_BASELINE.replace("[baseline]", '[study]\nname = "par"\nseeds = 3\n\n[baseline]') + """
[studies.width.levels]
narrow = {}
wide = { architecture = { width = 24 } }
fast = { optimizer = { lr = 0.03 } }
"""


def trial_runs(db: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sqlite_uri(db))
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("dlbench.role") == "trial"], client


def histories(client, run) -> dict[str, list[tuple[int, float]]]:
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
            for k in run.data.metrics}


@pytest.fixture(scope="module")
def parallel(tmp_path_factory):
    """The study run twice: with two workers and stacks, and in one process one trial at a time."""
    root = tmp_path_factory.mktemp("parallel")
    study = write_study(root, STUDY)
    out = {}
    ways = {"workers": ["--jobs", "2", "--stack-size", "8"], "inline": ["--jobs", "1", "--stack-size", "1"]}
    for name, args in ways.items():
        db = root / f"{name}.db"
        proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(db), "--reports-dir", root / f"reports-{name}",
                        *args], cwd=root, env=cli_env(autoload=False))
        assert proc.returncode == 0, describe_result(proc)
        out[name] = (proc, db)
    out["root"] = root
    return out


def test_workers_run_every_trial_exactly_once_under_one_parent(parallel):
    proc, db = parallel["workers"]
    assert "in 2 worker processes" in proc.stdout
    runs, _ = trial_runs(db, "par")
    assert len(runs) == 9 and len({r.data.tags["dlbench.config_hash"] for r in runs}) == 9
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1
    assert re.search(r"9 finished \(0 of them already in the store\), 0 diverged, 0 failed", proc.stdout)


def test_stacked_members_record_how_they_ran(parallel):
    _, db = parallel["workers"]
    runs, client = trial_runs(db, "par")
    by_stack: dict[str, list] = {}
    for r in runs:
        by_stack.setdefault(r.data.tags["dlbench.stack_id"], []).append(r)
    # narrow and fast differ only in the learning rate: one stack of 6; wide: one stack of 3
    assert sorted(len(v) for v in by_stack.values()) == [3, 6]
    for members in by_stack.values():
        assert {r.data.tags["dlbench.stack_size"] for r in members} == {str(len(members))}
        assert sorted(int(r.data.tags["dlbench.stack_member"]) for r in members) == list(range(len(members)))
    assert "stack.json" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


def test_workers_and_stacks_agree_with_one_trial_at_a_time(parallel):
    (_, stacked_db), (_, inline_db) = parallel["workers"], parallel["inline"]
    stacked, sc = trial_runs(stacked_db, "par")
    inline, ic = trial_runs(inline_db, "par")
    alone = {r.data.tags["dlbench.config_hash"]: r for r in inline}
    assert {r.data.tags["dlbench.stack_size"] for r in inline} == {"1"}
    for run in stacked:
        a, b = histories(sc, run), histories(ic, alone[run.data.tags["dlbench.config_hash"]])
        assert a.keys() == b.keys()
        for key in a:
            assert [s for s, _ in a[key]] == [s for s, _ in b[key]], key
            for (_, x), (_, y) in zip(a[key], b[key]):
                assert x == pytest.approx(y, rel=1e-4, abs=1e-4), key


def test_reproduce_of_a_stacked_member_is_exact(parallel):
    _, db = parallel["workers"]
    runs, _ = trial_runs(db, "par")
    member = next(r for r in runs if r.data.tags["dlbench.stack_member"] == "2")
    proc = run_cli(["reproduce", member.info.run_id, "--tracking-uri", sqlite_uri(db)], cwd=parallel["root"],
                   env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert "REPRODUCED" in proc.stdout and "largest difference 0 " in proc.stdout, proc.stdout


def test_dry_run_shows_the_stacks_and_why_a_trial_trains_alone(tmp_path):
    study = write_study(tmp_path, STUDY + 'solo = { schedule = "plain" }\n')
    write_plugin(tmp_path, "plain", """
        from torch.optim.lr_scheduler import LambdaLR
        from dlbench import hookimpl

        def plain(optimizer, total_steps):
            \"\"\"A schedule that never said it stacks.\"\"\"
            return LambdaLR(optimizer, lambda k: 1.0)

        @hookimpl
        def dlbench_register_schedules(register):
            register("plain", plain)
    """)
    proc = run_cli(["run", study, "--dry-run", "--stack-size", "8"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert "S1(6)" in proc.stdout and "S2(3)" in proc.stdout
    assert "2 stacks" in proc.stdout and "3 trials alone" in proc.stdout
    assert "schedule 'plain' [local" in proc.stdout and "does not declare itself stackable" in proc.stdout
    one = run_cli(["run", study, "--dry-run", "--stack-size", "1"], cwd=tmp_path, env=cli_env(autoload=False))
    assert "0 stacks" in one.stdout and "stacking is off" in one.stdout, describe_result(one)
    default = run_cli(["run", study, "--dry-run", "--device", "cpu"], cwd=tmp_path, env=cli_env(autoload=False))
    assert "0 stacks" in default.stdout, describe_result(default)  # on a CPU, workers and no stacks by default


def test_a_worker_that_dies_fails_only_its_trials(tmp_path):
    write_plugin(tmp_path, "killer", """
        import math, multiprocessing, os, signal
        import torch
        from dlbench import hookimpl

        def killer(input_shape, num_classes, activation, *, width: int = 8):
            \"\"\"Kills the worker that builds it when width is 13: a worker lost to the OOM killer.\"\"\"
            if width == 13 and multiprocessing.parent_process() is not None:  # not the preflight in dlbench
                os.kill(os.getpid(), signal.SIGKILL)
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), num_classes))

        @hookimpl
        def dlbench_register_architectures(register):
            register("killer", killer)
    """)
    study = write_study(tmp_path, STUDY.replace("fast = { optimizer = { lr = 0.03 } }",
                                                'doomed = { architecture = { name = "killer", width = 13 } }'))
    db = tmp_path / "m.db"
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(db), "--jobs", "2"], cwd=tmp_path,
                   env=cli_env(autoload=False))
    assert proc.returncode == 1, describe_result(proc)
    runs, client = trial_runs(db, "par")
    status = {}
    for r in runs:
        status.setdefault(r.data.tags["dlbench.level"], set()).add(r.info.status)
    assert status["narrow"] == status["wide"] == {"FINISHED"}
    doomed = [r for r in runs if r.data.tags["dlbench.level"] == "doomed"]
    assert status["doomed"] == {"FAILED"} and len(doomed) >= 1
    text = Path(client.download_artifacts(doomed[0].info.run_id, "error.txt", str(tmp_path))).read_text()
    assert "died" in text and "exit code -9" in text


def test_sigterm_with_workers_kills_the_running_trials_then_the_rerun_completes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    study = write_study(tmp_path, STUDY.replace("epochs = 2", "epochs = 300"))
    db = tmp_path / "m.db"
    args = ["run", str(study), "--tracking-uri", sqlite_uri(db), "--jobs", "2", "--stack-size", "8",
            "--checkpoint-every", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "dlbench.cli", *args], cwd=tmp_path, env=cli_env(autoload=False),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / ".dlbench" / "checkpoints").glob("stack-*.pt")):  # both workers training
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no stack ever checkpointed"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in stderr, f"{stdout}\n{stderr}"
    runs, _ = trial_runs(db, "par")
    assert runs and {r.info.status for r in runs} == {"KILLED"}, [(r.info.run_name, r.info.status) for r in runs]

    short = write_study(tmp_path, STUDY.replace("epochs = 2", "epochs = 300"))  # the same study again
    proc = run_cli(["run", short, "--tracking-uri", sqlite_uri(db), "--jobs", "2", "--stack-size", "8"], cwd=tmp_path,
                   env=cli_env(autoload=False), timeout=900)
    assert proc.returncode == 0, describe_result(proc)
    assert "resuming run" in proc.stdout
    runs, _ = trial_runs(db, "par")
    assert len(runs) == 9 and len({r.data.tags["dlbench.config_hash"] for r in runs}) == 9
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert any(r.data.tags.get("dlbench.resumed_from_epoch") for r in runs)


def test_spawned_workers_as_on_a_gpu(tmp_path):
    """On a GPU the workers are spawned, not forked: the same study through that start-up path."""
    study = write_study(tmp_path, STUDY)
    db = tmp_path / "m.db"
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(db), "--jobs", "2", "--stack-size", "4"],
                   cwd=tmp_path, env=cli_env({"DLBENCH_WORKER_START": "spawn"}, autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    runs, _ = trial_runs(db, "par")
    assert len(runs) == 9 and {r.info.status for r in runs} == {"FINISHED"}
    # narrow and fast (6 members, at most 4 a stack: 3 + 3) and wide (3)
    assert {r.data.tags["dlbench.stack_size"] for r in runs} == {"3"}
    assert len({r.data.tags["dlbench.stack_id"] for r in runs}) == 3


def test_devices_and_jobs_for_several_gpus(monkeypatch):
    import torch

    from dlbench.execution import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [str(d) for d in devices.resolve_devices("cuda")] == ["cuda:0", "cuda:1", "cuda:2"]
    assert [str(d) for d in devices.resolve_devices("auto")] == ["cuda:0", "cuda:1", "cuda:2"]
    assert [str(d) for d in devices.resolve_devices("cuda:2")] == ["cuda:2"]
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert devices.default_jobs(torch.device("cuda", 0), units=100, gpus=3) == 6  # two per GPU
    assert devices.default_jobs(torch.device("cuda", 0), units=100) == 2  # --device cuda:N: one GPU
    assert devices.default_jobs(torch.device("cuda", 0), units=4, gpus=3) == 4  # never more than the work
    assert devices.default_jobs(torch.device("cpu"), units=100) == 16  # one per core
