"""`dlbench reproduce --study RUN_ID`: a whole study re-run from what its study run recorded, into
a new study run, compared trial by trial. Real `dlbench` subprocesses, real SQLite stores; the
kind of comparison and the notes on what differs checked in this process.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_BASELINE, cli_env, copy_store, describe_result, run_cli, sqlite_uri, write_plugin, write_study

from dlbench.paths import artifact_location
from dlbench.reproduce import same_plugin
from dlbench.settings import RunOptions
from dlbench.study_reproduction import BIT_FOR_BIT, STATISTICAL, comparison_kind, counted, threads_as_recorded
from dlbench.tracking.reader import find_study_run
from dlbench.tracking.store import latest_parent

# a level of a built-in activation and one of a local plugin's: 2 levels x 2 seeds, 2 epochs each
STUDY = """\
[study]
name = "again"
seeds = 2

""" + TINY_BASELINE + """
[studies.act.levels]
relu = { activation = "relu" }
scaled = { activation = "scaled" }
"""

PLUGIN = '''
import torch
from dlbench import hookimpl


class Scaled(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 0.9


@hookimpl
def dlbench_register_activations(register):
    def scaled():
        """relu, scaled by a constant."""
        return Scaled()

    register("scaled", scaled)
'''
TRIALS = [f"act/{level}/seed={seed}" for level in ("relu", "scaled") for seed in (0, 1)]


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def run_original(root: Path, template: Path, *options: str) -> tuple[str, str]:
    """The study and its plugin written to ``root``, run into a fresh store there: (store URI, study run id)."""
    write_study(root, STUDY)
    write_plugin(root, "scaled", PLUGIN)
    uri = sqlite_uri(copy_store(template, root))
    proc = run_cli(["run", "study.toml", "--tracking-uri", uri, *options], cwd=root, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    return uri, re.search(r"MLflow parent run: (\w+)", proc.stdout)[1]


def reproduce(root: Path, uri: str, run_id: str, *options: str):
    return run_cli(["reproduce", "--study", run_id, "--tracking-uri", uri, *options], cwd=root,
                   env=cli_env(autoload=False))


def trial_lines(proc, outcome: str) -> list[str]:
    """The trials of the output's lines of ``outcome`` (identical, differs, missing, status)."""
    return sorted(line.split()[1].rstrip(":") for line in proc.stdout.splitlines() if line.startswith(f"{outcome} "))


def children(uri: str, parent: str) -> dict[str, object]:
    """The runs under study run ``parent`` by trial name."""
    c = client(uri)
    experiment = c.get_run(parent).info.experiment_id
    runs = c.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    return {r.data.tags["dlbench.trial"]: r for r in runs}


def snapshot(uri: str, run_id: str) -> dict:
    """A study run and its trial runs as the store holds them: to tell that nothing changed."""
    c = client(uri)
    run = c.get_run(run_id)
    return {"run": (run.info.status, run.info.end_time, run.data.tags, run.data.params, run.data.metrics),
            "trials": {name: (r.info.run_id, r.info.status, r.data.tags, r.data.metrics)
                       for name, r in children(uri, run_id).items()}}


@pytest.fixture(scope="module")
def original(tmp_path_factory, mlflow_template):
    """The study run with two worker processes (``--jobs 2``): (folder, store URI, study run id)."""
    root = tmp_path_factory.mktemp("original")
    uri, run_id = run_original(root, mlflow_template, "--jobs", "2")
    return SimpleNamespace(root=root, uri=uri, run_id=run_id)


