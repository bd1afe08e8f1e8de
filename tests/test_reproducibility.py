"""Reproducibility end to end: DVC-tracked data, resume after kill -9, `dlbench reproduce`,
failure isolation. Real subprocesses, real SQLite MLflow stores, a real DVC repository.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BASELINE, cli_env, describe_result, run_cli, sqlite_uri, write_plugin, write_study

pytestmark = pytest.mark.slow  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

# digits with its default options is read from data/digits when prepared: the data under DVC
DIGITS_STUDY = """\
[study]
name = "repro"
seeds = [0]

[baseline]
dataset = "digits"
architecture = { name = "mlp", width = 16, depth = 1 }
optimizer = { name = "adam", lr = 0.01 }
epochs = 2
batch_size = 64

[studies.one.levels]
base = {}
"""

# an observer that slows every epoch down, so a kill lands in the middle of a trial
SLOW_OBSERVER = """
import time
from dlbench import hookimpl

@hookimpl
def dlbench_epoch_end(trial, epoch, metrics):
    time.sleep(0.15)
"""


def client(db: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(sqlite_uri(db))


def trial_runs(db: Path, experiment: str):
    c = client(db)
    exp = c.get_experiment_by_name(experiment)
    return [r for r in c.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("dlbench.role") == "trial"]


def histories(db: Path, run) -> dict[str, list[tuple[int, float]]]:
    c = client(db)
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}


def run_id_of_only_trial(db: Path, experiment: str) -> str:
    runs = trial_runs(db, experiment)
    assert len(runs) == 1
    return runs[0].info.run_id


def start_cli(args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlbench.cli", *map(str, args)], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """kill -9 ``proc`` as soon as ``ready()`` holds (polled), failing if it ends first."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the study ended before it could be killed:\n{proc.stdout.read()}"
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return
            time.sleep(0.05)
        pytest.fail("the kill condition never held")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


# -- data under DVC -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A git + DVC project with digits prepared in data/ and tracked by data.dvc."""
    root = tmp_path_factory.mktemp("project")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    proc = run_cli(["data", "prepare", "--dataset", "digits"], cwd=root)
    assert proc.returncode == 0, describe_result(proc)
    return root


def test_prepare_writes_documented_format_tracked_by_dvc(prepared):
    folder = prepared / "data" / "digits"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["name"] == "digits" and meta["num_classes"] == 10 and len(meta["sha256"]) == 64
    x = np.load(folder / "x_train.npy")
    assert x.shape[0] == meta["shapes"]["x_train"][0] and x.dtype == np.float32
    assert (prepared / ".dvc").is_dir()
    pointer = (prepared / "data.dvc").read_text()
    assert "md5:" in pointer and "path: data" in pointer
    assert "/data" in (prepared / ".gitignore").read_text()  # git never sees the data itself
    proc = run_cli(["data", "verify"], cwd=prepared)
    assert proc.returncode == 0 and "matches" in proc.stdout, describe_result(proc)


def test_verify_names_the_file_that_differs_and_run_refuses_it(tmp_path, prepared):
    project = tmp_path / "p"
    subprocess.run(["cp", "-r", str(prepared), str(project)], check=True)
    x = np.load(project / "data" / "digits" / "x_train.npy")
    x[0, 0, 0] += 1.0
    np.save(project / "data" / "digits" / "x_train.npy", x)

    proc = run_cli(["data", "verify"], cwd=project)
    assert proc.returncode == 1, describe_result(proc)
    assert "data/digits/x_train.npy" in proc.stderr

    study = write_study(project, DIGITS_STUDY)
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(project / "m.db")], cwd=project)
    assert proc.returncode == 2, describe_result(proc)
    assert "does not match data.dvc" in proc.stderr and "--allow-data-mismatch" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (project / "m.db").exists() or not trial_runs(project / "m.db", "repro")

    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(project / "m.db"), "--allow-data-mismatch"],
                   cwd=project)
    assert proc.returncode == 0, describe_result(proc)
    (run,) = trial_runs(project / "m.db", "repro")
    assert run.data.tags["dlbench.data_matches_dvc"] == "false"


