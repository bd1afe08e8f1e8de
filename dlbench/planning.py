"""The planner: which trials of a study run train together as one stacked model.

:func:`plan` groups the trials whose configs can share one training loop (``stack_key``: the
same data, shapes and loop settings, stackable components; the contract those components
declare lives in ``stacking.py``) into units of work (:class:`Work`), at most ``max_size`` to
a stack; every other trial is a unit of its own, with the reason (``dlbench run --dry-run``
shows both). :func:`stack_settings` turns a run's device, ``--stack-size`` and ``--cuda-graphs``
into what the planner takes, the same for the run and its dry run. :func:`unit_cost` is its
model of the time a unit takes (the ETA of a running study scales it by the measured speed).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from dlbench.build import make
from dlbench.config import DEFAULT_LOSS
from dlbench.regularizer import Regularizer
from dlbench.stacking import STACKED, is_stackable, stacked_initializer
from dlbench.step_graph import graphs_wanted, regularizer_graph_safe
from dlbench.trial import Trial

# Largest stack by default. On a GPU a step of a small model is launch-bound and a stack of 100
# costs about what one trial costs. On a CPU the step is compute-bound: measured on 2 cores
# (benchmarks/stacking.py, benchmarks/study.py), a stack is at best 1.1x one trial at a time and
# slower for deep narrow models (vmap's per-operation cost), while workers use the cores: no
# stacks by default there (`--stack-size N` asks for them).
DEFAULT_MAX_STACK = {"cpu": 1, "cuda": 128}


@dataclass(frozen=True)
class Work:
    """One unit of work for an executor: one trial, or a stack of trials trained together."""

    members: tuple[Trial, ...]
    stack_id: str  # names the stack's checkpoint and tags its members' runs
    alone_because: str = ""  # for a single trial: why it does not stack (shown by --dry-run)
    as_stack: bool = False  # a single trial trained as a stack of one (to replay its steps from CUDA graphs)
    # members sharing an initializer with a stacked form initialize at once (False: member after
    # member, as a run recorded before stacked initializers existed did; `reproduce` reads the tag)
    stacked_init: bool = True

    @property
    def stacked(self) -> bool:
        return len(self.members) > 1 or self.as_stack

    @property
    def cost(self) -> float:
        """Relative cost, for handing the longest work out first: the training epochs (a stack
        of n costs about sqrt(n) trials), and an initializer's own epochs (greedy pretraining,
        one pass per layer: measured on an H100 when it ran member after member, 10 s of a 12 s
        stack whose training alone took under 1 s with CUDA graphs), for k members sharing it
        as for a stack of k."""
        cfg = self.members[0].config
        training = cfg["epochs"] * (len(self.members) ** 0.5 if self.stacked else 1)
        shared: dict[str, list[int]] = {}
        for t in self.members:
            shared.setdefault(_initializer_key(t), []).append(_pretraining_epochs(t.config))
        pretraining = sum(epochs[0] * (len(epochs) ** 0.5 if self.stacked_init else len(epochs))
                          for epochs in shared.values())
        return (training + pretraining) / cfg["batch_size"]


def unit_cost(work: Work, sizes: Mapping[str, int]) -> float:
    """The planner's cost model of the time ``work`` takes, relative to other units of its kind:
    :attr:`Work.cost` (its training steps, greedy pretraining included) times its members' mean
    parameter count (``sizes``: by group hash, as the preflight built each distinct config; a
    config it did not build, such as a tuning trial's, counts as the median of those it did)."""
    known = sorted(sizes.values()) or [1]
    median = known[len(known) // 2]
    params = [sizes.get(t.group_hash, median) for t in work.members]
    return work.cost * sum(params) / len(params)


def _initializer_key(trial: Trial) -> str:
    """The trial's initializer with its options: members with equal keys may initialize at once."""
    return json.dumps(trial.config.get("initializer"), sort_keys=True, default=str)


def _pretraining_epochs(cfg: dict) -> int:
    init = cfg.get("initializer")
    epochs = init.get("epochs", 0) if isinstance(init, dict) else 0
    depth = cfg.get("architecture", {}).get("depth", 1)
    return epochs * depth if isinstance(epochs, int) and isinstance(depth, int) else 0


def stack_settings(device: torch.device, stack_size: int | None, cuda_graphs: str) -> tuple[int, bool]:
    """(the largest stack, whether a lone trial is a stack of one) for a run on ``device`` with
    ``--stack-size`` (None: the device's default) and ``--cuda-graphs``: what :func:`plan` takes,
    the same for the run and its dry run."""
    max_size = stack_size or DEFAULT_MAX_STACK[device.type]
    return max_size, max_size > 1 and graphs_wanted(cuda_graphs, device)


def stack_id(trials) -> str:
    return hashlib.sha256("".join(t.config_hash for t in trials).encode()).hexdigest()[:16]


@dataclass
class _Group:
    key: str
    members: list[Trial] = field(default_factory=list)


def plan(trials: list[Trial], registry, max_size: int, graphs: bool = False) -> list[Work]:
    """Group ``trials`` into stacks of at most ``max_size`` (1: no stacking), in first-seen order.

    A group larger than ``max_size`` is split into near-equal stacks (10 with a limit of 8
    gives 5 + 5, not 8 + 2). With ``graphs`` (CUDA graphs on a GPU), a trial that could stack
    but has no partner is a stack of one when its components are graph-safe.
    """
    groups: dict[str, _Group] = {}
    works: list[Work | _Group] = []
    for trial in trials:
        key, reason = stack_key(trial, registry) if max_size > 1 else (None, "stacking is off (--stack-size 1, the default on a CPU)")
        if key is None:
            works.append(Work((trial,), stack_id([trial]), reason))
            continue
        if key not in groups:
            groups[key] = _Group(key)
            works.append(groups[key])
        groups[key].members.append(trial)
    out: list[Work] = []
    for item in works:
        if isinstance(item, Work):
            out.append(item)
            continue
        members = item.members
        if len(members) == 1:
            graphed = graphs and not why_eager(members[0], registry)
            out.append(Work((members[0],), stack_id(members), "" if graphed else "no other trial shares its loop",
                            as_stack=graphed))
            continue
        parts = math.ceil(len(members) / max_size)
        size = math.ceil(len(members) / parts)
        for i in range(0, len(members), size):
            chunk = tuple(members[i:i + size])
            out.append(Work(chunk, stack_id(chunk), "" if len(chunk) > 1 else "no other trial shares its loop"))
    return out


def stack_key(trial: Trial, registry) -> tuple[str | None, str]:
    """(key, "") when the trial can stack (trials with equal keys stack together), else
    (None, the reason it cannot)."""
    cfg = trial.config
    key: dict = {k: cfg.get(k) for k in ("dataset", "preprocessing", "val_fraction", "epochs", "batch_size",
                                         "diagnostics_every")}
    for kind in ("architecture", "activation"):
        component = registry.get(kind, cfg[kind]["name"])
        if not is_stackable(component.factory):
            return None, f"{kind} {component.name!r} [{component.origin}] does not declare itself stackable"
        key[kind] = cfg[kind]
    schedule = registry.get("schedule", cfg["schedule"]["name"])
    if not is_stackable(schedule.factory):
        return None, f"schedule {schedule.name!r} [{schedule.origin}] does not declare itself stackable"
    optimizer = registry.get("optimizer", cfg["optimizer"]["name"])
    if getattr(optimizer.factory, STACKED, None) is None:
        return None, f"optimizer {optimizer.name!r} [{optimizer.origin}] has no stacked update"
    key["optimizer"] = _shared_options(cfg["optimizer"])
    loss = cfg.get("loss", DEFAULT_LOSS)
    component = registry.get("loss", loss["name"])
    if not is_stackable(component.factory):
        return None, f"loss {component.name!r} [{component.origin}] does not declare itself stackable"
    key["loss"] = loss  # one loss per stack: the members share its name and options
    key["regularizers"] = []
    for spec in cfg["regularizers"]:
        component = registry.get("regularizer", spec["name"])
        cls = component.factory
        if not (isinstance(cls, type) and issubclass(cls, Regularizer) and cls.can_stack()):
            return None, f"regularizer {component.name!r} [{component.origin}] has no stacked form"
        try:
            extra = cls(**{k: v for k, v in spec.items() if k != "name"}).stack_key()
        except Exception as exc:  # a bad option: the trial alone will report it where it trains
            return None, f"regularizer {component.name!r} could not be built ({exc})"
        key["regularizers"].append([_shared_options(spec), repr(extra)])
    return json.dumps(key, sort_keys=True, default=str), ""


def initializer_groups(work: Work, registry) -> list[tuple[list[int], object]]:
    """(member positions, stacked form) for each initializer with a stacked form that two or more
    members of ``work`` share with the same options, when it initializes them at once
    (``work.stacked_init``)."""
    groups: dict[str, list[int]] = {}
    forms = {}
    for i, trial in enumerate(work.members if work.stacked_init else ()):
        form = stacked_initializer(registry.get("initializer", trial.config["initializer"]["name"]))
        if form is not None:
            key = _initializer_key(trial)
            groups.setdefault(key, []).append(i)
            forms[key] = form
    return [(group, forms[key]) for key, group in groups.items() if len(group) > 1]


def why_eager(trial: Trial, registry) -> str:
    """Why a stack of ``trial`` would step eagerly on a GPU ("" when its steps may replay from a
    CUDA graph): its optimizer's stacked update and its regularizers' stacked forms must declare
    themselves graph-safe (``step_graph.py``)."""
    cfg = trial.config
    optimizer = registry.get("optimizer", cfg["optimizer"]["name"])
    if not getattr(getattr(optimizer.factory, STACKED, None), "graph_safe", False):
        return f"the stacked update of optimizer {optimizer.name!r} [{optimizer.origin}] does not declare graph_safe"
    for spec in cfg["regularizers"]:
        component = registry.get("regularizer", spec["name"])
        try:
            reg = make(registry, "regularizer", spec)
            stacked = type(reg).stacked([reg])
        except Exception as exc:  # a bad option: the trial will report it where it trains
            return f"regularizer {component.name!r} could not be built ({exc})"
        if not regularizer_graph_safe(stacked):
            return f"the stacked form of regularizer {component.name!r} [{component.origin}] does not declare graph_safe"
    return ""


def _shared_options(spec: dict) -> dict:
    """The options every member of a stack must share: all but the numbers."""
    return {k: v for k, v in spec.items() if isinstance(v, (bool, str, list, type(None)))}