@pytest.mark.slow
def test_the_study_run_records_its_plugin_files_and_the_options_that_change_the_bits(original):
    c = client(original.uri)
    run = c.get_run(original.run_id)
    tags = run.data.tags
    assert (tags["dlbench.option.jobs"], tags["dlbench.option.stack_size"], tags["dlbench.option.cuda_graphs"],
            tags["dlbench.option.deterministic"], tags["dlbench.option.executor"]) == ("2", "auto", "auto", "true",
                                                                                       "local")
    plugin = original.root / "plugins" / "scaled.py"
    record = json.loads(Path(c.download_artifacts(original.run_id, "plugins.json", str(original.root / "dl")))
                        .read_text(encoding="utf-8"))
    assert record == {"folder": str(plugin.parent.resolve()),
                      "files": {"scaled.py": hashlib.sha256(plugin.read_bytes()).hexdigest()}}
    attached = c.download_artifacts(original.run_id, "plugins/scaled.py", str(original.root / "dl"))
    assert Path(attached).read_text(encoding="utf-8") == plugin.read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_study_reproduced_on_the_same_machine_is_bit_identical_trial_by_trial(original):
    before = snapshot(original.uri, original.run_id)
    report = (original.root / "reports" / "act" / "index.md").read_text(encoding="utf-8")
    proc = reproduce(original.root, original.uri, original.run_id)
    assert proc.returncode == 0, describe_result(proc)
    assert trial_lines(proc, "identical") == sorted(TRIALS), describe_result(proc)
    assert "4 of 4 trials bit-identical; comparison: bit-for-bit (same machine" in proc.stdout
    assert "1 thread per trial" in proc.stdout  # two workers on two cores, as the original's

    new_id = re.search(r"reproduction: study run (\w+)", proc.stdout)[1]
    new = client(original.uri).get_run(new_id)
    assert new_id != original.run_id and new.info.run_name == "reproduce of again"
    assert new.data.tags["dlbench.reproduces"] == original.run_id
    assert new.data.tags["dlbench.reproduction_kind"] == BIT_FOR_BIT
    assert new.data.tags["dlbench.trials_identical"] == "4/4"
    assert new.data.tags["dlbench.study_file"] == str((original.root / "study.toml").resolve())
    trained = children(original.uri, new_id)
    assert sorted(trained) == sorted(TRIALS)  # one run per trial, each trained again: none recorded from the original
    assert all(r.data.tags["dlbench.role"] == "trial" and "dlbench.same_as" not in r.data.tags
               for r in trained.values())
    assert not set(r.info.run_id for r in trained.values()) & set(r[0] for r in before["trials"].values())

    assert snapshot(original.uri, original.run_id) == before  # the original untouched, its report too
    assert (original.root / "reports" / "act" / "index.md").read_text(encoding="utf-8") == report
    assert (original.root / "reports" / "reproductions" / original.run_id[:8] / "act" / "index.md").is_file()
    # and the two study runs compared as `dlbench compare` does: every level identical
    assert f"(dlbench compare {original.run_id} {new_id})" in proc.stdout
    assert "levels: 2 compared, 2 identical" in proc.stdout and "PASSED" in proc.stdout
    comparison = original.root / "reports" / "reproductions" / original.run_id[:8] / "comparison"
    assert "**Passed**" in (comparison / "index.md").read_text(encoding="utf-8")

    # a later `dlbench run` of the file continues the original study run (the same study hash), never the reproduction
    assert new.data.tags["dlbench.study_hash"] == before["run"][2]["dlbench.study_hash"]
    latest = latest_parent(client(original.uri), new.info.experiment_id, new.data.tags["dlbench.study_hash"])
    assert latest.run_id == original.run_id
    assert find_study_run(original.uri, experiment="again") == original.run_id  # `dlbench report FILE` too


@pytest.mark.slow
def test_a_local_plugin_changed_since_the_run_is_named_its_trials_differ_and_stacked_ones_do_not(tmp_path,
                                                                                                 mlflow_template):
    uri, run_id = run_original(tmp_path, mlflow_template, "--jobs", "1", "--stack-size", "4")
    plugin = tmp_path / "plugins" / "scaled.py"
    plugin.write_text(plugin.read_text(encoding="utf-8").replace("0.9", "0.8"), encoding="utf-8")
    proc = reproduce(tmp_path, uri, run_id)
    assert proc.returncode == 1, describe_result(proc)
    assert re.search(r"warning: plugins: scaled\.py has changed since the original ran .*; 2 of the 4 trials use",
                     proc.stderr), describe_result(proc)
    assert trial_lines(proc, "differs") == ["act/scaled/seed=0", "act/scaled/seed=1"], describe_result(proc)
    assert "2 of 4 trials bit-identical; comparison: bit-for-bit" in proc.stdout
    assert "levels: 2 compared, 1 identical" in proc.stdout  # relu's seeds the same, the plugin's level moved
    # the relu level's two seeds trained as one stack of two, in one process, then and now: the same bits
    assert trial_lines(proc, "identical") == ["act/relu/seed=0", "act/relu/seed=1"]
    new_id = re.search(r"reproduction: study run (\w+)", proc.stdout)[1]
    stacks = [{name: (r.data.tags["dlbench.stack_size"], r.data.tags.get("dlbench.stack_id"))
               for name, r in children(uri, parent).items() if "relu" in name} for parent in (run_id, new_id)]
    assert stacks[0] == stacks[1] and {size for size, _ in stacks[0].values()} == {"2"}


