"""Plugins: the built-ins, local plugin folders, third-party packages, and the contract every
registered component honours."""

from __future__ import annotations

import math
import re
import typing
from typing import Annotated

import pytest
import torch
from conftest import (
    TINY_BASELINE,
    cli_env,
    describe_result,
    run_cli,
    sqlite_uri,
    write_plugin,
    write_study,
)
from torch import nn

from dlbench.data import Dataset
from dlbench.errors import ConfigError, PluginError, UserError
from dlbench.plugins import AUTOLOAD_ENV, KINDS, load_plugins
from dlbench.regularizer import Regularizer
from dlbench.schema import Range, describe
from dlbench.train import TrialResult, build, make, run_trial, seed_everything

# Loaded at collection time so the contract tests can be parametrized over every built-in.
BUILTINS = load_plugins(None, autoload=False).registry
CPU = torch.device("cpu")
EXAMPLE_ORIGIN = "entry point (dlbench-example 0.1.0)"


def names(kind: str) -> list[str]:
    return BUILTINS.names(kind)


# -- the built-ins ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, needed", [
    ("architecture", {"mlp"}),
    ("activation", {"relu", "sigmoid", "tanh"}),
    ("optimizer", {"sgd", "adam"}),
    ("regularizer", {"dropout"}),
    ("initializer", {"default", "xavier", "kaiming", "greedy_autoencoder"}),
    ("dataset", {"mnist1d", "digits"}),
    ("schedule", {"constant"}),
])
def test_builtins_the_standard_studies_need(registry, kind, needed):
    assert needed <= set(registry.names(kind))


def test_every_kind_has_builtins_and_they_are_builtin(registry):
    assert set(KINDS.values()) == {"dataset", "architecture", "activation", "initializer", "optimizer", "schedule",
                                   "regularizer", "preprocessing", "loss"}
    for kind in KINDS.values():
        assert registry.names(kind), kind
    components = list(registry)
    assert components
    for c in components:
        assert c.origin == "built-in", c
        assert c.description, f"{c.kind} {c.name!r} has no docstring: `dlbench plugins list` shows it"


def test_options_come_from_keyword_only_parameters(registry):
    sgd = registry.get("optimizer", "sgd")
    assert list(sgd.options) == ["lr", "momentum", "nesterov", "weight_decay"]
    assert sgd.options["lr"].annotation == Annotated[float, Range(gt=0)] and sgd.options["lr"].default == 0.1
    assert describe(sgd.options["lr"].annotation) == "float > 0"
    assert not sgd.options["lr"].required
    assert registry.get("activation", "relu").options == {}


def unbounded_number(annotation) -> bool:
    """Whether an int or float in the annotation (a list's items, a union's members) has no Range."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) is Annotated:
        base, *constraints = typing.get_args(annotation)
        return not any(isinstance(c, Range) for c in constraints) and unbounded_number(base)
    return any(unbounded_number(a) for a in typing.get_args(annotation))


@pytest.mark.parametrize("component", [c for c in BUILTINS if c.options], ids=lambda c: f"{c.kind}-{c.name}")
def test_every_numeric_builtin_option_declares_its_domain(component):
    for option in component.options.values():
        assert not unbounded_number(option.annotation), \
            f"{component.kind} {component.name!r}: option {option.name!r} declares no Range"


def test_unknown_component_lookup_is_a_user_error(registry):
    with pytest.raises(UserError, match=r"unknown activation 'rleu': did you mean 'relu'\?"):
        registry.get("activation", "rleu")


def test_plugins_list_cli_shows_builtins_with_origin_and_options(tmp_path):
    proc = run_cli(["plugins", "list"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    out = proc.stdout
    for plural in KINDS:
        assert plural in out
    assert "[built-in]" in out
    lines = out.splitlines()
    sgd = next(i for i, line in enumerate(lines) if line.split()[:1] == ["sgd"])
    assert "[built-in]" in lines[sgd] and "SGD" in lines[sgd]
    assert "lr: float > 0, default 0.1" in lines[sgd + 1]
    assert "momentum: float >= 0 and < 1, default 0.0" in lines[sgd + 2]


def test_plugins_list_cli_kind_filter(tmp_path):
    proc = run_cli(["plugins", "list", "--kind", "optimizer"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert "adam" in proc.stdout and "relu" not in proc.stdout
    bad = run_cli(["plugins", "list", "--kind", "activations"], cwd=tmp_path, env=cli_env(autoload=False))
    assert bad.returncode == 2, describe_result(bad)
    assert "did you mean 'activation'?" in bad.stderr
    assert "Traceback" not in bad.stderr


# -- local plugins ------------------------------------------------------------------------------


SQUARE_PLUGIN = """
from torch import nn
from dlbench import hookimpl