def test_missing_data_is_regenerated_and_must_match_the_recorded_hash(tmp_path, prepared):
    project = tmp_path / "p"
    subprocess.run(["cp", "-r", str(prepared), str(project)], check=True)
    subprocess.run(["rm", "-rf", str(project / "data"), str(project / ".dvc" / "cache")], check=True)
    study = write_study(project, DIGITS_STUDY)
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(project / "m.db")], cwd=project)
    assert proc.returncode == 0, describe_result(proc)
    assert "regenerating" in proc.stdout
    (run,) = trial_runs(project / "m.db", "repro")
    tags = run.data.tags
    assert tags["dlbench.data_matches_dvc"] == "true"
    md5 = next(line.split(":", 1)[1].strip() for line in (project / "data.dvc").read_text().splitlines()
               if "md5:" in line)
    assert tags["dlbench.data_dvc_md5"] == md5
    assert len(tags["dlbench.dataset_hash"]) == 64
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name == "digits"


def test_missing_data_is_pulled_from_a_configured_dvc_remote(tmp_path, prepared):
    project = tmp_path / "p"
    subprocess.run(["cp", "-r", str(prepared), str(project)], check=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "remote", "add", "-d", "store", str(tmp_path / "remote")], cwd=project, check=True)
    subprocess.run([*dvc, "push", "-q"], cwd=project, check=True)
    subprocess.run(["rm", "-rf", str(project / "data"), str(project / ".dvc" / "cache")], check=True)
    study = write_study(project, DIGITS_STUDY)
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(project / "m.db")], cwd=project)
    assert proc.returncode == 0, describe_result(proc)
    assert "pulling it from the DVC remote" in proc.stdout
    assert (project / "data" / "digits" / "x_train.npy").is_file()
    (run,) = trial_runs(project / "m.db", "repro")
    assert run.data.tags["dlbench.data_matches_dvc"] == "true"


# -- provenance and reproduce ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, prepared) -> tuple[Path, str]:
    project = tmp_path_factory.mktemp("repro")
    subprocess.run(["cp", "-r", f"{prepared}/.", str(project)], check=True)
    study = write_study(project, DIGITS_STUDY)
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(project / "m.db")], cwd=project)
    assert proc.returncode == 0, describe_result(proc)
    return project, run_id_of_only_trial(project / "m.db", "repro")


def test_trial_run_records_full_provenance(finished_run):
    project, run_id = finished_run
    c = client(project / "m.db")
    run = c.get_run(run_id)
    tags = run.data.tags
    for key in ("dlbench.config_hash", "dlbench.seed", "dlbench.version", "dlbench.torch_version",
                "dlbench.device_name", "dlbench.deterministic", "dlbench.plugin.optimizer",
                "dlbench.plugin.dataset", "dlbench.dataset_hash"):
        assert tags.get(key), key
    assert tags["dlbench.deterministic"] == "true"
    assert tags["dlbench.plugin.optimizer"].startswith("adam [built-in")
    artifacts = {a.path for a in c.list_artifacts(run_id)}
    assert {"config.json", "requirements.txt", "model.txt"} <= artifacts
    config = json.loads(Path(c.download_artifacts(run_id, "config.json", str(project))).read_text())
    from dlbench.study import config_hash

    assert config_hash(config) == tags["dlbench.config_hash"] and config["seed"] == 0
    freeze = Path(c.download_artifacts(run_id, "requirements.txt", str(project))).read_text()
    assert "torch==" in freeze and "mlflow==" in freeze


def test_reproduce_passes_on_an_untouched_run(finished_run):
    project, run_id = finished_run
    proc = run_cli(["reproduce", run_id, "--tracking-uri", sqlite_uri(project / "m.db")], cwd=project)
    assert proc.returncode == 0, describe_result(proc)
    assert "REPRODUCED" in proc.stdout and "largest difference 0" in proc.stdout
    reruns = [r for r in client(project / "m.db").search_runs(
        [client(project / "m.db").get_run(run_id).info.experiment_id])
        if r.data.tags.get("dlbench.reproduces") == run_id]
    assert len(reruns) == 1 and reruns[0].data.tags["dlbench.reproduced"] == "true"
    assert reruns[0].data.tags["dlbench.role"] == "reproduction"
    # named as a reproduction, nested under the original's study run, yet never one of its trials:
    # not skipped to or resumed (the trial runs of the store), not in the study's report
    original = client(project / "m.db").get_run(run_id)
    assert reruns[0].info.run_name == f"reproduce of {original.info.run_name}"
    parent_id = original.data.tags["mlflow.parentRunId"]
    assert reruns[0].data.tags["mlflow.parentRunId"] == parent_id
    from dlbench.tracking.reader import read_study_run
    from dlbench.tracking.store import trial_runs

    found = trial_runs(client(project / "m.db"), original.info.experiment_id)
    assert [r.run_id for runs in found.values() for r in runs] == [run_id]
    assert list(read_study_run(sqlite_uri(project / "m.db"), parent_id).trials["run_id"]) == [run_id]


