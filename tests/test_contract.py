"""The plugin contract (dlbench/contract/) on every registered component, as timm tests every
registered model; the contract catching broken components; `dlbench plugins show` and `check`."""

from __future__ import annotations

import gzip
import pickle
import re
import textwrap
import tomllib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import cli_env, describe_result, run_cli
from torch import nn

from dlbench.cli import main
from dlbench.contract import CHECKS, FAIL, PASS, SKIP, UNSUPPORTED, check
from dlbench.data import Dataset
from dlbench.docs import toml_example
from dlbench.errors import UserError
from dlbench.plugins import KINDS, load_plugins
from dlbench.preprocessing import Preprocessor
from dlbench.regularizer import Regularizer
from dlbench.stacking import StackedOptimizer, stackable

# Loaded at collection time: the test is parametrized over every component registered now.
REGISTRY = load_plugins(None, autoload=False).registry
COMPONENTS = list(REGISTRY)


def failures(outcomes) -> list[str]:
    return [str(o) for o in outcomes if o.status == FAIL]


# -- tiny files in the real formats, for the datasets that read files ---------------------------


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file (MNIST's format): 0 0 <type 0x08: uint8> <ndim>, big-endian sizes, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def dataset_options(tmp_path_factory) -> dict[str, dict]:
    """Options that make every file-reading dataset read tiny files of its real format (and the
    generated ones small): MNIST and Fashion-MNIST IDX files (one gzipped), CIFAR-10 pickled
    batches, an .npz and a CSV file."""
    root = tmp_path_factory.mktemp("datasets")
    rng = np.random.default_rng(0)
    for folder in ("MNIST", "FashionMNIST"):
        raw = root / folder / "raw"
        raw.mkdir(parents=True)
        for prefix, n in (("train", 30), ("t10k", 10)):
            write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
            write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
        labels = raw / "t10k-labels-idx1-ubyte"
        (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels.read_bytes()))
        labels.unlink()
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (6, 3072)).astype(np.uint8), b"labels": list(range(6))}
        (cifar / name).write_bytes(pickle.dumps(batch, protocol=2))
    np.savez(root / "mine.npz", x=rng.normal(size=(40, 5)).astype(np.float32), y=np.arange(40) % 3)
    rows = "\n".join(f"{a:.3f},{b:.3f},{'cat' if i % 2 else 'dog'}" for i, (a, b) in enumerate(rng.normal(size=(20, 2))))
    (root / "mine.csv").write_text(f"width,height,label\n{rows}\n", encoding="utf-8")
    return {"mnist1d": {"num_samples": 600}, "mnist": {"root": str(root)}, "fashion_mnist": {"root": str(root)},
            "cifar10": {"root": str(root)}, "npz": {"path": str(root / "mine.npz")},
            "csv": {"path": str(root / "mine.csv")}}


# -- every registered component -----------------------------------------------------------------


def test_every_kind_has_a_contract():
    assert set(CHECKS) == set(KINDS.values())


@pytest.mark.parametrize("component", COMPONENTS, ids=[f"{c.kind}:{c.name}" for c in COMPONENTS])
def test_contract(component, dataset_options):
    options = dataset_options.get(component.name, {}) if component.kind == "dataset" else {}
    required = [o.name for o in component.options.values() if o.required and o.name not in options]
    assert not required, f"{component.kind}:{component.name} needs {required}: add tiny files for it to dataset_options"
    outcomes = check(component, REGISTRY, options)
    assert len(outcomes) == len(CHECKS[component.kind])
    assert not failures(outcomes), "\n".join(failures(outcomes))
    assert outcomes[0].status == PASS


