"""The built-in architectures: shapes, slots, hidden blocks, skip connections, input-shape checks,
and, for those declared stackable, that a stacked member trains as the trial alone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlbench.builtin.pretraining import greedy_autoencoder
from dlbench.data import DeviceData
from dlbench.shapes import InputShapeError, accepted_ranks, check_input_shape
from dlbench.slots import slots
from dlbench.planning import Work, plan, stack_id
from dlbench.stacking import is_stackable
from dlbench.train import run_trial
from dlbench.train_stack import run_stack

from conftest import TINY_BASELINE, NoHooks, describe_result, run_cli, write_study

SHAPES = {1: (40,), 2: (8, 8), 3: (3, 8, 8)}
NEW = ["residual_mlp", "highway_mlp", "cnn", "resnet", "rnn", "gru", "lstm"]
SMALL = {"residual_mlp": {"width": 16}, "highway_mlp": {"width": 16}, "cnn": {"channels": [4, 8], "width": 16},
         "resnet": {"channels": [4, 8]}, "rnn": {"width": 8}, "gru": {"width": 8}, "lstm": {"width": 8},
         "mlp": {"width": 16}}


def build(registry, name: str, shape, **options) -> nn.Module:
    torch.manual_seed(0)
    return registry.get("architecture", name).factory(shape, 10, nn.Tanh, **{**SMALL[name], **options})


def cases(names: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """(architecture, input shape) for every rank each architecture accepts."""
    from dlbench.plugins import load_plugins

    registry = load_plugins(None, autoload=False).registry
    return [(name, SHAPES[r]) for name in names for r in accepted_ranks(registry.get("architecture", name).factory) or SHAPES]


CASES = cases(NEW + ["mlp"])


@pytest.mark.parametrize("name, shape", CASES, ids=[f"{n}-{len(s)}d" for n, s in CASES])
def test_logits_slots_and_hidden_blocks(name, shape, registry):
    model = build(registry, name, shape)
    seen = {}  # each slot's input shape, from a forward pass

    def record(slot, args, out):
        seen[slot] = tuple(args[0].shape)

    for s in slots(model, "input") + slots(model, "norm") + slots(model, "hidden"):
        s.register_forward_hook(record)
    x = torch.rand(5, *shape)
    assert model(x).shape == (5, 10)

    (inp,) = slots(model, "input")  # before the first layer: the whole input (an MLP's flattened)
    assert seen[inp][0] == 5 and math.prod(seen[inp][1:]) == math.prod(shape)
    norms, hidden = slots(model, "norm"), slots(model, "hidden")
    assert norms and hidden
    for s in norms + hidden:  # features: the channel axis the slot sees; spatial_dims: the axes after it
        assert s in seen, f"{s} is not on the forward path"
        assert seen[s][1] == s.features and len(seen[s]) - 2 == s.spatial_dims, (s, seen[s])
    with torch.no_grad():  # the hidden blocks chain from the input batch
        h = x
        for block in model.hidden_blocks:
            h = block(h)
    assert h.shape[0] == 5


@pytest.mark.parametrize("name, shape", CASES, ids=[f"{n}-{len(s)}d" for n, s in CASES])
def test_greedy_pretraining_trains_every_hidden_block(name, shape, registry):
    model = build(registry, name, shape)
    x = torch.rand(32, *shape)
    y = torch.arange(32) % 10
    data = DeviceData(x, y, x[:4], y[:4], x[:4], y[:4], 10, shape, "test")
    before = [[p.detach().clone() for p in block.parameters()] for block in model.hidden_blocks]
    torch.manual_seed(0)
    greedy_autoencoder(model, data, epochs=2, batch_size=16, lr=1e-2)
    for i, (block, old) in enumerate(zip(model.hidden_blocks, before)):
        assert any(not torch.equal(p, q) for p, q in zip(block.parameters(), old)), f"block {i} was not trained"
    assert model(x).shape == (32, 10)


def test_mlps_accept_any_shape_and_the_others_what_they_declare(registry):
    for name in ("mlp", "residual_mlp", "highway_mlp"):
        assert accepted_ranks(registry.get("architecture", name).factory) is None
        for shape in SHAPES.values():
            check_input_shape(registry, name, "dataset 'x'", shape)
    with pytest.raises(InputShapeError) as err:
        check_input_shape(registry, "gru", "dataset 'digits'", (8, 8))
    assert err.value.accepting == ["cnn", "highway_mlp", "mlp", "residual_mlp", "resnet"]
    assert "(8, 8)" in str(err.value) and "rank 1" in str(err.value)


def test_residual_blocks_are_the_identity_plus_their_branch_and_carry_the_gradient(registry):
    model = build(registry, "residual_mlp", (40,), depth=3)
    block = model.blocks[0]
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.branch(x))
        block.branch[-1].weight.zero_()
        block.branch[-1].bias.zero_()
        assert torch.equal(block(x), x)  # a zero branch is exactly the identity

    def first_layer_grad(name):  # 20 sigmoid layers: the plain MLP's first gradient all but vanishes
        torch.manual_seed(0)
        m = registry.get("architecture", name).factory((40,), 10, nn.Sigmoid, depth=20, width=16)
        nn.functional.cross_entropy(m(torch.randn(64, 40)), torch.arange(64) % 10).backward()
        first = m.blocks[0][0] if name == "mlp" else m.stem[0]
        return first.weight.grad.norm().item()

    assert first_layer_grad("residual_mlp") > 100 * first_layer_grad("mlp")


def test_highway_gate_bias_sets_how_much_input_is_carried(registry):
    x = torch.randn(4, 16)
    carry = build(registry, "highway_mlp", (40,), gate_bias=-20.0).blocks[0]
    transform = build(registry, "highway_mlp", (40,), gate_bias=20.0).blocks[0]
    with torch.no_grad():
        assert torch.allclose(carry(x), x, atol=1e-6)  # T ~ 0: y = x
        assert torch.allclose(transform(x), transform.transform(x), atol=1e-6)  # T ~ 1: y = H(x)
    model = build(registry, "highway_mlp", (40,))
    assert all(torch.all(b.gate_bias == -1.0) for b in model.blocks)  # the default: carry at first
    registry.get("initializer", "xavier").factory(model, None)
    assert all(torch.all(b.gate_bias == -1.0) for b in model.blocks)  # initializers keep b_T


def test_recurrent_nets_read_chunks_and_keep_torchs_weight_names(registry):
    model = build(registry, "lstm", (40,), chunk=4, depth=2)
    seen = []
    model.layers[0][0].rnn.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    assert model(torch.rand(3, 40)).shape == (3, 10)
    assert seen == [(3, 10, 4)]  # 10 steps of 4 values
    names = [n for n, _ in model.named_parameters()]
    assert sum(n.endswith("weight_hh_l0") for n in names) == 2  # one torch module per layer
    with pytest.raises(ValueError, match="chunk = 3 does not divide the signal length 40.*1, 2, 4, 5, 8"):
        build(registry, "gru", (40,), chunk=3)


def test_convnets_refuse_more_stages_than_the_input_has_room_for(registry):
    with pytest.raises(ValueError, match=r"40 -> 20 -> 10 -> 5 -> 2 -> 1.*stage 6 .*give at most 5 entries"):
        build(registry, "cnn", (40,), channels=[2] * 6)
    build(registry, "cnn", (40,), channels=[2] * 6, pooling="none")
    build(registry, "resnet", (8, 8), channels=[2, 2, 2, 2])  # 8 -> 4 -> 2 -> 1
    with pytest.raises(ValueError, match=r"stage 5 cannot halve a map of size \(1, 1\); give at most 4"):
        build(registry, "resnet", (8, 8), channels=[2, 2, 2, 2, 2])


# -- stacked members agree with the trial alone ---------------------------------------------------


@pytest.mark.parametrize("name", [n for n in NEW if n not in ("rnn", "gru", "lstm")])
def test_stackable_architectures_train_in_a_stack_as_alone(name, registry, make_trials, tiny_data):
    assert is_stackable(registry.get("architecture", name).factory)
    trials = make_trials({"architecture": {"name": name, **SMALL[name]}}, seeds=[0, 1])
    (work,) = plan(trials, registry, max_size=8)
    assert work.stacked
    results = {}
    run_stack(Work(tuple(trials), stack_id(trials)), registry, tiny_data, torch.device("cpu"), NoHooks(),
              lambda trial, result: results.__setitem__(trial.index, result))
    for trial in trials:
        solo = run_trial(trial, registry, tiny_data, torch.device("cpu"), NoHooks())
        for epoch, (a, b) in enumerate(zip(results[trial.index].history, solo.history, strict=True)):
            for key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), (epoch, key)


def test_recurrent_nets_train_alone(registry, make_trials):
    trials = make_trials({"architecture": {"name": "gru", "width": 8}}, seeds=[0, 1])
    works = plan(trials, registry, max_size=8)
    assert len(works) == 2 and all("architecture 'gru'" in w.alone_because for w in works)


# -- through the CLI ------------------------------------------------------------------------------


def test_a_shape_mismatch_or_an_option_that_cannot_fit_is_a_study_file_error(tmp_path):
    study = write_study(tmp_path, TINY_BASELINE + """
        [study]
        name = "shapes"

        [studies.arch]
        [studies.arch.levels]
        gru_on_digits = { dataset = { name = "digits" }, architecture = { name = "gru", width = 8 } }
        deep_cnn = { architecture = { name = "cnn", channels = [2, 2, 2, 2, 2, 2] } }
        odd_chunk = { architecture = { name = "lstm", chunk = 7 } }
        fine = { dataset = { name = "digits" }, architecture = { name = "cnn", channels = [2] } }
    """)
    proc = run_cli(["run", study, "--dry-run"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, describe_result(proc)
    assert "Traceback" not in out and "3 problems" in out, out
    assert ("studies.arch.levels.gru_on_digits.architecture: architecture 'gru' reads inputs of rank 1 ((L,): 1-D "
            "signals), but dataset 'digits' gives examples of shape (8, 8) (rank 2); architectures that accept "
            "rank 2: cnn, highway_mlp, mlp, residual_mlp, resnet (the dataset: "
            "studies.arch.levels.gru_on_digits.dataset)") in " ".join(out.split()), out
    assert "studies.arch.levels.deep_cnn.architecture (architecture 'cnn' [built-in]) raised ValueError: 6 pooling" \
        in " ".join(out.split()), out
    assert "give at most 5 entries in channels" in out and "chunk = 7 does not divide the signal length 40" in out
    assert "fine" not in out.split("problems", 1)[1]