def test_reproduce_fails_when_the_data_file_was_altered(tmp_path, finished_run):
    project, run_id = finished_run
    altered = tmp_path / "altered"
    subprocess.run(["cp", "-r", str(project), str(altered)], check=True)
    x = np.load(altered / "data" / "digits" / "x_train.npy")
    np.save(altered / "data" / "digits" / "x_train.npy", x[::-1].copy())
    # a copied store is pointed at its own artifacts first: a reproduction would write into the original's
    relocated = run_cli(["relocate", "--tracking-uri", sqlite_uri(altered / "m.db")], cwd=altered)
    assert relocated.returncode == 0 and f"-> {altered / 'mlruns'}" in relocated.stdout, describe_result(relocated)
    proc = run_cli(["reproduce", run_id, "--tracking-uri", sqlite_uri(altered / "m.db")], cwd=altered)
    assert proc.returncode == 1, describe_result(proc)
    assert "NOT REPRODUCED" in proc.stdout
    assert "warning: data: dataset hash" in proc.stderr


def test_reproduce_unknown_run_is_a_usage_error(finished_run):
    project, _ = finished_run
    proc = run_cli(["reproduce", "0" * 32, "--tracking-uri", sqlite_uri(project / "m.db")], cwd=project)
    assert proc.returncode == 2 and "not in this tracking store" in proc.stderr, describe_result(proc)
    assert "Traceback" not in proc.stderr


# -- resume without loss ---------------------------------------------------------------------------


