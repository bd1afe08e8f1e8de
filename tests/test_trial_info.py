"""What ``dlbench_trial_start`` hands observers (``TrialInfo``), and the end-of-epoch verdict
(``StopRule``) that a trial alone and a member of a stack share."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import pytest
import torch

import dlbench
from conftest import NoHooks
from dlbench import hookimpl
from dlbench.planning import Work, stack_id
from dlbench.train import run_trial
from dlbench.train_stack import run_stack
from dlbench.trial import StackInfo, TrialInfo
from dlbench.verdict import DIVERGED, PRUNED, STOPPED, StopRule

CPU = torch.device("cpu")


def an_info(**fields) -> TrialInfo:
    return TrialInfo(**{"device": "cpu", "dataset_hash": "ab" * 32, "dataset": "mnist1d", "num_classes": 10,
                        "dataset_source": "generated", "preprocessing": (), "num_params": 1234,
                        "resumed_from_epoch": None, **fields})


def a_stack(**fields) -> StackInfo:
    return StackInfo(**{"id": "s1", "size": 2, "member": 1, "members": [{"seed": 0}, {"seed": 1}],
                        "cuda_graphs": False, "stacked_init": True, **fields})


class DictObserver:
    """An observer written when ``info`` was a dict."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def dlbench_trial_start(self, trial, model, info):
        stack = info.get("stack")
        self.seen.append({"device": info["device"], "num_params": info["num_params"], "stack": stack,
                          "member": stack["member"] if stack else None, "keys": set(info),
                          "has_stack": "stack" in info, "attr": info.num_params})


# -- TrialInfo ----------------------------------------------------------------------------------


def test_an_observer_reads_info_as_a_dict_or_by_attribute():
    info = an_info(stack=a_stack())
    observer = DictObserver()
    observer.dlbench_trial_start(trial=None, model=None, info=info)
    (seen,) = observer.seen
    assert seen["device"] == "cpu" and seen["num_params"] == 1234 == seen["attr"] == info.num_params
    assert seen["member"] == 1 and info["stack"]["size"] == 2 == info.stack.size
    assert seen["has_stack"] and "environment" not in info and info.get("environment", {}) == {}
    assert info.get("nothing") is None and info.get("nothing", 3) == 3
    with pytest.raises(KeyError):
        info["nothing"]


def test_info_has_the_keys_the_dict_had_in_its_order():
    alone = an_info()
    assert list(alone) == list(alone.keys()) == ["device", "dataset_hash", "dataset", "num_classes",
                                                 "dataset_source", "preprocessing", "num_params",
                                                 "resumed_from_epoch"]
    assert "stack" not in alone and alone.get("stack") is None and alone.stack is None
    assert "resumed_from_epoch" in alone and alone["resumed_from_epoch"] is None  # a key even when None
    member = an_info(stack=a_stack())
    assert list(member)[-1] == "stack" and len(member) == len(alone) + 1
    assert dict(alone) == {k: getattr(alone, k) for k in alone} and alone == dict(alone)  # equals its dict
    assert member.as_dict()["stack"] == {"id": "s1", "size": 2, "member": 1, "members": [{"seed": 0}, {"seed": 1}],
                                         "cuda_graphs": False, "stacked_init": True}
    assert type(member.as_dict()["stack"]) is dict


def test_info_or_a_dict_is_a_new_info_with_those_fields():
    info = an_info(stack=a_stack())
    where = {"dlbench.device": "cpu", "dlbench.worker_host": "h"}
    merged = info | {"environment": where}  # what a worker process sends its parent
    assert isinstance(merged, TrialInfo) and merged is not info
    assert merged["environment"] == where == merged.environment and merged.get("environment", {}) == where
    assert list(merged)[-1] == "environment" and merged.stack == info.stack
    assert "environment" not in info  # frozen: the original is unchanged
    with pytest.raises(AttributeError):
        info.device = "cuda"  # type: ignore[misc]
    with pytest.raises(KeyError, match="no field 'bogus'"):
        info | {"bogus": 1}
    assert {"bogus": 1} | merged == {"bogus": 1, **merged.as_dict() | {"stack": merged.stack}}  # a dict, as before


def test_info_pickles():
    info = an_info(stack=a_stack(), preprocessing=("standardize: 40 features",)) | {"environment": {"a": "b"}}
    again = pickle.loads(pickle.dumps(info))
    assert again == info and isinstance(again, TrialInfo) and isinstance(again.stack, StackInfo)
    assert again.stack.members == [{"seed": 0}, {"seed": 1}] and again["environment"] == {"a": "b"}