class Square(nn.Module):
    def forward(self, x):
        return x * x

def square(*, gain: float = 1.0) -> nn.Module:
    \"\"\"x squared (a local test plugin).\"\"\"
    return Square()

@hookimpl
def dlbench_register_activations(register):
    register("square", square)
"""


def test_local_plugin_registers_with_local_origin(tmp_path, make_trials):
    path = write_plugin(tmp_path, "square", SQUARE_PLUGIN)
    loaded = load_plugins(tmp_path / "plugins", autoload=False)
    c = loaded.registry.get("activation", "square")
    assert "local" in c.origin and str(path) in c.origin
    assert c.description == "x squared (a local test plugin)."
    assert list(c.options) == ["gain"]
    assert loaded.registry.get("activation", "relu").origin == "built-in"  # built-ins still there
    (trial,) = make_trials({"activation": {"name": "square", "gain": 2}}, reg=loaded.registry)
    assert trial.config["activation"] == {"name": "square", "gain": 2.0}


def test_local_plugins_dir_that_does_not_exist_is_skipped(tmp_path):
    loaded = load_plugins(tmp_path / "no-such-dir", autoload=False)
    assert {c.origin for c in loaded.registry} == {"built-in"}


def test_local_modules_starting_with_underscore_are_not_loaded(tmp_path):
    write_plugin(tmp_path, "_helpers", "raise RuntimeError('must not be imported')\n")
    write_plugin(tmp_path, "square", SQUARE_PLUGIN)
    loaded = load_plugins(tmp_path / "plugins", autoload=False)
    assert loaded.registry.has("activation", "square")


def test_local_plugin_with_duplicate_name_names_both_origins(tmp_path):
    path = write_plugin(tmp_path, "dup", """
        from torch import nn
        from dlbench import hookimpl

        @hookimpl
        def dlbench_register_activations(register):
            register("relu", lambda: nn.ReLU())
        """)
    with pytest.raises(PluginError) as info:
        load_plugins(tmp_path / "plugins", autoload=False)
    msg = str(info.value)
    assert "activation 'relu' is registered twice" in msg
    assert "built-in" in msg
    assert f"local ({path})" in msg


def test_local_plugin_that_fails_to_import_is_skipped_with_its_file_and_line(tmp_path, capsys):
    path = write_plugin(tmp_path, "broken", "import no_such_module_for_dlbench_tests\n")
    write_plugin(tmp_path, "square", SQUARE_PLUGIN)
    loaded = load_plugins(tmp_path / "plugins", autoload=False)
    assert loaded.registry.has("activation", "square")  # the other files still load
    (failure,) = loaded.registry.sources.failures
    assert (failure.path, failure.line) == (path, 1)
    assert failure.error == "ModuleNotFoundError: No module named 'no_such_module_for_dlbench_tests'"
    assert capsys.readouterr().err == (
        f"dlbench: warning: skipped the local plugin file {path}, which failed to load: {path}:1: "
        "ModuleNotFoundError: No module named 'no_such_module_for_dlbench_tests'. The components it registers "
        "are unavailable: a study that names one fails, the others run.\n")


def test_registration_hook_that_raises_skips_the_plugin_file(tmp_path, capsys):
    path = write_plugin(tmp_path, "raises", """
        from torch import nn
        from dlbench import hookimpl

        @hookimpl
        def dlbench_register_activations(register):
            register("half_done", lambda: nn.Identity())

        @hookimpl
        def dlbench_register_optimizers(register):
            raise ValueError("no optimizer today")
        """)
    loaded = load_plugins(tmp_path / "plugins", autoload=False)
    (failure,) = loaded.registry.sources.failures
    assert str(failure) == f"{path}:11: dlbench_register_optimizers raised ValueError: no optimizer today"
    assert not loaded.registry.has("activation", "half_done")  # what it registered before raising: gone too
    assert f"local:{path}" not in [loaded.pm.get_name(p) for p in loaded.pm.get_plugins()]
    assert f"{path}:11: dlbench_register_optimizers raised ValueError" in capsys.readouterr().err


@pytest.mark.parametrize("call, expected", [
    ('register("", lambda: None)', "invalid name ''"),
    ('register("not_callable", 42)', "'not_callable' was registered with a non-callable factory"),
])
def test_bad_registration_is_a_plugin_error(tmp_path, call, expected):
    path = write_plugin(tmp_path, "bad", f"""
        from dlbench import hookimpl

        @hookimpl
        def dlbench_register_activations(register):
            {call}
        """)
    with pytest.raises(PluginError) as info:
        load_plugins(tmp_path / "plugins", autoload=False)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


OPTION_PLUGIN = """
from __future__ import annotations