def test_kill_9_mid_study_then_rerun_gives_every_trial_exactly_once(tmp_path):
    # 20 epochs of at least 0.15 s: the study outlasts the store's creation (workers start
    # training before it exists), so the kill lands mid-study
    study = write_study(tmp_path, TINY_BASELINE.replace("epochs = 2", "epochs = 20").replace(
        "[baseline]", '[study]\nname = "resume"\nseeds = 3\n\n[baseline]') + """
[studies.width.levels]
narrow = {}
wide = { architecture = { width = 32 } }
""")
    write_plugin(tmp_path, "slow", SLOW_OBSERVER)
    db = tmp_path / "m.db"
    proc = start_cli(["run", study, "--tracking-uri", sqlite_uri(db), "--checkpoint-every", "0"], tmp_path)

    def two_finished() -> bool:
        # only read the store once training has begun (a checkpoint exists), so this process never
        # races the CLI while it creates the database tables
        if not (tmp_path / ".dlbench" / "checkpoints").is_dir():
            return False
        try:
            return sum(r.info.status == "FINISHED" for r in trial_runs(db, "resume")) >= 2
        except Exception:  # the store is still being created
            return False

    kill_when(proc, two_finished)
    before = trial_runs(db, "resume")
    assert any(r.info.status == "RUNNING" for r in before) or len(before) < 6
    write_plugin(tmp_path, "slow", SLOW_OBSERVER.replace("0.15", "0"))  # the kill has landed: the rest at full speed

    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(db)], cwd=tmp_path)
    assert proc.returncode == 0, describe_result(proc)
    assert "already done" in proc.stdout
    after = trial_runs(db, "resume")
    hashes = [r.data.tags["dlbench.config_hash"] for r in after]
    assert len(after) == 6 and len(set(hashes)) == 6, "a trial is missing or duplicated"
    assert all(r.info.status == "FINISHED" for r in after)
    parents = {r.data.tags["mlflow.parentRunId"] for r in after}
    assert len(parents) == 1, "the re-run continues the same study run"

    again = run_cli(["run", study, "--tracking-uri", sqlite_uri(db)], cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("already done") == 6, describe_result(again)
    assert len(trial_runs(db, "resume")) == 6
    forced = run_cli(["run", study, "--tracking-uri", sqlite_uri(db), "--force", "--study", "width"], cwd=tmp_path)
    assert forced.returncode == 0 and len(trial_runs(db, "resume")) == 12, describe_result(forced)


def test_killed_trial_resumes_from_its_checkpoint_with_identical_metrics(tmp_path):
    text = TINY_BASELINE.replace("epochs = 2", "epochs = 12").replace(
        "[baseline]", '[study]\nname = "long"\nseeds = [0]\n\n[baseline]') + """
regularizers = [{ name = "dropout", p_hidden = 0.2 }]

[studies.one.levels]
only = {}
"""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for d in (straight, killed):
        write_study(d, text)
        write_plugin(d, "slow", SLOW_OBSERVER)
    proc = run_cli(["run", "study.toml", "--tracking-uri", sqlite_uri(straight / "m.db")], cwd=straight)
    assert proc.returncode == 0, describe_result(proc)

    checkpoints = killed / ".dlbench" / "checkpoints"
    proc = start_cli(["run", "study.toml", "--tracking-uri", sqlite_uri(killed / "m.db"), "--checkpoint-every", "0"],
                     killed)
    # kill once a few epochs are checkpointed: mid-trial, and often mid-epoch
    kill_when(proc, lambda: any(checkpoints.glob("*.pt")) and _checkpoint_epoch(checkpoints) >= 3)
    proc = run_cli(["run", "study.toml", "--tracking-uri", sqlite_uri(killed / "m.db")], cwd=killed)
    assert proc.returncode == 0, describe_result(proc)
    assert "resuming run" in proc.stdout

    (a,) = trial_runs(straight / "m.db", "long")
    (b,) = trial_runs(killed / "m.db", "long")
    assert b.info.status == "FINISHED" and b.data.tags["dlbench.restarts"] == "1"
    assert int(b.data.tags["dlbench.resumed_from_epoch"]) >= 3
    ha, hb = histories(straight / "m.db", a), histories(killed / "m.db", b)
    assert ha.keys() == hb.keys()
    for key in ha:
        assert hb[key] == ha[key], f"{key} differs after resume (or a step was logged twice)"
    assert not any(checkpoints.glob("*.pt")), "a finished trial's checkpoint is removed"


def _checkpoint_epoch(folder: Path) -> int:
    import torch

    for path in folder.glob("*.pt"):
        try:
            return torch.load(path, map_location="cpu", weights_only=False)["epoch"]
        except Exception:  # being replaced right now
            return -1
    return -1


# -- failure isolation ------------------------------------------------------------------------------


def test_raising_plugin_and_diverging_trial_leave_the_rest_intact(tmp_path):
    write_plugin(tmp_path, "broken", """
        import torch
        from dlbench import hookimpl

        class Exploding(torch.optim.SGD):
            def step(self, closure=None):
                self.steps = getattr(self, "steps", 0) + 1
                if self.steps > 1:  # past the preflight's one step: the trial itself fails
                    raise RuntimeError("boom from a plugin")
                return super().step(closure)

        def exploding(params, *, lr: float = 0.05):
            \"\"\"SGD whose second step raises.\"\"\"
            return Exploding(params, lr=lr)

        @hookimpl
        def dlbench_register_optimizers(register):
            register("exploding", exploding)
    """)
    study = write_study(tmp_path, TINY_BASELINE.replace("[baseline]", '[study]\nname = "iso"\nseeds = 1\n\n'
                                                       "[baseline]") + """
[studies.iso.levels]
ok = {}
raises = { optimizer = "exploding" }
diverges = { optimizer = { name = "sgd", lr = 1e30 } }
""")
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(tmp_path / "m.db")], cwd=tmp_path)
    assert proc.returncode == 1, describe_result(proc)
    assert "1 finished" in proc.stdout and "1 diverged" in proc.stdout and "1 failed" in proc.stdout
    runs = {r.data.tags["dlbench.level"]: r for r in trial_runs(tmp_path / "m.db", "iso")}
    assert runs["ok"].info.status == "FINISHED"
    assert runs["raises"].info.status == "FAILED"
    assert runs["diverges"].info.status == "FAILED" and runs["diverges"].data.tags["dlbench.status"] == "diverged"
    c = client(tmp_path / "m.db")
    error = Path(c.download_artifacts(runs["raises"].info.run_id, "error.txt", str(tmp_path))).read_text()
    assert "boom from a plugin" in error and "Traceback" in error
    assert int(runs["diverges"].data.tags["dlbench.epochs_run"]) < 2  # stopped at the first bad epoch


def test_reproduce_matches_accuracies_an_older_dlbench_stored_as_float32():
    from dlbench.reproduce import compare

    old_run = {"test_accuracy": [(1, 0.6800000071525574)], "test_loss": [(1, 1.25)]}  # 680 of 1000 as float32
    ok, largest, compared, _ = compare(old_run, {"test_accuracy": [(1, 0.68)], "test_loss": [(1, 1.25)]}, 0.0)
    assert ok and largest[2] == 0.0 and compared == 2
    ok, largest, _, _ = compare(old_run, {"test_accuracy": [(1, 0.681)], "test_loss": [(1, 1.25)]}, 0.0)
    assert not ok and largest[0] == "test_accuracy"  # one more correct example is a difference