def fake_store(root: Path, template: Path) -> tuple[str, object, str]:
    """A store with one experiment, in place (artifacts beside it): (URI, client, experiment id)."""
    uri = sqlite_uri(copy_store(template, root))
    c = client(uri)
    return uri, c, c.create_experiment("again", artifact_location=artifact_location(uri, "again"))


def test_a_trial_run_id_with_study_is_a_usage_error_naming_its_study_run(tmp_path, mlflow_template):
    uri, c, experiment = fake_store(tmp_path, mlflow_template)
    study = c.create_run(experiment, run_name="again", tags={"dlbench.role": "study"}).info.run_id
    trial = c.create_run(experiment, run_name="relu, seed=0",
                         tags={"dlbench.role": "trial", "mlflow.parentRunId": study}).info.run_id
    proc = reproduce(tmp_path, uri, trial)
    assert proc.returncode == 2, describe_result(proc)
    assert f"dlbench reproduce --study {study}" in proc.stderr and "Traceback" not in proc.stderr


def test_a_study_run_without_its_study_file_attached_is_a_usage_error(tmp_path, mlflow_template):
    uri, c, experiment = fake_store(tmp_path, mlflow_template)
    study = c.create_run(experiment, run_name="again", tags={
        "dlbench.role": "study", "dlbench.study_file": str(tmp_path / "gone" / "study.toml")}).info.run_id
    c.log_param(study, "studies", '["act"]')
    proc = reproduce(tmp_path, uri, study)
    assert proc.returncode == 2, describe_result(proc)
    assert f"study run {study} has no study file attached (study.toml is missing" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / ".dlbench").exists()


def test_an_option_of_a_whole_study_without_study_is_a_usage_error(tmp_path):
    proc = run_cli(["reproduce", "0123abcd", "--jobs", "2"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 2, describe_result(proc)
    assert "--jobs is an option of a whole study's reproduction: add --study" in proc.stderr


def trained(**tags) -> SimpleNamespace:
    """A trial run's tags, as a machine with a CPU, torch 2.13 and one thread records them."""
    return SimpleNamespace(tags={"dlbench.platform": "Linux-x", "dlbench.device": "cpu",
                                 "dlbench.device_name": "x86_64", "dlbench.torch_version": "2.13.0",
                                 "dlbench.torch_threads": "1"} | tags)


def test_the_comparison_is_bit_for_bit_only_on_the_same_platform_device_torch_and_threads():
    same = comparison_kind([(trained(), trained())], {})
    assert same == (BIT_FOR_BIT,
                    "same machine: platform Linux-x, device cpu (x86_64), torch 2.13.0, 1 thread per trial")
    gpu = trained(**{"dlbench.device": "cuda:0", "dlbench.device_name": "NVIDIA H100"})
    assert comparison_kind([(trained(), gpu)], {}) == (STATISTICAL, "device cuda here, cpu in the original")
    threads = comparison_kind([(trained(), trained(**{"dlbench.torch_threads": "4"}))], {})
    assert threads == (STATISTICAL, "4 torch threads per trial here, 1 in the original")
    torch_ = comparison_kind([(trained(**{"dlbench.torch_version": "2.12.0"}), trained())], {})
    assert torch_ == (STATISTICAL, "torch 2.13.0 here, 2.12.0 in the original")
    loose = comparison_kind([(trained(), trained())], {"dlbench.option.deterministic": "false"})
    assert loose == (STATISTICAL, "the original ran with --nondeterministic")


def test_a_note_on_some_trials_says_how_many_and_a_local_plugin_is_the_same_file_in_another_folder():
    assert counted([["a", "b"], ["a"], ["a", "a"]], 3) == ["a", "b (1 of 3 trials)"]
    assert same_plugin("scaled [local (plugins/scaled.py)]", "scaled [local (/elsewhere/plugins/scaled.py)]")
    assert not same_plugin("scaled [local (plugins/scaled.py)]", "scaled [local (plugins/other.py)]")
    assert not same_plugin("relu [built-in 0.1]", "relu [built-in 0.2]")


def test_one_job_trains_with_the_original_thread_count_and_gets_its_own_back_after():
    before = torch.get_num_threads()
    with threads_as_recorded(before + 2, RunOptions(jobs=1, device="cpu")):
        assert torch.get_num_threads() == before + 2
    assert torch.get_num_threads() == before
    with threads_as_recorded(None, RunOptions(jobs=1, device="cpu")):  # the original's counts differed: as they are
        assert torch.get_num_threads() == before