@pytest.mark.parametrize("component", COMPONENTS, ids=[f"{c.kind}:{c.name}" for c in COMPONENTS])
def test_example_toml_line_is_a_study_file_line(component):
    line = toml_example(component)
    required = [o.name for o in component.options.values() if o.required]
    placeholder = r"<.*?>(?=\s*[,}\]])"  # <str of length >= 1>
    placeholders = re.findall(r"(\w+) = " + placeholder, line)
    assert placeholders == required  # a required option is a <placeholder> to fill in, nothing else
    value = tomllib.loads(re.sub(placeholder, '"filled in"', line))
    assert len(value) == 1
    spec = next(iter(value.values()))
    spec = spec[0] if isinstance(spec, list) else spec
    name = spec if isinstance(spec, str) else spec["name"]
    assert name == component.name


# -- the contract catches broken components -----------------------------------------------------


class RandomInEval(nn.Module):
    def forward(self, x):
        return torch.relu(x) + 0.01 * torch.randn_like(x)  # noise in eval mode too


def random_in_eval():
    """An activation whose eval mode is random."""
    return RandomInEval()


def gradient_ascent(params, *, lr: float = 0.1):
    """SGD the wrong way round."""
    return _Ascent(params, lr)


class _Ascent(torch.optim.Optimizer):
    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(group["lr"] * p.grad)


class WrongSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x  # should be 2x


class Squared(nn.Module):
    def forward(self, x):
        return WrongSquare.apply(x)


def wrong_square():
    """x^2 with a wrong backward."""
    return Squared()


def slotless(input_shape, num_classes, activation):
    """An architecture without slots."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))


def unseeded(model, data):
    """An initializer drawing from fresh OS entropy, not the trial's seed."""
    rng = np.random.default_rng()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.normal(0, 0.1, tuple(p.shape)).astype(np.float32)))


class StackedSGDWithoutLr(StackedOptimizer):
    @torch.no_grad()
    def step(self, params, lr):
        for p in params:
            p.sub_(p.grad)  # forgets the learning rate


@stackable(stacked=StackedSGDWithoutLr)
def sgd_badly_stacked(params, *, lr: float = 0.1):
    """SGD whose stacked update forgets the learning rate."""
    return torch.optim.SGD(params, lr=lr)


class StackedSGDCountingInPython(StackedOptimizer):
    graph_safe = True  # but the learning rate decays with a Python counter, which a replay would not advance

    def __init__(self, options):
        super().__init__(options)
        self.count = 0

    @torch.no_grad()
    def step(self, params, lr):
        self.count += 1
        for p in params:
            p.sub_(self.per_member(lr, p) * p.grad)


@stackable(stacked=StackedSGDCountingInPython)
def sgd_graph_unsafe(params, *, lr: float = 0.1):
    """SGD whose stacked update says it is graph-safe and keeps a Python counter."""
    return torch.optim.SGD(params, lr=lr)


def noisy_init_drawing_the_stacks_stream(models, data, streams):
    """A stacked form that draws every member's noise from the global stream, not the member's."""
    for model in models:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))


