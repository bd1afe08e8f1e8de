"""What a component needs and what it merely supports (issue 25): a plain, idiomatic PyTorch
model passes the plugin contract with its optional capabilities (slots, hidden_blocks, stacking)
reported as not supported, trains in a study that needs none of them, and a study that needs one
it lacks is refused by the preflight, naming the capability, the component and the key. A
BatchNorm model wrongly marked ``@stackable`` fails the stacked check, naming the buffer."""

from __future__ import annotations

import textwrap

import pytest
import torch
from conftest import TINY_BASELINE, cli_env, describe_result, run_cli, sqlite_uri, write_plugin, write_study
from torch import nn

from dlbench.config import read_study_file
from dlbench.contract import CHECKS, FAIL, PASS, SKIP, UNSUPPORTED, Outcome, check, summary
from dlbench.plugins import load_plugins
from dlbench.preflight import PreflightError, preflight
from dlbench.slots import Slot, asking, hidden_blocks, lacking, slots
from dlbench.stacking import component_stacks, stackable
from dlbench.study import expand

# A plugin written from PyTorch habits alone: no slots, hidden layers in an nn.ModuleList, not stackable.
IDIOMATIC = '''
import math

from torch import nn

from dlbench import hookimpl


class Plain(nn.Module):
    def __init__(self, in_features, num_classes, activation, width, depth):
        super().__init__()
        sizes = [in_features] + [width] * depth
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(a, b), activation()) for a, b in zip(sizes, sizes[1:]))
        self.head = nn.Sequential(nn.Linear(width, num_classes))

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def mine(input_shape, num_classes, activation, *, width: int = 16, depth: int = 2):
    """A plain MLP: hidden layers in an nn.ModuleList, no slots."""
    return Plain(math.prod(input_shape), num_classes, activation, width, depth)


@hookimpl
def dlbench_register_architectures(register):
    register("mine", mine)
'''

OPTIONAL_ARCHITECTURE_CHECKS = ["exposes slots for dropout and normalization (optional)",
                                "exposes hidden_blocks for layer-wise initializers (optional)",
                                "a stacked step equals the members' own steps"]


class BatchNormMLP(nn.Module):
    def __init__(self, in_features, num_classes, activation):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.BatchNorm1d(32), activation(),
                                 nn.Linear(32, num_classes))

    def forward(self, x):
        return self.net(x)


@stackable  # wrongly: BatchNorm keeps batch statistics in buffers it updates in place
def batchnorm_mlp(input_shape, num_classes, activation):
    """A small MLP with nn.BatchNorm1d, wrongly marked stackable."""
    return BatchNormMLP(int(torch.tensor(input_shape).prod()), num_classes, activation)


def blocks_as(container):
    """An architecture whose hidden_blocks is ``container`` of its hidden layers."""
    class Net(nn.Module):
        def __init__(self, in_features, num_classes, activation):
            super().__init__()
            self.first = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 16), activation())
            self.second = nn.Sequential(nn.Linear(16, 16), activation())
            self.head = nn.Linear(16, num_classes)

        @property
        def hidden_blocks(self):
            return container([self.first, self.second])

        def forward(self, x):
            return self.head(self.second(self.first(x)))

    def factory(input_shape, num_classes, activation):
        """An MLP exposing its hidden blocks."""
        return Net(int(torch.tensor(input_shape).prod()), num_classes, activation)

    return factory


def misdeclared_slot(input_shape, num_classes, activation):
    """A slot declaring 8 features where 16 flow."""
    n = int(torch.tensor(input_shape).prod())
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 16), Slot("norm", 8), activation(), nn.Linear(16, num_classes))


def hidden_blocks_not_chaining(input_shape, num_classes, activation):
    """hidden_blocks whose second block cannot take the first's output."""
    n = int(torch.tensor(input_shape).prod())
    model = nn.Sequential(nn.Flatten(), nn.Linear(n, 16), activation(), nn.Linear(16, num_classes))
    model.hidden_blocks = [nn.Sequential(nn.Flatten(), nn.Linear(n, 16)), nn.Linear(7, 3)]
    return model


def by_check(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.check: o for o in outcomes}


# -- the contract: needed vs supported ------------------------------------------------------------


def test_a_plain_model_passes_with_its_optional_capabilities_reported_not_supported(tmp_path):
    plugin = write_plugin(tmp_path, "mine", IDIOMATIC)
    registry = load_plugins(tmp_path / "plugins", autoload=False).registry
    outcomes = check(registry.get("architecture", "mine"), registry)
    assert not [o for o in outcomes if o.status == FAIL], "\n".join(map(str, outcomes))
    got = by_check(outcomes)
    assert got["exposes slots for dropout and normalization (optional)"].status == UNSUPPORTED
    assert got["a stacked step equals the members' own steps"].status == UNSUPPORTED
    assert got["exposes hidden_blocks for layer-wise initializers (optional)"].status == UNSUPPORTED
    assert all(got[name].status == PASS for name in ["builds on a tiny input",
                                                      "a few optimizer steps lower the loss on a fixed batch",
                                                      "the same seed gives identical parameters and outputs",
                                                      "eval mode is deterministic"])
    assert str(got["exposes slots for dropout and normalization (optional)"]).startswith(
        "INFO  architecture:mine  exposes slots for dropout and normalization (optional): not supported: ")
    assert plugin.exists()


