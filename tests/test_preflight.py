"""The preflight: every distinct component of a study built once on a tiny batch before any trial
trains; a plugin that raises is reported with the key path that configured it, its name and
origin, and the exception, every such problem at once, before a run is logged."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BASELINE, TINY_STUDY, cli_env, describe_result, run_cli, sqlite_uri, write_plugin, write_study

from dlbench.config import read_study_file
from dlbench.plugins import load_plugins
from dlbench.preflight import PreflightError, key_path, preflight
from dlbench.study import expand, expand_plan

# Local plugins that fail at each point of a trial's build and first step.
BROKEN = """
import math
import torch
from dlbench import hookimpl
from dlbench.data import Dataset
from dlbench.regularizer import Regularizer


def no_data(*, size: int = 10):
    \"\"\"A dataset whose generator raises.\"\"\"
    raise OSError("no data today")


def picky(params, *, lr: float = 0.1):
    \"\"\"SGD refusing a learning rate above 1 when built.\"\"\"
    if lr > 1:
        raise ValueError(f"picky: lr {lr} is too large")
    return torch.optim.SGD(params, lr=lr)


class Stubborn(torch.optim.SGD):
    def step(self, closure=None):
        raise RuntimeError("stubborn optimizer refuses to step")


def stubborn(params, *, lr: float = 0.1):
    \"\"\"An optimizer whose first step raises.\"\"\"
    return Stubborn(params, lr=lr)


class Grumpy(Regularizer):
    def penalty(self, model):
        raise ValueError("grumpy penalty")


def grumpy(*, weight: float = 1.0):
    \"\"\"A regularizer whose penalty raises.\"\"\"
    return Grumpy()


def broken_activation():
    \"\"\"An activation that cannot be built.\"\"\"
    raise TypeError("no activation for you")


def brittle(input_shape, num_classes, activation):
    \"\"\"An architecture whose factory raises.\"\"\"
    raise RuntimeError("brittle architecture")


def lazy(model, data):
    \"\"\"An initializer that raises when run.\"\"\"
    raise NotImplementedError("lazy initializer")


def unsteady(optimizer, total_steps):
    \"\"\"A schedule whose factory raises.\"\"\"
    raise ValueError("unsteady schedule")


@hookimpl
def dlbench_register_datasets(register):
    register("no_data", no_data)


@hookimpl
def dlbench_register_optimizers(register):
    register("picky", picky)
    register("stubborn", stubborn)


@hookimpl
def dlbench_register_regularizers(register):
    register("grumpy", grumpy)


@hookimpl
def dlbench_register_activations(register):
    register("broken", broken_activation)


@hookimpl
def dlbench_register_architectures(register):
    register("brittle", brittle)


@hookimpl
def dlbench_register_initializers(register):
    register("lazy", lazy)


@hookimpl
def dlbench_register_schedules(register):
    register("unsteady", unsteady)
"""

BROKEN_STUDY = TINY_BASELINE.replace('name = "adam", lr = 0.01', 'name = "picky", lr = 0.01') + """
[study]
name = "broken"
seeds = 2

[studies.s.levels]
ok = {}
stubborn = { optimizer = "stubborn" }
grumpy = { regularizers = [{ name = "dropout" }, { name = "grumpy" }] }
fast = { optimizer = { lr = 5.0 } }
activation = { activation = "broken" }
architecture = { architecture = "brittle" }
initializer = { initializer = "lazy" }
schedule = { schedule = "unsteady" }
data = { dataset = "no_data" }