def test_trial_info_is_public():
    assert dlbench.TrialInfo is TrialInfo


def test_both_trainers_hand_observers_a_trial_info(plugins, registry, tiny_data, make_trials):
    class Hook(NoHooks):
        def __init__(self):
            self.observer = DictObserver()
            self.infos = []

        def dlbench_trial_start(self, trial, model, info):
            self.infos.append(info)
            self.observer.dlbench_trial_start(trial=trial, model=model, info=info)

    trials = make_trials({"epochs": 1}, seeds=2)
    hook = Hook()
    run_trial(trials[0], registry, tiny_data, CPU, hook)
    run_stack(Work(tuple(trials), stack_id(trials)), registry, tiny_data, CPU, hook, lambda trial, result: None)
    alone, *members = hook.infos
    assert all(isinstance(i, TrialInfo) for i in hook.infos)
    assert alone.device == "cpu" and alone.dataset == "mnist1d" and alone.dataset_hash == tiny_data.content_hash
    assert alone.num_classes == 10 and alone.resumed_from_epoch is None and alone.stack is None
    assert [m["stack"]["member"] for m in members] == [0, 1] and members[0].stack.size == 2
    assert members[0].stack.members == [t.config for t in trials]
    assert {k for k in members[0]} == set(alone) | {"stack"}
    assert members[0].num_params == alone.num_params  # the member's own model, as alone
    assert [s["has_stack"] for s in hook.observer.seen] == [False, True, True]


# -- the end-of-epoch verdict -------------------------------------------------------------------


class Stopper(dlbench.Regularizer):
    """Stops at ``at``; records what it saw."""

    def __init__(self, at: int | None = None):
        self.at, self.seen, self.asked = at, [], []

    def epoch_end(self, model, epoch, metrics):
        self.seen.append(epoch)

    def should_stop(self, epoch, metrics):
        self.asked.append(epoch)
        return epoch == self.at


class Quiet(dlbench.Regularizer):
    """Looks at nothing at epoch ends (the base class's epoch_end)."""

    def should_stop(self, epoch, metrics):
        return False


class Prune:
    def __init__(self, at):
        self.at, self.asked = at, []

    def stops(self, epoch, history):
        self.asked.append((epoch, len(history)))
        return epoch == self.at


def verdicts(rule, epochs, losses=None, sync=None):
    history, out = [], []
    for epoch in range(epochs):
        metrics = {"train_loss": (losses or {}).get(epoch, 1.0)}
        history.append(metrics)
        out.append(rule.verdict(epoch, metrics, history, model=None, sync=sync))
    return out


def test_verdict_trains_on_until_a_regularizer_stops_it_and_asks_every_one():
    first, second = Stopper(at=2), Stopper()
    rule = StopRule(SimpleNamespace(prune=None), [first, second])
    assert verdicts(rule, 3) == [None, None, STOPPED] and STOPPED == "finished"
    assert first.seen == second.seen == [0, 1, 2]  # epoch 0 seen, not asked
    assert first.asked == second.asked == [1, 2]  # every regularizer asked, even after one said stop


def test_verdict_diverged_before_the_regularizers_see_the_epoch():
    reg = Stopper(at=1)
    rule = StopRule(SimpleNamespace(prune=Prune(at=1)), [reg])
    assert verdicts(rule, 2, losses={1: math.nan}) == [None, DIVERGED]
    assert reg.seen == [0] and reg.asked == [] and rule.prune.asked == []
    assert verdicts(StopRule(SimpleNamespace(prune=None), []), 1, losses={0: math.inf}) == [DIVERGED]


def test_verdict_prunes_after_the_regularizers_had_their_say():
    prune = Prune(at=2)
    rule = StopRule(SimpleNamespace(prune=prune), [Stopper()])
    assert verdicts(rule, 3) == [None, None, PRUNED]
    assert prune.asked == [(1, 2), (2, 3)]  # from epoch 1, with the history up to the epoch
    stopped_first = StopRule(SimpleNamespace(prune=Prune(at=1)), [Stopper(at=1)])
    assert verdicts(stopped_first, 2) == [None, STOPPED]  # early stopping wins over pruning


def test_verdict_syncs_a_members_model_only_for_regularizers_that_look_at_it():
    synced = []
    assert verdicts(StopRule(SimpleNamespace(prune=None), [Quiet()]), 2, sync=lambda: synced.append(1)) == [None] * 2
    assert synced == []
    verdicts(StopRule(SimpleNamespace(prune=None), [Quiet(), Stopper()]), 2, losses={1: math.nan},
             sync=lambda: synced.append(1))
    assert synced == [1]  # epoch 0; not for the diverged epoch