@pytest.mark.parametrize("container", [list, tuple, nn.ModuleList, lambda b: nn.Sequential(*b)],
                         ids=["list", "tuple", "ModuleList", "Sequential"])
def test_any_sequence_of_modules_counts_as_hidden_blocks(registry_with, container):
    registry, component = registry_with("architecture", "blocks", blocks_as(container))
    got = by_check(check(component, registry))
    outcome = got["exposes hidden_blocks for layer-wise initializers (optional)"]
    assert outcome.status == PASS and "2 blocks" in outcome.message, outcome
    model = component.factory((40,), 4, nn.ReLU)
    assert [type(b) for b in hidden_blocks(model)] == [nn.Sequential, nn.Sequential]


@pytest.mark.parametrize("container", [list, nn.ModuleList, lambda b: nn.Sequential(*b)],
                         ids=["list", "ModuleList", "Sequential"])
def test_greedy_pretraining_reads_any_sequence_of_hidden_blocks(registry, tiny_data, container):
    model = blocks_as(container)((40,), 10, nn.ReLU)
    before = [p.detach().clone() for p in model.second.parameters()]
    registry.get("initializer", "greedy_autoencoder").factory(model, tiny_data, epochs=1)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.second.parameters()))


@pytest.mark.parametrize("factory, name, message", [
    (misdeclared_slot, "exposes slots for dropout and normalization (optional)",
     "a 'norm' slot declares features=8, spatial_dims=0 but sees a tensor of shape (32, 16)"),
    (hidden_blocks_not_chaining, "exposes hidden_blocks for layer-wise initializers (optional)",
     "hidden block 1 (Linear) does not take the output of block 0"),
    (blocks_as(lambda b: nn.ModuleDict({"a": b[0]})), "exposes hidden_blocks for layer-wise initializers (optional)",
     "must be a sequence of modules"),
], ids=["slot", "chain", "dict"])
def test_a_capability_declared_but_broken_fails_and_every_other_check_still_runs(registry_with, factory, name,
                                                                                 message):
    registry, component = registry_with("architecture", "broken", factory)
    outcomes = check(component, registry)
    assert len(outcomes) == len(CHECKS["architecture"])
    failed = [o for o in outcomes if o.status == FAIL]
    assert [o.check for o in failed] == [name], "\n".join(map(str, outcomes))
    assert message in failed[0].message
    assert not [o for o in outcomes if o.status == SKIP and o.message.startswith("not run")]


def test_a_batchnorm_model_marked_stackable_fails_the_stacked_check_naming_the_buffer(registry_with):
    registry, component = registry_with("architecture", "bn", batchnorm_mlp)
    assert component_stacks(component)
    got = by_check(check(component, registry))
    stacked = got["a stacked step equals the members' own steps"]
    assert stacked.status == FAIL, stacked
    assert "running_mean" in stacked.message and "batch statistics" in stacked.message, stacked
    assert all(got[name].status == PASS for name in ["builds on a tiny input", "eval mode is deterministic"])


REGISTRY = load_plugins(None, autoload=False).registry
STACKABLE = [c for c in REGISTRY if c.kind in ("architecture", "activation") and component_stacks(c)]


@pytest.mark.parametrize("component", STACKABLE, ids=[f"{c.kind}:{c.name}" for c in STACKABLE])
def test_the_builtin_stackable_architectures_and_activations_still_stack(component):
    stacked = by_check(check(component, REGISTRY))["a stacked step equals the members' own steps"]
    assert stacked.status == PASS, stacked
    assert "training steps" in stacked.message, stacked


def test_the_summary_counts_every_outcome_once():
    outcomes = [Outcome("a:b", "x", s) for s in (PASS, PASS, FAIL, SKIP, UNSUPPORTED, UNSUPPORTED)]
    assert summary(outcomes, 1) == ("6 checks of 1 component: 2 passed, 1 failed, 1 skipped (not applicable), "
                                    "2 not supported (optional)")
    assert summary(outcomes[:2], 2) == "2 checks of 2 components: 2 passed, 0 failed, 0 skipped (not applicable)"