[studies.t]
baseline = { optimizer = "stubborn" }
[studies.t.levels]
same = {}
"""


@pytest.fixture
def broken(tmp_path):
    """The broken study, its trials and the registry with the broken plugins."""
    write_plugin(tmp_path, "broken", BROKEN)
    sf = read_study_file(write_study(tmp_path, BROKEN_STUDY))
    plugins = load_plugins(tmp_path / "plugins", autoload=False)
    return sf, expand(sf, plugins.registry), plugins.registry


def test_a_correct_study_passes_and_each_distinct_config_is_built_once(tmp_path, registry):
    sf = read_study_file(write_study(tmp_path, TINY_STUDY))
    checked = preflight(sf, expand(sf, registry), registry)
    # 12 trials, 5 distinct configs (dropout/off is act_depth relu,1); 9 distinct components:
    # the dataset, 2 architectures, 2 activations, the initializer, optimizer, schedule, dropout
    assert (checked.configs, checked.components) == (5, 9)
    assert "checked 9 distinct components in 5 distinct configs" in str(checked)


def test_every_failing_component_is_named_by_its_key_path_plugin_and_origin(broken):
    sf, trials, registry = broken
    with pytest.raises(PreflightError) as info:
        preflight(sf, trials, registry)
    problems = info.value.problems
    origin = "[local (" + str(sf.path.parent / "plugins" / "broken.py")
    expected = {
        "studies.s.levels.stubborn.optimizer (optimizer 'stubborn'": "RuntimeError: stubborn optimizer refuses to step",
        "studies.t.baseline.optimizer (optimizer 'stubborn'": "RuntimeError: stubborn optimizer refuses to step",
        "studies.s.levels.grumpy.regularizers[1] (regularizer 'grumpy'": "ValueError: grumpy penalty (in penalty",
        "studies.s.levels.fast.optimizer.lr with baseline.optimizer (optimizer 'picky'":
            "ValueError: picky: lr 5.0 is too large",
        "studies.s.levels.activation.activation (activation 'broken'": "TypeError: no activation for you",
        "studies.s.levels.architecture.architecture (architecture 'brittle'": "RuntimeError: brittle architecture",
        "studies.s.levels.initializer.initializer (initializer 'lazy'": "NotImplementedError: lazy initializer",
        "studies.s.levels.schedule.schedule (schedule 'unsteady'": "ValueError: unsteady schedule",
        "studies.s.levels.data.dataset (dataset 'no_data'": "OSError: no data today",
    }
    assert len(problems) == len(expected), problems  # all at once, each once, the ok level not among them
    for start, error in expected.items():
        (problem,) = [p for p in problems if p.startswith(start)]
        assert origin in problem and error in problem and "broken.py:" in problem, problem
        assert "[2 trials: " in problem, problem  # the two seeds of the level it stops
    assert not any("s/ok" in p for p in problems)
    message = str(info.value)
    assert message.startswith(f"{sf.path}: 9 problems") and "nothing was run or logged" in message


def test_key_paths_point_at_what_the_level_or_study_set(broken):
    _, trials, _ = broken
    by_level = {t.level: t for t in trials}
    assert key_path(by_level["ok"], "optimizer") == "baseline.optimizer"
    assert key_path(by_level["grumpy"], "regularizers[0]") == "studies.s.levels.grumpy.regularizers[0]"
    assert key_path(by_level["fast"], "optimizer") == "studies.s.levels.fast.optimizer.lr with baseline.optimizer"
    assert key_path(by_level["same"], "optimizer") == "studies.t.baseline.optimizer"
    assert key_path(by_level["same"], "architecture") == "baseline.architecture"


def test_preflight_leaves_the_random_states_and_the_thread_count_as_it_found_them(tmp_path, registry):
    sf = read_study_file(write_study(tmp_path, TINY_BASELINE + """
[study]
seeds = 1
[studies.s.levels]
dropout = { regularizers = [{ name = "dropout", p_hidden = 0.5 }, { name = "input_noise" }] }
pretrained = { initializer = { name = "greedy_autoencoder", epochs = 2, corruption = 0.25 } }
"""))
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    before = random.getstate(), np.random.get_state(), torch.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        preflight(sf, expand(sf, registry), registry)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert random.getstate() == before[0]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:3], before[1][1:3]))
    assert torch.equal(torch.get_rng_state(), before[2])


@pytest.mark.slow  # a whole study, end to end
def test_cli_dry_run_and_run_stop_before_anything_is_logged(tmp_path):
    write_plugin(tmp_path / "elsewhere", "broken", BROKEN)
    study = write_study(tmp_path, TINY_BASELINE + """
[study]
name = "stops"
seeds = 2
[studies.dropout.levels]
off = {}
on = { regularizers = [{ name = "dropout", p_hidden = 0.3 }, { name = "grumpy" }] }
""")
    plugins_dir = tmp_path / "elsewhere" / "plugins"
    expected = ["studies.dropout.levels.on.regularizers[1]", "regularizer 'grumpy'", f"local ({plugins_dir}",
                "ValueError: grumpy penalty"]
    dry = run_cli(["run", study, "--dry-run", "--plugins-dir", plugins_dir], cwd=tmp_path, env=cli_env(autoload=False))
    real = run_cli(["run", study, "--plugins-dir", plugins_dir, "--tracking-uri", sqlite_uri(tmp_path / "m.db"),
                    "--jobs", "2"], cwd=tmp_path, env=cli_env(autoload=False))
    # spawned workers (as on a GPU) start before the preflight: they are stopped with it
    spawned = run_cli(["run", study, "--plugins-dir", plugins_dir, "--tracking-uri", sqlite_uri(tmp_path / "m.db"),
                       "--jobs", "2"], cwd=tmp_path, env=cli_env({"DLBENCH_WORKER_START": "spawn"}, autoload=False))
    for proc in (dry, real, spawned):
        assert proc.returncode == 2, describe_result(proc)
        assert proc.stderr.startswith(f"Error: {study}: 1 problem"), describe_result(proc)
        assert "Traceback" not in proc.stderr, describe_result(proc)
        assert all(text in proc.stderr for text in expected), describe_result(proc)
    # no store, no checkpoint, no report: no worker trained, no run was created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "study.toml"]


REPO = Path(__file__).parent.parent


@pytest.mark.parametrize("path", sorted([*(REPO / "ablations").glob("*.toml"), *(REPO / "benchmarks" / "studies").glob("*.toml")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.slow  # a whole study, end to end
def test_every_study_of_the_library_passes_the_preflight(path, registry):
    """The study files in ablations/ and benchmarks/studies/ stay runnable as the plugins change:
    each loads, expands and builds every distinct config on a tiny batch (what `dlbench run
    --dry-run` does)."""
    sf = read_study_file(path)
    trials = expand_plan(sf, registry).to_check()  # a tuned level: the low and the high corner of its space
    assert trials and all(t.seed is not None for t in trials)
    checked = preflight(sf, trials, registry)
    assert checked.configs >= 2  # a study compares at least two configurations
