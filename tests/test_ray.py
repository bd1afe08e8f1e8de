"""``--executor ray`` end to end: real `dlbench` subprocesses on a real local Ray cluster (the
machine's cores, 2 in CI), a real SQLite store, and a Ray worker killed mid-trial."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TINY_BASELINE, cli_env, describe_result, run_cli, sqlite_uri, write_plugin, write_study

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

pytest.importorskip("ray", reason="the test extra installs Ray: pip install -e '.[test]'")

STUDY = TINY_BASELINE.replace("[baseline]", '[study]\nname = "onray"\nseeds = 2\n\n[baseline]').replace(
    "epochs = 2", "epochs = 4") + """
[studies.width.levels]
narrow = {}
wide = { architecture = { width = 24 } }
diverges = { optimizer = { name = "sgd", lr = 1e6 } }
broken = { architecture = { width = 17 } }
"""
EPOCHS = 4
KILL_AT = 2  # the killed trials' worker dies at the end of this epoch (checkpoints every epoch)

# An observer plugin. The Ray worker training wide/seed=0 gets SIGKILL once (a worker lost to the
# OOM killer: Ray's retry continues the trial), the one training wide/seed=1 twice (with
# --max-retries 1 its retries are spent: the trial is left KILLED for the next run). The "broken"
# level's trials raise (a bug in a plugin: those trials fail, the others go on).
KILLER = f"""
    import os, signal
    from pathlib import Path
    from dlbench import hookimpl

    KILLS = Path(__file__).with_name("kills-left-seed")

    @hookimpl
    def dlbench_epoch_end(trial, epoch, metrics):
        left = KILLS.with_name(KILLS.name + str(trial.seed))
        if trial.level == "wide" and epoch == {KILL_AT} and left.exists() and int(left.read_text()) > 0:
            left.write_text(str(int(left.read_text()) - 1))
            os.kill(os.getpid(), signal.SIGKILL)
        if trial.level == "broken" and epoch == 1:
            raise RuntimeError("a bug in a plugin")
"""
TRIALS = 8


def all_trial_runs(db: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sqlite_uri(db))
    exp = client.get_experiment_by_name("onray")
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("dlbench.role") == "trial"], client


def trial_runs(db: Path):
    """Each trial's run by trial (its ``dlbench.trial`` tag, ``width/wide/seed=0``: its identity in the
    study run), the newest where a failed trial was run again."""
    runs, client = all_trial_runs(db)
    return {r.data.tags["dlbench.trial"]: r for r in sorted(runs, key=lambda r: r.info.start_time)}, client


def exact(metrics: dict[str, float]) -> dict[str, str]:
    """Metrics compared bit for bit, a diverged trial's NaN loss equal to itself."""
    return {k: repr(v) for k, v in metrics.items()}


def steps(client, run, key: str = "val_accuracy") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture(scope="module")
def ray_runs(tmp_path_factory):
    """The study trained in this process one trial at a time (the reference), then on Ray with
    two workers killed mid-trial (one retried by Ray, one past its retries), then run again."""
    root = tmp_path_factory.mktemp("ray")
    study = write_study(root, STUDY)
    write_plugin(root, "killer", KILLER)
    env = cli_env(autoload=False)

    def run(name: str, *args):
        proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(root / f"{name}.db"), "--reports-dir",
                        root / f"reports-{name}", "--checkpoint-every", "0", "--checkpoint-dir", root / "ckpt", *args],
                       cwd=root, env=env)
        return proc, root / f"{name}.db"

    out = {"root": root, "reference": run("reference", "--jobs", "1")}
    (root / "plugins" / "kills-left-seed0").write_text("1")
    (root / "plugins" / "kills-left-seed1").write_text("2")
    out["killed"] = run("ray", "--executor", "ray", "--max-retries", "1")
    out["rerun"] = run("ray", "--executor", "ray")
    return out


