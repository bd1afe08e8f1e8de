"""Which trials train together as one stacked model, and the plugin contract that says so.

A *stack* is N trials trained at once: their parameters stacked along a leading member axis
and the architecture's forward pass vectorized with ``torch.func.vmap``, so one batched kernel
does the work of N small ones. Each member keeps its own seed, initialization, data order,
dropout masks, hyperparameters, MLflow run, checkpointed state and verdict. Trials stack when
their configs can share one training loop:

* the same dataset, preprocessing, validation split, epochs, batch size and diagnostics interval;
* the same architecture and activation with the same options (same shapes), both declared
  stackable (``@stackable``: the forward pass is a pure function of parameters, buffers and
  input, so ``vmap`` may batch it);
* the same optimizer with the same non-numeric options; its numeric options (lr, momentum,
  betas, weight decay, ...) may differ per member. The optimizer declares its stacked update
  with ``@stackable(stacked=StackedX)`` (a :class:`StackedOptimizer`);
* a stackable schedule (the learning rate depends on the step alone), any options per member;
* the same regularizers in the same order, each with a ``stacked`` form
  (:meth:`dlbench.regularizer.Regularizer.stacked`) and equal ``stack_key()``;
* any initializer: initializers run per member, on the member's own model, before stacking
  (so greedy layer-wise pretraining stacks too). One with a stacked form
  (``@stackable(stacked=f)``: ``f(models, data, streams, **options)``, see
  :class:`MemberStreams`) initializes the members that share its options at once: greedy
  pretraining trains their autoencoders (RBMs) as one batched model instead of member after
  member.

Anything else trains alone, and ``dlbench run --dry-run`` says why.

On a GPU with CUDA graphs (``step_graph.py``), a trial that could stack but has no partner
trains as a *stack of one*: its steps replay from a graph, which an eager step of a small model
on a GPU, launch-bound, cannot match (when its optimizer and regularizers are graph-safe).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from dlbench.regularizer import Regularizer, per_member
from dlbench.study import Trial

STACKABLE = "dlbench_stackable"  # attribute a factory carries when it is declared stackable
STACKED = "dlbench_stacked"  # an optimizer factory's StackedOptimizer class, an initializer's stacked form
# Largest stack by default. On a GPU a step of a small model is launch-bound and a stack of 100
# costs about what one trial costs. On a CPU the step is compute-bound: measured on 2 cores
# (benchmarks/stacking.py, benchmarks/study.py), a stack is at best 1.1x one trial at a time and
# slower for deep narrow models (vmap's per-operation cost), while workers use the cores: no
# stacks by default there (`--stack-size N` asks for them).
DEFAULT_MAX_STACK = {"cpu": 1, "cuda": 128}


def stackable(factory=None, *, stacked=None):
    """Declare a plugin factory stackable (see the module docstring for what that promises).

    ``@stackable`` on an architecture, activation or schedule factory; ``@stackable(stacked=
    StackedSGD)`` on an optimizer factory, naming the class that updates stacked parameters;
    ``@stackable(stacked=f)`` on an initializer, naming the function that initializes several
    members' models at once (:class:`MemberStreams`).
    """
    def mark(f):
        setattr(f, STACKABLE, True)
        if stacked is not None:
            setattr(f, STACKED, stacked)
        return f

    return mark(factory) if factory is not None else mark


def is_stackable(factory) -> bool:
    return bool(getattr(factory, STACKABLE, False))


def component_stacks(component) -> bool | None:
    """Whether a registered component can train in a stack (None: the question does not apply,
    as for datasets and initializers, which never stand in the way)."""
    if component.kind in ("architecture", "activation", "schedule"):
        return is_stackable(component.factory)
    if component.kind == "optimizer":
        return getattr(component.factory, STACKED, None) is not None
    if component.kind == "regularizer":
        cls = component.factory
        return isinstance(cls, type) and issubclass(cls, Regularizer) and cls.can_stack()
    return None


class StackedOptimizer:
    """The update rule of an elementwise optimizer over stacked parameters.

    ``options`` holds the optimizer's options as the study set them, one value per member:
    numbers as float tensors of shape [N] on the device (they may differ per member),
    anything else as the single value every member shares. Every state tensor has the member
    axis first, so dropping members (:meth:`select`) is an index. ``step(params, lr)`` gets
    the stacked parameters (gradients in ``.grad``) and the members' learning rates [N].

    ``graph_safe = True`` promises that ``step`` is tensor work alone once its state exists
    (created on the first step): no Python value that changes from step to step, no read of a
    tensor's value on the host. A CUDA graph captures such a step once and replays it
    (``dlbench run --cuda-graphs``); count steps with :meth:`tick`, which counts on the device.
    """

    graph_safe = False

    def __init__(self, options: dict):
        self.options = options
        self.state: dict[str, list[torch.Tensor | None]] = {}
        self._count: torch.Tensor | None = None  # steps taken, on the device (see tick)
        self._loaded_steps = 0

    per_member = staticmethod(per_member)  # an [N] tensor shaped to broadcast against a stacked [N, ...]

    def buffer(self, name: str, index: int, like: torch.Tensor, init=torch.zeros_like) -> torch.Tensor:
        """State tensor ``name`` of parameter ``index`` (created by ``init(like)`` on first use)."""
        slots = self.state.setdefault(name, [])
        while len(slots) <= index:
            slots.append(None)
        if slots[index] is None:
            slots[index] = init(like)
        return slots[index]

    def has(self, name: str, index: int) -> bool:
        """Whether state tensor ``name`` of parameter ``index`` exists yet."""
        slots = self.state.get(name, [])
        return index < len(slots) and slots[index] is not None

    def tick(self, like: torch.Tensor) -> torch.Tensor:
        """Count one more step; returns the steps taken, this one included, as a float64 tensor
        on ``like``'s device, incremented in place (so a replayed CUDA graph counts too)."""
        if self._count is None:
            self._count = torch.tensor(float(self._loaded_steps), dtype=torch.float64, device=like.device)
        self._count += 1
        return self._count

    @property
    def steps(self) -> int:
        """Steps taken (reads the device counter: for checkpoints, not for every step)."""
        return int(self._count.item()) if self._count is not None else self._loaded_steps

    @steps.setter
    def steps(self, value: int) -> None:  # an optimizer that counts by hand (not graph-safe)
        self._loaded_steps, self._count = int(value), None

    def step(self, params: list[torch.Tensor], lr: torch.Tensor) -> None:
        raise NotImplementedError

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the members at ``keep`` (indices), in that order."""
        self.options = {k: v[keep] if isinstance(v, torch.Tensor) else v for k, v in self.options.items()}
        self.state = {k: [t[keep] if t is not None else None for t in ts] for k, ts in self.state.items()}

    def state_dict(self) -> dict:
        return {"state": self.state, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.state, self.steps = state["state"], state["steps"]


class MemberStreams:
    """The random streams of a stack's members while a stacked initializer runs.

    Member ``i``'s stream is the global one (Python, NumPy, torch's CPU and CUDA generators) as
    it stood when the member's model was built, before its initializer. Inside
    ``with streams.member(i):`` the global generators are member ``i``'s, so whatever is drawn
    there (an init, a decoder's weights) is what the member's initializer alone draws at that
    point of its sequence; on leaving, the stream is kept where it got to and the outer one put
    back. For draws in a loop (a data order per epoch, a mask per batch), ``generator(i,
    device)`` is the same stream's torch generator of ``device`` as a ``torch.Generator``, to
    pass as ``generator=``: ``torch.randperm(n, device=d, generator=streams.generator(i, d))``
    draws what ``torch.randperm(n, device=d)`` draws alone, without swapping every generator;
    ``epoch_batches`` gives an epoch's minibatches of every member so drawn.
    A stacked initializer draws every member's values in the order its plain form draws them.
    """

    def __init__(self, states: list[dict]):
        self._states = list(states)
        self._generators: dict[int, tuple[torch.device, torch.Generator]] = {}

    def __len__(self) -> int:
        return len(self._states)

    @property
    def states(self) -> list[dict]:
        """Each member's stream where it got to (``dlbench.train.rng_state`` dicts)."""
        for i in list(self._generators):
            self._take_back(i)
        return self._states

    @contextmanager
    def member(self, i: int):
        from dlbench.train import rng_state, set_rng_state

        self._take_back(i)
        outer = rng_state()
        set_rng_state(self._states[i])
        try:
            yield
        finally:
            self._states[i] = rng_state()
            set_rng_state(outer)

    def generator(self, i: int, device: torch.device) -> torch.Generator:
        """Member ``i``'s torch generator of ``device`` (valid until the next ``member(i)``)."""
        device = torch.device(device)
        if i in self._generators and self._generators[i][0] != device:
            self._take_back(i)
        if i not in self._generators:
            generator = torch.Generator(device=device)
            generator.set_state(self._torch_state(i, device))
            self._generators[i] = (device, generator)
        return self._generators[i][1]

    def epoch_batches(self, inputs: torch.Tensor, batch_size: int, per_member: bool = False):
        """One epoch of minibatches for every member at once, ``[N, B, ...]`` each: member ``i``'s
        rows in the order ``torch.randperm(n, device=inputs.device).split(batch_size)`` gives it
        alone, drawn from its stream when the first batch is asked for. ``inputs``: ``[n, ...]``
        shared by the members, or with ``per_member`` ``[N, n, ...]``, each member's own."""
        device, n_members = inputs.device, len(self)
        n = inputs.shape[1] if per_member else inputs.shape[0]
        orders = torch.stack([torch.randperm(n, device=device, generator=self.generator(i, device))
                              for i in range(n_members)])
        rows = torch.arange(n_members, device=device)[:, None]
        for idx in orders.split(batch_size, dim=1):  # [N, B]
            yield inputs[rows, idx] if per_member else inputs[idx]

    def _torch_state(self, i: int, device: torch.device) -> torch.Tensor:
        if device.type == "cuda":
            return self._states[i]["cuda"][_cuda_index(device)]
        return self._states[i]["torch"]

    def _take_back(self, i: int) -> None:
        if i not in self._generators:
            return
        device, generator = self._generators.pop(i)
        state = dict(self._states[i])
        if device.type == "cuda":
            state["cuda"] = list(state["cuda"])
            state["cuda"][_cuda_index(device)] = generator.get_state()
        else:
            state["torch"] = generator.get_state()
        self._states[i] = state


def _cuda_index(device: torch.device) -> int:
    """Where ``device``'s state is in ``torch.cuda.get_rng_state_all()``."""
    return device.index if device.index is not None else torch.cuda.current_device()


def stacked_module(models: list):
    """The members' parameters and buffers stacked along a leading member axis, a structure-only
    copy of the first model (``base``: put it in train or eval mode) and ``forward(p, b, x)``, that
    module as a function of them, for ``torch.func.vmap`` to batch over the members."""
    from torch.func import functional_call, stack_module_state  # only where stacks train

    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def forward(p, b, x):
        return functional_call(base, (p, b), (x,))

    return params, buffers, base, forward


def stacked_initializer(component):
    """A registered initializer's stacked form, or None (it runs per member)."""
    return getattr(component.factory, STACKED, None)


# -- the planner --------------------------------------------------------------------------------


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
    from dlbench.step_graph import graphs_wanted

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
    from dlbench.step_graph import regularizer_graph_safe
    from dlbench.train import make

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