@stackable(stacked=noisy_init_drawing_the_stacks_stream)
def noisy_init(model, data):
    """Adds a little Gaussian noise to the default init."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))


def labels_out_of_range():
    """A dataset whose labels exceed num_classes."""
    x = np.zeros((8, 3), np.float32)
    return Dataset("bad", x, np.arange(8), x, np.arange(8), num_classes=4)


class BatchCentered(Preprocessor):
    """Centers each batch by its own mean: not a function of the example alone."""

    def fit(self, x):
        pass

    def transform(self, x):
        return x - x.mean(0)


class Inflate(Regularizer):
    """A max-norm gone wrong: it doubles every weight after each step."""

    @torch.no_grad()
    def after_step(self, model):
        for p in model.parameters():
            p.mul_(2.0)


@pytest.mark.parametrize("kind, factory, failing, message", [
    ("activation", random_in_eval, "eval mode is deterministic", "two eval-mode forward passes"),
    ("optimizer", gradient_ascent, "a few optimizer steps lower the loss", "expected lower"),
    ("activation", wrong_square, "custom autograd passes a float64 gradcheck", "finite differences"),
    ("initializer", unseeded, "the same seed gives identical parameters", "differs"),
    ("optimizer", sgd_badly_stacked, "a stacked step equals the members' own steps", "StackedSGDWithoutLr"),
    ("optimizer", sgd_graph_unsafe, "its stacked step is CUDA-graph safe (optional)",
     "StackedSGDCountingInPython declares graph_safe = True, but its step changes StackedSGDCountingInPython.count (2 to 3)"),
    ("initializer", noisy_init, "a stacked step equals the members' own steps", "member 0's"),
    ("dataset", labels_out_of_range, "has float inputs, integer labels in range", "class ids in [0, 4)"),
    ("preprocessing", BatchCentered, "transforms each example alone", "depends on the size of the batch"),
    ("regularizer", Inflate, "a few optimizer steps lower the loss", "expected lower"),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_the_contract_catches_a_broken_component(registry_with, kind, factory, failing, message):
    registry, component = registry_with(kind, "broken", factory)
    outcomes = check(component, registry)
    failed = [o for o in outcomes if o.status == FAIL]
    assert [o.check for o in failed if o.check.startswith(failing)], "\n".join(map(str, outcomes))
    assert any(message in o.message for o in failed), "\n".join(map(str, failed))


def test_an_architecture_without_slots_passes_its_slots_reported_not_supported(registry_with):
    """Slots, hidden_blocks and stacking are optional: their absence is reported, never a failure,
    and no other check is skipped for it."""
    registry, component = registry_with("architecture", "slotless", slotless)
    outcomes = check(component, registry)
    assert not failures(outcomes), "\n".join(map(str, outcomes))
    unsupported = [o.check for o in outcomes if o.status == UNSUPPORTED]
    assert unsupported == ["exposes slots for dropout and normalization (optional)",
                           "exposes hidden_blocks for layer-wise initializers (optional)",
                           "a stacked step equals the members' own steps"]
    assert outcomes[0].status == PASS


def test_a_gradient_blocking_negative_control_passes_through_the_head(registry_with):
    """The step function's gradient is zero by design: the output layer still learns, and the
    gradcheck says that no gradient flows through it."""
    class Step(nn.Module):
        def forward(self, x):
            return (x > 0).float()

    registry, component = registry_with("activation", "heaviside", lambda: Step())
    by_check = {o.check: o for o in check(component, registry)}
    assert by_check["a few optimizer steps lower the loss on a fixed batch"].status == PASS
    assert by_check["custom autograd passes a float64 gradcheck"].status == SKIP
    assert "no gradient flows" in by_check["custom autograd passes a float64 gradcheck"].message


def test_options_are_checked_against_the_component(registry_with):
    sgd = REGISTRY.get("optimizer", "sgd")
    with pytest.raises(UserError, match=r"--option lr: must be > 0, got -1"):
        check(sgd, REGISTRY, {"lr": -1})
    with pytest.raises(UserError, match=r"has no option 'lrr'"):
        check(sgd, REGISTRY, {"lrr": 0.1})
    with pytest.raises(UserError, match=r"requires option path: give --option path=\.\.\."):
        check(REGISTRY.get("dataset", "npz"), REGISTRY, {})
    assert check(sgd, REGISTRY, {"lr": 0.05, "momentum": 0.9})[0].status == PASS


def test_lookup_names_the_candidates_of_a_name_several_kinds_have(registry_with):
    registry, _ = registry_with("activation", "constant", random_in_eval)  # also an initializer and a schedule
    with pytest.raises(UserError, match=r"several components; name one as KIND:NAME: activation:constant, "
                                        r"initializer:constant, schedule:constant"):
        registry.lookup("constant")
    assert registry.lookup("schedule:constant").kind == "schedule"
    with pytest.raises(UserError, match=r"did you mean 'relu'"):
        registry.lookup("relux")
    with pytest.raises(UserError, match=r"unknown kind 'activations'"):
        registry.lookup("activations:relu")


# -- the command line ---------------------------------------------------------------------------


BROKEN_PLUGIN = '''
    import torch
    from torch import nn
    from dlbench import hookimpl


    class Jitter(nn.Module):
        def forward(self, x):
            return torch.tanh(x) + 0.01 * torch.randn_like(x)


    def jitter():
        """tanh with noise that stays on in eval mode (a bug)."""
        return Jitter()


    def upsidedown(params, *, lr: float = 0.1):
        """SGD with the sign of the step flipped (a bug)."""
        return torch.optim.SGD(params, lr=lr, maximize=True)


    @hookimpl
    def dlbench_register_activations(register):
        register("jitter", jitter)


    @hookimpl
    def dlbench_register_optimizers(register):
        register("upsidedown", upsidedown)
'''


def test_check_cli_catches_a_broken_third_party_plugin_file(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text(textwrap.dedent(BROKEN_PLUGIN), encoding="utf-8")
    proc = run_cli(["plugins", "check", plugin, "--option", "lr=0.05"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 1, describe_result(proc)
    lines = proc.stdout.splitlines()
    assert any(line.startswith("FAIL  activation:jitter  eval mode is deterministic: two eval-mode forward passes")
               for line in lines), proc.stdout
    assert any(line.startswith("FAIL  optimizer:upsidedown  a few optimizer steps lower the loss") and "expected lower"
               in line for line in lines), proc.stdout
    assert any(line.startswith("PASS  activation:jitter  builds on a tiny input") for line in lines), proc.stdout
    # neither stacks: reported, not failed (the optimizer's CUDA-graph safety with it)
    assert [line.split(": not supported")[0] for line in lines if line.startswith("INFO")] == [
        "INFO  activation:jitter  a stacked step equals the members' own steps",
        "INFO  optimizer:upsidedown  a stacked step equals the members' own steps",
        "INFO  optimizer:upsidedown  its stacked step is CUDA-graph safe (optional)"], proc.stdout
    assert "2 failed" in lines[-1] and "of 2 components" in lines[-1], proc.stdout
    assert "Traceback" not in proc.stderr


def test_show_cli_prints_the_documentation_options_and_a_study_file_line(tmp_path):
    proc = run_cli(["plugins", "show", "schedule:cosine"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    out = proc.stdout
    assert out.startswith("schedule 'cosine'  [built-in]\nsource: ")
    assert "dlbench/builtin/schedules.py:" in out
    assert "Cosine annealing (Loshchilov & Hutter 2017)" in out
    assert "  final_fraction: float >= 0 and <= 1, default 0.0" in out
    assert "stacks: yes" in out
    line = out.rstrip().splitlines()[-1].strip()
    assert tomllib.loads(line) == {"schedule": {"name": "cosine", "final_fraction": 0.0, "warmup_fraction": 0.0}}


@pytest.mark.parametrize("args, message", [
    (["plugins", "check", "relux"], "no component is named 'relux': did you mean 'relu'?"),
    (["plugins", "show", "nosuch:relu"], "unknown kind 'nosuch'"),
    (["plugins", "check", "missing.py"], "missing.py: no such plugin file"),
    (["plugins", "check", "sgd", "--option", "lr=-1"], "--option lr: must be > 0, got -1"),
    (["plugins", "check", "sgd", "--option", "lr"], "write KEY=VALUE"),
])
def test_usage_errors_exit_2_without_a_traceback(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exc_info is None or result.exc_info[0] is SystemExit


def test_check_cli_of_a_plugin_file_that_fails_to_import_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "typo.py").write_text("import torch\nthis is not python\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["plugins", "check", "typo.py"])
    assert result.exit_code == 2, result.output
    assert "typo.py failed to import: NameError" in result.output