def test_a_killed_ray_worker_is_retried_from_the_checkpoint_with_nothing_logged_twice(ray_runs):
    proc, db = ray_runs["killed"]
    assert proc.returncode == 1, describe_result(proc)  # the broken level's trials failed, one interrupted
    assert "as Ray tasks on a local Ray cluster" in proc.stdout
    assert re.search(r"3 finished \(0 of them already in the store\), 2 diverged, 2 failed, 1 interrupted",
                     proc.stdout)
    assert len(re.findall(r"^\[\d/8\] .*finished \(4 epochs", proc.stdout, re.M)) == 3  # the progress line
    assert "run the same command again to resume" in proc.stderr and "Traceback" not in proc.stderr
    runs, client = trial_runs(db)
    retried = runs["width/wide/seed=0"]
    assert retried.data.tags["dlbench.retries"] == "1"
    assert int(retried.data.tags["dlbench.resumed_from_epoch"]) < KILL_AT  # from its checkpoint, not from scratch
    for key in retried.data.metrics:
        history = steps(client, retried, key)
        assert len(history) == len(set(history)), key
    assert all("dlbench.retries" not in r.data.tags for r in runs.values() if r.data.tags["dlbench.level"] != "wide")


def test_when_the_retries_are_spent_the_trial_is_left_killed_and_the_rerun_resumes_it(ray_runs):
    rerun, db = ray_runs["rerun"]
    assert rerun.returncode == 1, describe_result(rerun)  # the broken trials fail again
    assert re.search(r"4 finished \(3 of them already in the store\), 2 diverged, 2 failed, 0 not run",
                     rerun.stdout)
    assert "width/wide, seed=1  resuming run" in rerun.stdout
    every, _ = all_trial_runs(db)
    assert sum(r.data.tags["dlbench.level"] != "broken" for r in every) == 6  # the resumed trial kept its run
    resumed = trial_runs(db)[0]["width/wide/seed=1"]
    assert resumed.info.status == "FINISHED" and resumed.data.tags["dlbench.previous_status"] == "KILLED"
    assert int(resumed.data.tags["dlbench.resumed_from_epoch"]) < KILL_AT


def test_a_study_on_ray_ends_with_every_trial_once_and_the_same_results(ray_runs):
    _, db = ray_runs["rerun"]
    assert (ray_runs["root"] / "reports-ray" / "width" / "index.md").is_file()
    runs, client = trial_runs(db)
    reference, ref_client = trial_runs(ray_runs["reference"][1])
    assert sorted(runs) == sorted(reference) and len(runs) == TRIALS
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs.values()}) == 1
    for name, run in runs.items():
        assert (run.info.status, run.data.tags["dlbench.status"]) == {
            "diverges": ("FAILED", "diverged"), "broken": ("FAILED", "failed")}.get(
            run.data.tags["dlbench.level"], ("FINISHED", "finished")), name
        # deterministic: bit for bit, the killed and resumed trials too
        assert exact(run.data.metrics) == exact(reference[name].data.metrics), name
        assert steps(client, run) == steps(ref_client, reference[name]), name  # each epoch once
        assert run.data.tags["dlbench.device"] == "cpu" and run.data.tags["dlbench.torch_threads"] == "1"
    assert steps(client, runs["width/wide/seed=1"]) == list(range(EPOCHS + 1))  # 0: before training
    error = Path(client.download_artifacts(runs["width/broken/seed=0"].info.run_id, "error.txt",
                                           str(ray_runs["root"]))).read_text()
    assert "a bug in a plugin" in error


def test_ray_options_are_checked_before_any_work(tmp_path):
    study = write_study(tmp_path, STUDY)
    env = cli_env(autoload=False)
    proc = run_cli(["run", study, "--address", "auto"], cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "--address is an option of --executor ray" in proc.stderr
    proc = run_cli(["run", study, "--executor", "ray", "--resources", "gpu=lots"], cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "'gpu=lots' is not a resource request" in proc.stderr
    proc = run_cli(["run", study, "--executor", "ray", "--device", "cuda:1"], cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "Ray assigns each task its GPU" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "mlflow.db").exists()


def test_without_ray_installed_the_message_says_how_to_install_it(tmp_path):
    shadow = tmp_path / "shadow" / "ray"  # an import of ray that fails, as on a machine without it
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    study = write_study(tmp_path, STUDY)
    env = cli_env({"PYTHONPATH": str(tmp_path / "shadow")}, autoload=False)
    proc = run_cli(["run", study, "--executor", "ray"], cwd=tmp_path, env=env)
    assert proc.returncode == 2, describe_result(proc)
    assert "pip install 'dlbench[ray]'" in proc.stderr and "Traceback" not in proc.stderr
