"""A stack's training steps replayed from CUDA graphs (``dlbench/step_graph.py``).

On a CPU there is no CUDA graph: these tests stand a recording "graph" in for it (captured,
it keeps the step function; replayed, it calls it), which checks everything but the capture
itself: which steps run eagerly, that each step's batch and learning rates reach the graph's
input tensors, that graphs are dropped when members leave. ``DLBENCH_TEST_DEVICE=cuda`` (as
``benchmarks/gpu_check.sh`` runs them) uses real graphs: the same results, bit for bit.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from conftest import NoHooks
from dlbench import step_graph
from dlbench.regularizer import StackedRegularizer
from dlbench.planning import Work, stack_id
from dlbench.stacking import StackedOptimizer
from dlbench.step_graph import WARMUP, GraphedStep, graphs_wanted, why_not_graphed
from dlbench.train_stack import run_stack

DEVICE = torch.device(os.environ.get("DLBENCH_TEST_DEVICE", "cpu"))


class Recorded:
    """What a test on a CPU has instead of a CUDA graph: the step, kept to be called on replay."""

    captured = 0

    def __init__(self, step):
        self.step = step
        Recorded.captured += 1

    def replay(self):
        self.step()


@pytest.fixture
def graphs(monkeypatch):
    """Graphs for the stacks these tests train: real ones on a GPU, recorded ones on a CPU."""
    if DEVICE.type != "cuda":
        monkeypatch.setattr(step_graph, "_cuda_capture", Recorded)
        monkeypatch.setattr("dlbench.train_stack.graphs_wanted", lambda setting, device: setting != "off")
    Recorded.captured = 0


@pytest.fixture(scope="module")
def tiny_data(registry):
    from dlbench.data import to_device
    from dlbench.determinism import set_determinism

    set_determinism(True, DEVICE)
    return to_device(registry.get("dataset", "mnist1d").factory(num_samples=600), 0.1, DEVICE)


def train(trials, registry, data, cuda_graphs, hook=None):
    results = {}
    run_stack(Work(tuple(trials), stack_id(trials)), registry, data, DEVICE, hook or NoHooks(),
              lambda trial, result: results.__setitem__(trial.index, result), cuda_graphs=cuda_graphs)
    return {i: results[i].history for i in sorted(results)}


def same(a, b) -> bool:
    """Equal bit for bit (repr writes a float exactly), a NaN of a diverged member included."""
    return repr(a) == repr(b)


@pytest.mark.parametrize("setup", [
    {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
     "regularizers": [{"name": "dropout", "p_input": 0.1, "p_hidden": 0.3}, {"name": "input_noise", "std": 0.1},
                      {"name": "max_norm", "max_norm": 2.0}]},
    {"optimizer": {"name": "adam", "lr": 0.01}, "regularizers": [{"name": "l2", "weight": 1e-3},
                                                                 {"name": "grad_clip", "max_norm": 0.5}],
     "schedule": {"name": "cosine", "warmup_fraction": 0.2}},
], ids=["sgd-dropout-noise-maxnorm", "adam-l2-clip-cosine"])
def test_graphed_steps_give_the_eager_stack_bit_for_bit(setup, graphs, make_trials, registry, tiny_data):
    trials = make_trials({**setup, "epochs": 3, "diagnostics_every": 4}, seeds=[0, 1, 2])
    eager = train(trials, registry, tiny_data, "off")
    graphed = train(trials, registry, tiny_data, "on")
    assert same(graphed, eager)  # every metric of every epoch, random draws included
    if DEVICE.type != "cuda":
        assert Recorded.captured == 2  # a full batch and the epoch's last, smaller one


def test_a_member_leaving_drops_the_graphs_and_the_others_go_on_exactly(graphs, make_trials, registry, tiny_data):
    trials = make_trials({"optimizer": {"name": "sgd", "lr": 0.05}, "epochs": 4},
                         levels={"ok": {}, "explodes": {"optimizer": {"lr": 1e6}}}, seeds=[0, 1])
    eager = train(trials, registry, tiny_data, "off")
    graphed = train(trials, registry, tiny_data, "on")
    assert same(graphed, eager)
    assert all(len(h) == 5 for i, h in graphed.items() if trials[i - 1].level == "ok")
    assert any(len(h) < 5 for i, h in graphed.items() if trials[i - 1].level == "explodes")  # diverged early
    if DEVICE.type != "cuda":
        assert Recorded.captured == 4  # captured again (two shapes) for the stack without them


def test_a_stack_records_whether_it_replayed_graphs(graphs, make_trials, registry, tiny_data):
    starts = []

    class Starts(NoHooks):
        def dlbench_trial_start(self, trial, model, info):
            starts.append(info["stack"]["cuda_graphs"])

    trials = make_trials({"epochs": 1}, seeds=[0, 1])
    train(trials, registry, tiny_data, "on", hook=Starts())
    train(trials, registry, tiny_data, "off", hook=Starts())
    assert starts == [True, True, False, False]


# -- the step runner ------------------------------------------------------------------------------


def test_warm_up_eagerly_then_one_graph_per_batch_shape_fed_each_steps_inputs():
    seen = []
    step = GraphedStep(lambda idx: seen.append(("grads", idx.tolist())), lambda lr: seen.append(("lr", lr.tolist())),
                       enabled=True, capture=Recorded)
    batches = [torch.tensor([[k, k + 1]]) for k in range(WARMUP + 3)] + [torch.tensor([[9]])] * 2
    for k, idx in enumerate(batches):
        step(idx, torch.tensor([float(k)]))
    assert seen == [x for k, idx in enumerate(batches) for x in (("grads", idx.tolist()), ("lr", [float(k)]))]
    assert (step.captures, step.replays) == (2, len(batches) - WARMUP)  # the 1-wide batch: no new warm-up

    observed = []
    step(batches[0], torch.tensor([0.0]), observe=lambda: observed.append(seen[-1]))
    assert observed == [("grads", batches[0].tolist())] and seen[-1] == ("lr", [0.0])  # before the update, eagerly
    assert step.replays == len(batches) - WARMUP

    step.reset()
    for idx in batches[:WARMUP]:
        step(idx, torch.tensor([0.0]))
    assert step.captures == 2  # a reset stack warms up again before capturing


def test_a_capture_that_fails_turns_graphs_off_and_the_step_still_runs():
    def broken(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    runs = []
    step = GraphedStep(lambda idx: runs.append("grads"), lambda lr: runs.append("update"), enabled=True,
                       capture=broken)
    with pytest.warns(UserWarning, match="CUDA graphs turned off for this stack"):
        for _ in range(WARMUP + 2):
            step(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1))
    assert runs == ["grads", "update"] * (WARMUP + 2) and not step.enabled


def test_graphs_only_where_asked_and_on_a_gpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert not graphs_wanted("on", cpu) and not graphs_wanted("auto", cpu) and not graphs_wanted("off", gpu)
    assert graphs_wanted("on", gpu) and graphs_wanted("auto", gpu) == step_graph.AUTO_ON_CUDA
    with pytest.raises(ValueError, match="auto, on, off"):
        graphs_wanted("yes", gpu)


def test_only_components_that_promise_graph_safety_are_captured(registry):
    from dlbench.builtin.augmentation import StackedAugment1d
    from dlbench.builtin.optimizers import StackedSGD

    class Counting(StackedOptimizer):  # an older plugin that counts by hand: still works, never captured
        def step(self, params, lr):
            self.steps += 1

    class Clamp(StackedRegularizer):
        def after_step(self, params):
            pass

    sgd = StackedSGD({"lr": torch.ones(1), "momentum": torch.zeros(1), "weight_decay": torch.zeros(1),
                      "nesterov": False})
    assert why_not_graphed(sgd, [StackedRegularizer([])]) == ""  # dropout's: nothing in the step
    assert "Counting does not declare graph_safe" in why_not_graphed(Counting({}), [])
    assert "Clamp does not declare graph_safe" in why_not_graphed(sgd, [Clamp([])])
    assert "StackedAugment1d" in why_not_graphed(sgd, [StackedAugment1d([])])
    counting = Counting({})
    counting.step([], torch.ones(1))
    counting.step([], torch.ones(1))
    assert counting.steps == 2 and counting.state_dict()["steps"] == 2


def test_the_step_count_lives_on_the_device_and_survives_a_checkpoint():
    from dlbench.builtin.optimizers import StackedAdam

    options = {"beta1": torch.full((2,), 0.9), "beta2": torch.full((2,), 0.999), "eps": torch.full((2,), 1e-8),
               "weight_decay": torch.zeros(2)}
    p = torch.ones(2, 3, requires_grad=True)
    p.grad = torch.ones(2, 3)
    adam = StackedAdam(options)
    for _ in range(3):
        adam.step([p], torch.full((2,), 0.1))
    assert adam.steps == 3
    again = StackedAdam(options)
    again.load_state_dict(copy.deepcopy(adam.state_dict()))  # as a checkpoint file gives it back
    q = p.detach().clone().requires_grad_()
    q.grad = torch.ones(2, 3)
    adam.step([p], torch.full((2,), 0.1))
    again.step([q], torch.full((2,), 0.1))
    assert again.steps == 4 and torch.equal(p, q)  # the 4th step's bias correction, in both


def test_a_stacked_regularizers_values_are_made_once_and_follow_its_members():
    class Member:
        def __init__(self, std):
            self.std = std

    reg = StackedRegularizer([Member(0.1), Member(0.2), Member(0.3)])
    like = torch.zeros(1)
    first = reg.values("std", like)
    assert reg.values("std", like) is first  # no copy from the host at every step
    reg.select([2, 0])
    assert reg.values("std", like).tolist() == pytest.approx([0.3, 0.1])


# -- a trial with no partner: a stack of one ------------------------------------------------------


def test_on_a_gpu_a_lone_trial_is_a_stack_of_one_when_graph_safe(make_trials, registry):
    from dlbench.planning import plan

    trials = make_trials({}, levels={"narrow": {}, "wide": {"architecture": {"width": 32}},
                                     "augmented": {"regularizers": [{"name": "augment_1d"}]}}, seeds=[0])
    alone = plan(trials, registry, 128)
    assert [(w.stacked, w.alone_because) for w in alone] == [(False, "no other trial shares its loop")] * 3
    graphed = plan(trials, registry, 128, graphs=True)
    # augment_1d draws per-example options on the host: not graph-safe, so a stack of one would only be slower
    assert [(len(w.members), w.stacked) for w in graphed] == [(1, True), (1, True), (1, False)]
    assert graphed[0].stack_id == alone[0].stack_id and graphed[2].alone_because == "no other trial shares its loop"
    pairs = plan(make_trials({}, seeds=[0, 1]), registry, 128, graphs=True)
    assert [(len(w.members), w.as_stack) for w in pairs] == [(2, False)]  # a real stack: nothing changes

    # --dry-run on a GPU: the stacks of one, and why a trial or stack steps eagerly
    from types import SimpleNamespace

    from dlbench.dry_run import trial_table
    from dlbench.planning import why_eager

    assert why_eager(trials[0], registry) == ""
    assert "regularizer 'augment_1d' [built-in] does not declare graph_safe" in why_eager(trials[2], registry)
    table = trial_table(SimpleNamespace(path="t.toml"), trials, graphed, registry, graphs=True)
    assert "S1(1)" in table and "S2(1)" in table and "a stack of one (S<n>(1)) replays its steps" in table
    augmented = plan(make_trials({"regularizers": [{"name": "augment_1d"}]}, seeds=[0, 1]), registry, 128, True)
    assert "S1: the stacked form of regularizer 'augment_1d'" in trial_table(
        SimpleNamespace(path="t.toml"), augmented[0].members, augmented, registry, graphs=True)
    assert "step eagerly" not in trial_table(  # without CUDA graphs there is nothing to say
        SimpleNamespace(path="t.toml"), augmented[0].members, augmented, registry)


def test_a_stack_of_one_trains_as_the_trial_alone_and_replays_exactly(graphs, make_trials, registry, tiny_data):
    from dlbench.train import run_trial

    (trial,) = make_trials({"epochs": 3, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}, seeds=[0])
    eager = train([trial], registry, tiny_data, "off")
    graphed = train([trial], registry, tiny_data, "on")
    assert same(graphed, eager)
    solo = run_trial(trial, registry, tiny_data, DEVICE, NoHooks()).history
    assert graphed[trial.index][0] == pytest.approx(solo[0], rel=1e-6, abs=1e-6)  # the same start
    for a, b in zip(graphed[trial.index], solo):  # and the same training, to the batched kernels' rounding
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4)


def test_a_study_on_a_gpu_records_its_stacks_of_one_and_reproduces_them(study_in_process, monkeypatch, graphs):
    """The runner on a GPU, as far as a CPU can play one: the planner makes stacks of one, their
    runs say so (stack size 1, a stack id, graphs) and `dlbench reproduce` re-runs them the same way."""
    from conftest import reproduce_in_process
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr("dlbench.planning.graphs_wanted", lambda setting, device: setting != "off")
    plugins, uri, runs = study_in_process("""
[study]
name = "solo"
seeds = 1
[studies.width.levels]
narrow = {}
wide = { architecture = { width = 24 } }
""", DEVICE, stack_size=8)
    client = MlflowClient(uri)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {(r.data.tags["dlbench.stack_size"], r.data.tags["dlbench.cuda_graphs"]) for r in runs} == {("1", "true")}
    assert len({r.data.tags["dlbench.stack_id"] for r in runs}) == 2
    verdict = reproduce_in_process(runs[0].info.run_id, plugins, uri, DEVICE)
    assert verdict.reproduced and verdict.largest[2] == 0
    again = client.get_run(verdict.rerun).data.tags
    assert again["dlbench.stack_id"] == runs[0].data.tags["dlbench.stack_id"]  # re-run as a stack of one
    if DEVICE.type != "cuda":
        assert Recorded.captured > 0