def test_slots_and_hidden_blocks_record_what_was_asked():
    model = nn.Sequential(nn.Linear(3, 3), Slot("hidden", 3))
    with asking() as asked:
        slots(model, "hidden"), slots(model, "norm"), hidden_blocks(model)
    assert asked == [("hidden slots", 1), ("norm slots", 0), ("hidden_blocks", 0)]
    assert lacking(asked) == []  # it found something to act on
    assert lacking([("input slots", 0), ("hidden slots", 0)]) == ["input slots", "hidden slots"]
    slots(model, "hidden")  # outside: nothing recorded, nothing raised


# -- the command line and the preflight -------------------------------------------------------------


def test_check_cli_passes_a_plain_model_listing_what_it_does_not_support(tmp_path):
    plugin = tmp_path / "mine.py"
    plugin.write_text(textwrap.dedent(IDIOMATIC), encoding="utf-8")
    proc = run_cli(["plugins", "check", plugin], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    lines = proc.stdout.splitlines()
    assert not [line for line in lines if line.startswith("FAIL")], proc.stdout
    for name in OPTIONAL_ARCHITECTURE_CHECKS:
        assert any(line.startswith(f"INFO  architecture:mine  {name}: not supported: ") for line in lines), proc.stdout
    assert "0 failed" in lines[-1], proc.stdout
    assert "Traceback" not in proc.stderr


def mine_study(regularizers: str) -> str:
    return TINY_BASELINE.replace('{ name = "mlp", width = 16, depth = 1 }', '"mine"') + f"""
[study]
name = "plain"
seeds = 1
[studies.x.levels]
on = {{ regularizers = {regularizers} }}
"""


def test_the_preflight_refuses_a_capability_the_architecture_lacks_naming_both(tmp_path):
    plugin = write_plugin(tmp_path, "mine", IDIOMATIC)
    registry = load_plugins(tmp_path / "plugins", autoload=False).registry
    sf = read_study_file(write_study(tmp_path, mine_study('[{ name = "dropout" }, { name = "batch_norm" }]')
                                     .replace("[studies.x.levels]", "[studies.x.levels]\n"
                                              'pre = { initializer = "greedy_autoencoder" }')))
    with pytest.raises(PreflightError) as info:
        preflight(sf, expand(sf, registry), registry)
    problems = info.value.problems
    arch = f"baseline.architecture (architecture 'mine' [local ({plugin})]) exposes none"
    expected = [
        "studies.x.levels.on.regularizers[0] (regularizer 'dropout' [built-in]) needs an architecture with "
        "hidden or input slots (dlbench.Slot); " + arch,
        "studies.x.levels.pre.initializer (initializer 'greedy_autoencoder' [built-in]) needs an architecture with "
        "hidden_blocks (a sequence of modules, one per hidden layer); " + arch,
    ]
    assert len(problems) == 2, problems
    for start in expected:
        assert any(p.startswith(start) for p in problems), problems


def test_the_preflight_passes_a_plain_model_without_slot_needing_components(tmp_path):
    write_plugin(tmp_path, "mine", IDIOMATIC)
    registry = load_plugins(tmp_path / "plugins", autoload=False).registry
    sf = read_study_file(write_study(tmp_path, mine_study("[]")))
    assert preflight(sf, expand(sf, registry), registry).configs == 1


@pytest.mark.slow  # real dlbench processes
def test_a_plain_model_trains_without_dropout_and_is_refused_with_it(tmp_path):
    here, there = tmp_path / "plain", tmp_path / "dropout"
    for folder in (here, there):
        write_plugin(folder, "mine", IDIOMATIC)
    plain = write_study(here, mine_study("[]"))
    dropout = write_study(there, mine_study('[{ name = "dropout", p_hidden = 0.3 }]'))
    env = cli_env(autoload=False)
    ran = run_cli(["run", plain, "--tracking-uri", sqlite_uri(here / "m.db"), "--jobs", "1"], cwd=here, env=env)
    assert ran.returncode == 0, describe_result(ran)
    refused = run_cli(["run", dropout, "--tracking-uri", sqlite_uri(there / "n.db"), "--jobs", "1"], cwd=there, env=env)
    assert refused.returncode == 2, describe_result(refused)
    assert "studies.x.levels.on.regularizers[0] (regularizer 'dropout' [built-in]) needs an architecture with " \
           "hidden or input slots" in refused.stderr, describe_result(refused)
    assert "architecture 'mine' [local (" in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(p.name for p in there.iterdir()) == ["plugins", "study.toml"]  # nothing trained or logged


def test_check_cli_summary_counts_the_unsupported_capabilities(tmp_path):
    plugin = tmp_path / "mine.py"
    plugin.write_text(textwrap.dedent(IDIOMATIC), encoding="utf-8")
    proc = run_cli(["plugins", "check", plugin], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.stdout.splitlines()[-1] == ("8 checks of 1 component: 4 passed, 0 failed, 1 skipped (not applicable), "
                                           "3 not supported (optional)"), proc.stdout