import collections.abc
from typing import TYPE_CHECKING, Annotated, Literal

import torch
from torch import nn

from dlbench import Length, Range, hookimpl

if TYPE_CHECKING:
    from some_typing_only_module import Gain

def scaled(*, {signature}) -> nn.Module:
    \"\"\"A test plugin whose option types vary.\"\"\"
    return nn.Identity()

@hookimpl
def dlbench_register_activations(register):
    register("scaled", scaled)
"""


@pytest.mark.parametrize("signature, type_name, why", [
    ("table: dict[str, float] = {}", "dict[str, float]", "a study file cannot give a dict[str, float]"),
    ("init: torch.Tensor | None = None", "torch.Tensor | None", "a study file cannot give a torch.Tensor)"),
    ("fn: collections.abc.Callable[[float], float] = abs", "collections.abc.Callable[[float], float]",
     "a study file cannot give a collections.abc.Callable[[float], float]"),
    ("betas: tuple[float, float] = (0.9, 0.99)", "tuple[float, float]", "TOML arrays arrive as lists: use list[X]"),
    ("sizes: list = []", "list", "say what its items are, e.g. list[float]"),
    ("mode: Literal[None, 1.5] = 1.5", "Literal[None, 1.5]", "a Literal value must be a bool, int, float or str, not None"),
    ('gain: Annotated[float, "positive"] = 1.0', "Annotated[float, 'positive']",
     "'positive' is not a dlbench constraint: use dlbench.Range or dlbench.Length"),
    ("name: Annotated[str, Range(gt=0)] = 'a'", "Annotated[str, Range(", "Range does not apply to str"),
    ("gain: Gain = 1.0", "Gain", "the annotation cannot be evaluated: NameError: name 'Gain' is not defined"),
])
def test_option_type_dlbench_cannot_check_is_refused_at_registration(tmp_path, signature, type_name, why):
    path = write_plugin(tmp_path, "scaled", OPTION_PLUGIN.format(signature=signature))
    with pytest.raises(PluginError) as info:
        load_plugins(tmp_path / "plugins", autoload=False)
    msg = str(info.value)
    option = signature.split(":")[0]
    assert msg.startswith(f"local ({path}): activation 'scaled' (dlbench_local_plugins.scaled.scaled): "
                          f"option {option!r} has type ")
    assert type_name in msg and why in msg
    assert "option types may be bool, int, float, str, Literal[...] of those, list[X], unions such as X | None" in msg


@pytest.mark.parametrize("signature, problem", [
    ("gain: Annotated[float, Range(gt=0)] = 0.0", "the default of option 'gain': must be > 0, got 0.0"),
    ("size: int = None", "the default of option 'size': expected int, got none; annotate it int | None"),
    ("sizes: list[int] = [1, 2.5]", "the default of option 'sizes': expected a list of int, got array [1, 2.5]"),
])
def test_option_default_outside_its_type_is_refused_at_registration(tmp_path, signature, problem):
    path = write_plugin(tmp_path, "scaled", OPTION_PLUGIN.format(signature=signature))
    with pytest.raises(PluginError) as info:
        load_plugins(tmp_path / "plugins", autoload=False)
    assert str(info.value) == f"local ({path}): activation 'scaled' (dlbench_local_plugins.scaled.scaled): {problem}"


def test_every_checkable_option_type_registers_and_is_checked(tmp_path, make_trials):
    write_plugin(tmp_path, "scaled", OPTION_PLUGIN.format(signature=(
        "gain: Annotated[float, Range(gt=0, le=10)] | None = None, "
        "widths: Annotated[list[Annotated[int, Range(ge=1)]], Length(min=1, max=3)] = [4], "
        "label: Annotated[str, Length(min=1)] = 'x', mode: Literal['a', 'b', 3] = 'a', flag: bool = False, "
        "anything=None")))
    registry = load_plugins(tmp_path / "plugins", autoload=False).registry
    options = registry.get("activation", "scaled").options
    assert describe(options["gain"].annotation) == "float > 0 and <= 10 or none"
    assert describe(options["widths"].annotation) == "a list of int >= 1 of length 1 to 3"

    def problems(**opts) -> list[str]:
        with pytest.raises(ConfigError) as info:
            make_trials({"activation": {"name": "scaled", **opts}}, reg=registry)
        return info.value.problems

    assert problems(gain=11) == ["baseline.activation.gain: must be > 0 and <= 10, got 11"]
    assert problems(gain="big") == ["baseline.activation.gain: expected float > 0 and <= 10 or none, got string 'big'"]
    assert problems(widths=[]) == ["baseline.activation.widths: must be of length 1 to 3, got []"]
    assert problems(widths=[4, 0]) == ["baseline.activation.widths[1]: must be >= 1, got 0"]
    assert problems(label="") == ["baseline.activation.label: must be of length >= 1, got ''"]
    assert problems(mode=True) == ["baseline.activation.mode: expected one of 'a', 'b', 3, got boolean True"]
    (trial,) = make_trials({"activation": {"name": "scaled", "gain": 2, "mode": 3, "anything": {"k": [1]}}},
                           reg=registry)
    assert trial.config["activation"] == {"name": "scaled", "gain": 2.0, "widths": [4], "label": "x", "mode": 3,
                                          "flag": False, "anything": {"k": [1]}}


def test_a_broken_local_plugin_does_not_block_a_study_that_does_not_use_it(tmp_path):
    path = write_plugin(tmp_path, "broken", "import no_such_module_for_dlbench_tests\n")
    study = write_study(tmp_path, TINY_BASELINE + "[studies.s.levels]\na = {}\n")
    proc = run_cli(["run", study, "--dry-run"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert "Traceback" not in proc.stderr
    assert (f"dlbench: warning: skipped the local plugin file {path}, which failed to load: {path}:1: "
            "ModuleNotFoundError: No module named 'no_such_module_for_dlbench_tests'. The components it "
            "registers are unavailable") in proc.stderr


@pytest.mark.parametrize("hook_code, expected", [
    # a misspelled hook name (singular): pluggy's check_pending catches it
    ("def dlbench_register_activation(register):", "dlbench_register_activation"),
    # a misspelled argument: pluggy rejects the hookimpl at registration
    ("def dlbench_register_activations(reg):", "reg"),
])
def test_misspelled_hook_is_a_clean_user_error(tmp_path, hook_code, expected):
    path = write_plugin(tmp_path, "typo", f"""
        from torch import nn
        from dlbench import hookimpl

        @hookimpl
        {hook_code}
            pass
        """)
    study = write_study(tmp_path, TINY_BASELINE + "[studies.s.levels]\na = {}\n")
    proc = run_cli(["run", study, "--dry-run"], cwd=tmp_path, env=cli_env(autoload=False))
    assert "Traceback" not in proc.stderr, describe_result(proc)
    assert proc.returncode == 2, describe_result(proc)
    assert path.name in proc.stderr
    assert expected in proc.stderr


# -- third-party plugins through entry points ---------------------------------------------------


def test_entry_point_plugin_loads_in_process(example_site, monkeypatch):
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.syspath_prepend(str(example_site))
    loaded = load_plugins(None)
    c = loaded.registry.get("activation", "example_swish")
    assert c.origin == EXAMPLE_ORIGIN
    assert c.description.startswith("Swish x * sigmoid(beta * x) (Ramachandran et al. 2017")
    assert list(c.options) == ["beta"]
    assert c.options["beta"].annotation is float and c.options["beta"].default == 1.0
    x = torch.linspace(-4, 4, 17)
    assert torch.allclose(c.factory(beta=2.0)(x), x * torch.sigmoid(2.0 * x))
    assert torch.allclose(c.factory()(x), nn.SiLU()(x))  # beta = 1 is SiLU
    assert loaded.registry.get("activation", "relu").origin == "built-in"


def test_autoload_can_be_disabled(example_site, monkeypatch):
    monkeypatch.syspath_prepend(str(example_site))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    assert not load_plugins(None, autoload=False).registry.has("activation", "example_swish")
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert not load_plugins(None).registry.has("activation", "example_swish")
    assert load_plugins(None, autoload=True).registry.has("activation", "example_swish")  # explicit wins


def example_env(site, *, autoload=True) -> dict[str, str]:
    return cli_env({"PYTHONPATH": str(site)}, autoload=autoload)


def test_entry_point_plugin_in_plugins_list(example_site, tmp_path):
    proc = run_cli(["plugins", "list", "--kind", "activation"], cwd=tmp_path, env=example_env(example_site))
    assert proc.returncode == 0, describe_result(proc)
    lines = proc.stdout.splitlines()
    (i,) = [i for i, line in enumerate(lines) if line.split()[:1] == ["example_swish"]]
    assert f"[{EXAMPLE_ORIGIN}]" in lines[i]
    assert "Ramachandran et al. 2017" in lines[i]
    assert "beta: float, default 1.0" in lines[i + 1]


def test_disable_autoload_env_hides_entry_point_plugin(example_site, tmp_path):
    proc = run_cli(["plugins", "list", "--kind", "activation"], cwd=tmp_path,
                   env=example_env(example_site, autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert "relu" in proc.stdout
    assert "example_swish" not in proc.stdout


SWISH_STUDY = TINY_BASELINE + """
[study]
name = "swish"
seeds = 1

[studies.swish.levels]
relu = {}
swish = { activation = "example_swish" }
sharp = { activation = { name = "example_swish", beta = 4 } }
"""


@pytest.mark.slow  # a whole study, end to end
def test_entry_point_plugin_runs_a_study_end_to_end(example_site, tmp_path, new_store):
    from mlflow.tracking import MlflowClient

    study = write_study(tmp_path, SWISH_STUDY)
    db = new_store(tmp_path)
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(db), "--device", "cpu"], cwd=tmp_path,
                   env=example_env(example_site))
    assert proc.returncode == 0, describe_result(proc)
    assert re.search(r"\b3 finished\b.*, 0 diverged, 0 failed, 0 not run", proc.stdout), proc.stdout

    client = MlflowClient(sqlite_uri(db))
    exp = client.get_experiment_by_name("swish")
    runs = client.search_runs([exp.experiment_id], "tags.`dlbench.role` = 'trial'")
    by_level = {r.data.tags["dlbench.level"]: r for r in runs}
    assert set(by_level) == {"relu", "swish", "sharp"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert by_level["swish"].data.params["activation.name"] == "example_swish"
    assert by_level["swish"].data.params["activation.beta"] == "1.0"
    assert by_level["sharp"].data.params["activation.beta"] == "4.0"
    model = client.download_artifacts(by_level["sharp"].info.run_id, "model.txt", str(tmp_path))
    assert "Swish(beta=4.0)" in open(model, encoding="utf-8").read()


# -- the contract of every built-in component ---------------------------------------------------


def small_mlp(registry, depth=2, activation="relu") -> nn.Module:
    return make(registry, "architecture", {"name": "mlp", "width": 16, "depth": depth}, (40,), 10,
                lambda: make(registry, "activation", {"name": activation}))


@pytest.mark.parametrize("name", names("activation"))
def test_contract_activation(registry, name):
    module = make(registry, "activation", {"name": name})
    assert isinstance(module, nn.Module)
    x = torch.randn(5, 7)
    y = module(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert make(registry, "activation", {"name": name}) is not module  # a fresh module per call


@pytest.mark.parametrize("name", names("architecture"))
def test_contract_architecture(registry, name):
    model = make(registry, "architecture", {"name": name}, (40,), 10, lambda: nn.ReLU())
    assert isinstance(model, nn.Module)
    assert model(torch.randn(3, 40)).shape == (3, 10)


# datasets read from files: tested on tiny files of their formats in test_datasets.py and test_contract.py
FILE_DATASETS = {"mnist", "fashion_mnist", "cifar10", "npz", "csv"}


@pytest.mark.parametrize("name", [n for n in names("dataset") if n not in FILE_DATASETS])
def test_contract_dataset(registry, name):
    factory = registry.get("dataset", name).factory
    ds = factory()
    assert isinstance(ds, Dataset)
    assert len(ds.x_train) == len(ds.y_train) > 0 and len(ds.x_test) == len(ds.y_test) > 0
    assert ds.x_train.dtype.kind == "f" and ds.y_train.dtype.kind == "i"
    assert ds.x_train.shape[1:] == ds.x_test.shape[1:] == ds.input_shape
    labels = set(ds.y_train.tolist()) | set(ds.y_test.tolist())
    assert labels <= set(range(ds.num_classes))
    assert factory().content_hash() == ds.content_hash()  # generated offline, the same every time


@pytest.mark.parametrize("name", names("initializer"))
def test_contract_initializer(registry, tiny_data, name):
    component = registry.get("initializer", name)

    def initialized(seed):
        seed_everything(seed)
        model = small_mlp(registry)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        make(registry, "initializer", {"name": name}, model, tiny_data)
        return model, before

    model, before = initialized(0)
    with torch.no_grad():
        out = model(tiny_data.x_test)
    assert out.shape == (len(tiny_data.y_test), 10) and torch.isfinite(out).all()
    after = model.state_dict()
    if name != "default":
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{name} changed no parameter"
    if component.factory.__module__ == "dlbench.builtin.initializers" and name != "default":
        # data-free schemes: every weight set by the scheme, every bias zero
        for key, value in after.items():
            if key.endswith("bias"):
                assert torch.count_nonzero(value) == 0, key
    again, _ = initialized(0)  # the trial's seed fixes the initialization
    for key, value in again.state_dict().items():
        assert torch.equal(value, after[key]), key


@pytest.mark.parametrize("name", names("optimizer"))
def test_contract_optimizer(registry, name):
    model = small_mlp(registry)
    opt = make(registry, "optimizer", {"name": name}, model.parameters())
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == registry.get("optimizer", name).options["lr"].default
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(torch.randn(8, 40)), torch.randint(0, 10, (8,)))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", names("schedule"))
def test_contract_schedule(registry, name):
    model = small_mlp(registry, depth=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = make(registry, "schedule", {"name": name}, opt, 20)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # starts at the configured lr
    lrs = []
    for _ in range(20):
        opt.step()
        schedule.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(math.isfinite(lr) and 0.0 <= lr <= 0.1 + 1e-12 for lr in lrs)


# what a regularizer needs besides its defaults in the tiny setting (an MLP of width 16 on MNIST-1D)
REGULARIZER_SETUP = {"group_norm": {"regularizers": [{"name": "group_norm", "groups": 4}]},  # 32 groups: 16 units
                     "augment_image": {"dataset": {"name": "digits"}}}  # images, not 1-D signals


@pytest.mark.parametrize("name", names("regularizer"))
def test_contract_regularizer(registry, plugins, tiny_data, make_trials, name):
    reg = make(registry, "regularizer", {"name": name})
    assert isinstance(reg, Regularizer)
    (trial,) = make_trials({"regularizers": [name], "epochs": 1, **REGULARIZER_SETUP.get(name, {})})
    if trial.config["dataset"]["name"] != "mnist1d":
        from dlbench.data import to_device

        dataset = registry.get("dataset", trial.config["dataset"]["name"]).factory()
        tiny_data = to_device(dataset, trial.config["val_fraction"], CPU)
    model, regularizers, _, _ = build(trial, registry, tiny_data, CPU)
    assert [type(r) for r in regularizers] == [type(reg)]
    result = run_trial(trial, registry, tiny_data, CPU, plugins.hook)
    assert isinstance(result, TrialResult)
    assert result.status == "finished"
    assert result.epochs_run == 1 and len(result.history) == 2
    assert all(math.isfinite(v) for v in result.final.values())
